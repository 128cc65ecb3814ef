"""Training-loader throughput of each data layout, and peak memory as a shard dataset grows.

    .venv/bin/python -m bench.data_loaders --n 256 --size 512 --workers 2      # samples/s, folder vs shards vs HF
    .venv/bin/python -m bench.data_loaders --rss 1000 10000 100000             # peak RSS as the data grows

Throughput: `--n` synthetic pairs at `--size`² (a photo's crops, JPEG targets and PNG canny maps, as prepared
data is) in a prepared folder, packed as WebDataset shards, and exported as a Hugging Face dataset and imported
back as training does; each is read through the run's own loader (training.data.loader.make_train_loader) with
`--workers` workers, after a warm-up, and timed over `--batches` batches. Memory: for each size, shards of small
synthetic pairs (64², one reused sample) and the same pairs as a prepared folder are read for a fixed number of
samples in a fresh process, whose peak resident set bench.run_memory measures.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from skimage import data as photos

from annotator.canny import CannyDetector
from bench.run_memory import measure
from ldm.flags import HelpFormatter
from ldm.util import write_bytes_atomically
from pairs.prompt_file import PROMPT_FILE, VAL_PROMPT_FILE, write_prompt_file
from pairs.shards import SHARD_NAME, sample_members, write_shard
from training.data.dataset import PairDataset
from training.data.hf_export import export_hf
from training.data.hf_import import import_hf
from training.data.loader import make_train_loader
from training.data.shard_dataset import ShardPairs
from training.data.shard_writer import write_shards


def write_folder(root: Path, n: int, size: int) -> Path:
    """n pairs at size²: crops of a photo at varying offsets, JPEG quality 95 and PNG edges (prepare_dogs' files)."""
    photo = cv2.resize(photos.astronaut(), (size * 2, size * 2))  # 2S×2S×3 RGB
    rng = np.random.default_rng(0)
    (root / "source").mkdir(parents=True)
    (root / "target").mkdir()
    rows = []
    for i in range(n):
        y, x = (int(v) for v in rng.integers(0, size, 2))
        crop = np.ascontiguousarray(photo[y : y + size, x : x + size])  # S×S×3
        target = cv2.imencode(".jpg", cv2.cvtColor(crop, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])[1]
        write_bytes_atomically(root / "target" / f"{i:07d}.jpg", target.tobytes())
        write_bytes_atomically(
            root / "source" / f"{i:07d}.png", cv2.imencode(".png", CannyDetector()(crop))[1].tobytes()
        )
        rows.append({"source": f"source/{i:07d}.png", "target": f"target/{i:07d}.jpg", "prompt": f"a photo, crop {i}"})
    write_prompt_file(root / VAL_PROMPT_FILE, rows[:1])
    write_prompt_file(root / PROMPT_FILE, rows)
    return root


def samples_per_second(dataset, *, batch_size: int, workers: int, batches: int) -> float:
    loader = iter(
        make_train_loader(dataset, batch_size=batch_size, seed=0, start_sample=0, rank=0, world_size=1, workers=workers)
    )
    for _ in range(2):  # warm-up: the workers start and open their files
        next(loader)
    start = time.perf_counter()
    for _ in range(batches):
        next(loader)
    return batches * batch_size / (time.perf_counter() - start)


def throughput(args: argparse.Namespace, work: Path) -> None:
    folder = write_folder(work / "folder", args.n, args.size)
    started = time.perf_counter()
    write_shards(folder, work / "shards", shard_size=args.shard_size)
    pack_s = time.perf_counter() - started
    export_hf(folder, work / "hf")
    started = time.perf_counter()
    imported = import_hf(str(work / "hf"), work / "imported")
    import_s = time.perf_counter() - started
    layouts = {
        "folder (prompt.json)": PairDataset(folder),
        f"webdataset shards ({args.shard_size}/tar)": ShardPairs(work / "shards"),
        "Hugging Face (imported)": PairDataset(imported),
    }
    print(f"{args.n} pairs at {args.size}², batch {args.batch_size}, {args.workers} workers, {args.batches} batches")
    base = None
    for name, dataset in layouts.items():
        rates = [
            samples_per_second(dataset, batch_size=args.batch_size, workers=args.workers, batches=args.batches)
            for _ in range(args.repeats)
        ]
        rate = max(rates)
        base = base or rate
        print(f"  {name:<32s} {rate:8.1f} samples/s  ({rate / base:.2f}x the folder; best of {args.repeats})")
    print(f"  one-off: packing the shards {pack_s:.1f} s, importing the Hugging Face dataset {import_s:.1f} s")


def write_small(root: Path, n: int, shard_size: int = 1000) -> None:
    """n small pairs as shards and as a prepared folder (one 64² sample, repeated: the index and the row list are
    what grows)."""
    crop = cv2.resize(photos.astronaut(), (64, 64))
    target = cv2.imencode(".jpg", cv2.cvtColor(crop, cv2.COLOR_RGB2BGR))[1].tobytes()
    hint = cv2.imencode(".png", CannyDetector()(crop))[1].tobytes()
    for number, start in enumerate(range(0, n, shard_size)):
        members = []
        for i in range(start, min(start + shard_size, n)):
            members += sample_members(f"{i:09d}", target, "jpg", hint, f"a photo {i}")
        (root / "shards").mkdir(parents=True, exist_ok=True)
        write_shard(root / "shards" / SHARD_NAME.format(number), members)
    (root / "folder" / "source").mkdir(parents=True)
    (root / "folder" / "target").mkdir()
    (root / "folder" / "source" / "s.png").write_bytes(hint)
    (root / "folder" / "target" / "t.jpg").write_bytes(target)
    rows = [{"source": "source/s.png", "target": "target/t.jpg", "prompt": f"a photo {i}"} for i in range(n)]
    write_prompt_file(root / "folder" / PROMPT_FILE, rows)


def read_some(kind: str, path: str, samples: int) -> None:
    """The child process of the memory benchmark: open the data and read `samples` through the loader."""
    dataset = ShardPairs(path) if kind == "shards" else PairDataset(path)
    loader = iter(make_train_loader(dataset, batch_size=8, seed=0, start_sample=0, rank=0, world_size=1, workers=0))
    for _ in range(samples // 8):
        next(loader)


def memory(sizes: list[int], work: Path, samples: int) -> None:
    print(f"peak RSS reading {samples} samples through the loader, by dataset size (a fresh process each)")
    for kind in ("shards", "folder"):
        peaks = []
        for n in sizes:
            root = work / f"n{n}"
            if not root.exists():
                write_small(root, n)
            cmd = [sys.executable, "-m", "bench.data_loaders", "--read", kind, str(root / kind), str(samples)]
            peak = measure(cmd, interval=0.05)
            if peak.returncode:
                raise SystemExit(f"the {kind} reader failed on {n} pairs")
            peaks.append(peak.max_rss)
        cells = "  ".join(f"{n:>7,d}: {p * 1024:6.0f} MB" for n, p in zip(sizes, peaks))
        print(f"  {kind:<7s} {cells}   ({(peaks[-1] / peaks[0] - 1) * 100:+.1f}% from the smallest)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--n", type=int, default=256, help="pairs for the throughput test")
    p.add_argument("--size", type=int, default=512, help="image side")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers")
    p.add_argument("--batch-size", type=int, default=4, help="samples per batch")
    p.add_argument("--batches", type=int, default=40, help="timed batches per layout")
    p.add_argument("--repeats", type=int, default=3, help="timings per layout (the best is shown)")
    p.add_argument("--shard-size", type=int, default=64, help="pairs per shard")
    p.add_argument("--rss", type=int, nargs="*", help="dataset sizes for the memory test instead of throughput")
    p.add_argument("--rss-samples", type=int, default=2000, help="samples each memory test reads")
    p.add_argument("--read", nargs=3, metavar=("KIND", "PATH", "SAMPLES"), help=argparse.SUPPRESS)  # the child
    p.add_argument("--work", type=Path, help="folder for the generated data (default: a temporary one)")
    args = p.parse_args(argv)
    if args.read:
        read_some(args.read[0], args.read[1], int(args.read[2]))
        return 0
    with tempfile.TemporaryDirectory(prefix="data_loaders_") as tmp:
        work = args.work or Path(tmp)
        if args.rss:
            memory(args.rss, work, args.rss_samples)
        else:
            throughput(args, work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
