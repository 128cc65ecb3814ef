"""Prepare ControlNet training pairs from Stanford Dogs (or any image folder): crop, canny, caption.

    python -m training.data.prepare_dogs --images Images --annotations Annotation --out training/dogs

Resumable: finished items are skipped and captions are appended one by one, so a re-run after a crash
continues where it stopped and produces byte-identical output. Originals are only read.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from tqdm import tqdm

from annotator.canny import DEFAULT_THRESHOLDS
from annotator.util import read_rgb
from ldm.flags import HelpFormatter
from ldm.util import remove_stale_temp_files, tsv_text, write_text_atomically
from pairs.held_out import check_val_fraction, is_validation
from pairs.manifest import MANIFEST_FILE, DatasetManifest, HowMade, SourceFile
from pairs.prompt_file import PROMPT_FILE, VAL_PROMPT_FILE, write_prompt_file
from training.common.run_lock import RunFolderLocked, run_lock
from training.common.stop_signals import StopSignal, StopSignalsRaise
from training.data.captions import BLIP_MODEL_ID, finalise_caption, load_blip
from training.data.crop import CROP_MODES
from training.data.discover import ImageRecord, discover, read_split_list
from training.data.pair_images import ImageSettings, Summary, pair_paths, prepare_images
from training.data.shard_writer import write_shards

logger = logging.getLogger(__name__)

CAPTIONS_FILE = "captions.jsonl"
SHARDS_DIR = "shards"  # --format webdataset: the shards, beside the prepared folder they were packed from
QUARANTINE_FILE = "quarantine.tsv"


def read_captions(path: Path) -> dict[str, str]:
    """Captions written so far; a line cut off by a crash is dropped (and removed from the file)."""
    if not path.exists():
        return {}
    text = path.read_text()
    lines = text.split("\n")
    complete, tail = lines[:-1], lines[-1]
    if tail:  # the last write was interrupted: keep only whole lines
        write_text_atomically(path, "".join(line + "\n" for line in complete))
    return {row["id"]: row["prompt"] for row in map(json.loads, complete) if row}


def caption_items(
    records: Sequence[ImageRecord],
    out: Path,
    captioner: Callable | None,
    *,
    batch_size: int,
    summary: Summary,
    redo: set[str] = frozenset(),
) -> dict[str, str]:
    """Caption every record not captioned yet (or in `redo`: made again), appending each batch to captions.jsonl as
    it finishes."""
    path = out / CAPTIONS_FILE
    captions = read_captions(path)
    if redo & captions.keys():
        captions = {k: v for k, v in captions.items() if k not in redo}
        write_text_atomically(path, "".join(json.dumps({"id": k, "prompt": v}) + "\n" for k, v in captions.items()))
    todo = [r for r in records if r.item_id not in captions]
    with path.open("a") as sink, tqdm(total=len(todo), desc="captions", unit="img") as bar:
        for start in range(0, len(todo), batch_size):
            batch = todo[start : start + batch_size]
            raw: list[str | None] = [None] * len(batch)
            if captioner is not None:
                images = [read_rgb(pair_paths(out, r.item_id)[0]) for r in batch]
                raw = list(captioner(images))
            for record, text in zip(batch, raw, strict=True):
                prompt, replaced = finalise_caption(text, record.breed)
                summary.captions_replaced += int(replaced)
                captions[record.item_id] = prompt
                sink.write(json.dumps({"id": record.item_id, "prompt": prompt}) + "\n")
            sink.flush()
            os.fsync(sink.fileno())
            summary.captions_new += len(batch)
            bar.update(len(batch))
    return captions


def write_split(
    records: Sequence[ImageRecord],
    captions: dict[str, str],
    out: Path,
    *,
    val_fraction: float,
    test_ids: set[str] | None,
    summary: Summary,
) -> None:
    rows = {"train": [], "val": []}
    for record in sorted(records, key=lambda r: r.item_id):
        target, source = (p.relative_to(out).as_posix() for p in pair_paths(out, record.item_id))
        held_out = record.item_id in test_ids if test_ids is not None else is_validation(record.item_id, val_fraction)
        rows["val" if held_out else "train"].append(
            {"source": source, "target": target, "prompt": captions[record.item_id]}
        )
    write_prompt_file(out / PROMPT_FILE, rows["train"])
    write_prompt_file(out / VAL_PROMPT_FILE, rows["val"])
    summary.train, summary.val = len(rows["train"]), len(rows["val"])


def prepare(
    images: Path,
    out: Path,
    *,
    annotations: Path | None = None,
    test_list: Path | None = None,
    settings: ImageSettings = ImageSettings(),
    captioner: str = "blip",
    blip_model: str = BLIP_MODEL_ID,
    batch_size: int = 16,
    workers: int | None = None,
    val_fraction: float = 0.02,
    limit: int | None = None,
) -> Summary:
    """The whole pipeline: discover → validate+crop+canny → captions → prompt.json + prompt_val.json."""
    start = time.perf_counter()
    if captioner not in ("blip", "breed"):
        raise ValueError(f"captioner must be 'blip' or 'breed', got {captioner!r}")
    if settings.crop not in CROP_MODES:
        raise ValueError(f"crop must be one of {CROP_MODES}, got {settings.crop!r}")
    check_val_fraction(val_fraction)
    if limit is not None and limit < 1:
        raise ValueError(f"--limit must be at least 1, got {limit}")
    out = Path(out)
    if out.resolve().is_relative_to(Path(images).resolve()):
        raise ValueError(
            f"--out {out} is inside --images {images}: every re-run would read the prepared pictures back as new "
            "photos; choose an --out outside the images folder"
        )
    test_ids = read_split_list(test_list) if test_list is not None else None  # a bad list fails now, not at the end
    records = discover(Path(images), annotations)
    records = records[:limit] if limit is not None else records
    made = how_made(settings, captioner, blip_model)
    with run_lock(out):  # one preparation per --out: two would write the same files and captions
        remove_stale_temp_files(out)
        manifest = _open_manifest(out, made)
        redo = _changed_sources(records, manifest, out)
        summary = Summary(found=len(records))
        usable = prepare_images(records, out, settings, workers=workers or os.cpu_count() or 1, summary=summary)
        manifest.sources |= {r.item_id: SourceFile.of(r.path) for r in usable}
        manifest.write(out)
        write_text_atomically(out / QUARANTINE_FILE, tsv_text(sorted(summary.quarantined.items())))
        model = load_blip(blip_model) if captioner == "blip" else None
        captions = caption_items(usable, out, model, batch_size=batch_size, summary=summary, redo=redo)
        write_split(usable, captions, out, val_fraction=val_fraction, test_ids=test_ids, summary=summary)
    summary.seconds = time.perf_counter() - start
    for line in summary.lines():
        logger.info(line)
    return summary


def how_made(settings: ImageSettings, captioner: str, blip_model: str) -> HowMade:
    return HowMade(
        detector="canny",
        low_threshold=settings.low_threshold,
        high_threshold=settings.high_threshold,
        size=settings.size,
        crop=settings.crop,
        jpeg_quality=settings.jpeg_quality,
        captioner=captioner,
        caption_model=blip_model if captioner == "blip" else None,
    )


def _open_manifest(out: Path, made: HowMade) -> DatasetManifest:
    """The folder's manifest, or a new one for an empty folder; refused when it was made with other settings, or
    holds prepared files without a manifest (how they were made cannot be told)."""
    manifest = DatasetManifest.read(out)
    if manifest is None:
        if (out / PROMPT_FILE).exists() or any((out / sub).exists() for sub in ("target", "source")):
            raise ValueError(
                f"--out {out} holds prepared pairs but no {MANIFEST_FILE} (made before manifests, or by hand), so "
                "what settings made them cannot be told; prepare into a new --out"
            )
        manifest = DatasetManifest(made)
    elif manifest.made != made:
        raise ValueError(
            f"--out {out} was prepared with other settings: {'; '.join(manifest.made.differences(made))}. Re-run "
            "with those, or prepare into a new --out (nothing in this one was changed)"
        )
    manifest.write(out)
    return manifest


def _changed_sources(records: Sequence[ImageRecord], manifest: DatasetManifest, out: Path) -> set[str]:
    """Ids whose original changed since they were prepared: their pair is deleted, to be made again (and captioned)."""
    out_of_date = set()
    for record in records:
        known = manifest.sources.get(record.item_id)
        if known is not None and known != SourceFile.of(record.path):
            out_of_date.add(record.item_id)
            for path in pair_paths(out, record.item_id):
                path.unlink(missing_ok=True)
    return out_of_date


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--images", type=Path, required=True, help="Stanford Dogs Images/ folder or any image folder")
    parser.add_argument("--annotations", type=Path, help="Stanford Dogs Annotation/ folder (dog boxes for --crop bbox)")
    parser.add_argument(
        "--test-list", type=Path, help="Stanford Dogs lists/test_list.mat: hold these out for validation"
    )
    parser.add_argument("--out", type=Path, default=Path("training/dogs"), help="output folder")
    parser.add_argument("--size", type=int, default=512, help="square output side, a multiple of 64")
    parser.add_argument(
        "--crop",
        choices=CROP_MODES,
        default="bbox",
        help="bbox: square around the dog box (center when an image has none); center; squash",
    )
    parser.add_argument(
        "--low-threshold",
        type=int,
        default=DEFAULT_THRESHOLDS.low,
        help="canny low threshold, recorded in dataset.json for training, evaluation and the demo",
    )
    parser.add_argument(
        "--high-threshold",
        type=int,
        default=DEFAULT_THRESHOLDS.high,
        help="canny high threshold, recorded in dataset.json likewise",
    )
    parser.add_argument(
        "--captioner",
        choices=("blip", "breed"),
        default="blip",
        help="blip: BLIP captions with the breed woven in; breed: templates only",
    )
    parser.add_argument("--blip-model", default=BLIP_MODEL_ID, help="BLIP hub id or local folder")
    parser.add_argument("--batch-size", type=int, default=16, help="BLIP batch size")
    parser.add_argument("--workers", type=int, default=None, help="processes for crop+canny (default: all cores)")
    parser.add_argument("--val-fraction", type=float, default=0.02, help="held-out share without --test-list")
    parser.add_argument("--limit", type=int, default=None, help="only the first N images (a quick look)")
    parser.add_argument(
        "--format",
        choices=("folder", "webdataset"),
        default="folder",
        help="webdataset: also pack the pairs as WebDataset shards in OUT/shards (train with --data OUT/shards)",
    )
    parser.add_argument("--shard-size", type=int, default=1000, help="pairs per shard with --format webdataset")
    args = parser.parse_args(argv)
    if args.shard_size < 1:
        parser.error(f"--shard-size must be at least 1, got {args.shard_size}")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        with StopSignalsRaise():
            summary = prepare(
                args.images,
                args.out,
                annotations=args.annotations,
                test_list=args.test_list,
                settings=ImageSettings(args.size, args.crop, args.low_threshold, args.high_threshold),
                captioner=args.captioner,
                blip_model=args.blip_model,
                batch_size=args.batch_size,
                workers=args.workers,
                val_fraction=args.val_fraction,
                limit=args.limit,
            )
            if args.format == "webdataset":
                shards = write_shards(args.out, args.out / SHARDS_DIR, shard_size=args.shard_size)
                logger.info("packed the pairs into %d shards in %s", len(shards), args.out / SHARDS_DIR)
    except (FileNotFoundError, ValueError, RunFolderLocked) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except StopSignal as stop:
        print(
            f"stopped by {stop.signal.name}: the pairs and captions finished so far are kept; run the same command "
            "again to go on",
            file=sys.stderr,
        )
        return 128 + stop.signal.value
    except OSError as err:  # a read-only or full disk, a file where a folder should be
        print(
            f"error: cannot write the prepared data under {args.out}: {err}; --out must be a writable folder",
            file=sys.stderr,
        )
        return 2
    print("\n".join(summary.lines()))
    print(f"wrote {args.out / PROMPT_FILE}, {args.out / VAL_PROMPT_FILE}, quarantine list {args.out / QUARANTINE_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
