"""Time of the pre-flight check of training pairs (training.data.check_pairs) over a prepared folder of N pairs, and of
the pairs' fingerprint that the run record and the latent cache compare.

    .venv/bin/python -m bench.check_pairs_speed --n 20000

The folder holds N pairs of a 512×512 JPEG target and its PNG canny map, as prepare_dogs writes them, made as
hard links to one pair so that building it is quick: the files sit in the page cache, so the figure is the
check's own cost, not the disk's.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import cv2
from skimage import data

from annotator.canny import CannyDetector
from ldm.flags import HelpFormatter
from pairs.prompt_file import write_prompt_file
from training.data.check_pairs import check_pairs
from training.data.dataset import PairDataset


def build_folder(root: Path, n: int) -> list[dict[str, str]]:
    photo = cv2.resize(data.chelsea(), (512, 512))  # 512×512×3 RGB
    (root / "target").mkdir(parents=True)
    (root / "source").mkdir()
    cv2.imwrite(str(root / "target.jpg"), cv2.cvtColor(photo, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
    cv2.imwrite(str(root / "source.png"), CannyDetector()(photo))
    rows = []
    for i in range(n):
        os.link(root / "target.jpg", root / "target" / f"{i:06d}.jpg")
        os.link(root / "source.png", root / "source" / f"{i:06d}.png")
        rows.append(
            {"source": f"source/{i:06d}.png", "target": f"target/{i:06d}.jpg", "prompt": "a photography of a cat"}
        )
    write_prompt_file(root / "prompt.json", rows)
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--n", type=int, default=20_000, help="pairs")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        rows = build_folder(Path(tmp), args.n)
        start = time.perf_counter()
        bad = check_pairs(tmp, rows, multiple=64)
        seconds = time.perf_counter() - start
        start = time.perf_counter()
        PairDataset(tmp).fingerprint()
        fingerprint = time.perf_counter() - start
    print(
        f"checked {args.n} pairs (512×512 JPEG + PNG) in {seconds:.2f} s ({args.n / seconds:,.0f} pairs/s), "
        f"{len(bad)} bad; their fingerprint (run record, latent cache) took {fingerprint:.2f} s"
    )


if __name__ == "__main__":
    main()
