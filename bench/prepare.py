"""Throughput of the data pipeline (validate + crop + canny + write) against the decode/re-encode floor.

    .venv/bin/python -m bench.prepare --n 200 --workers 2

The floor is what any pipeline must pay: decoding each JPEG and encoding one JPEG back. The goal is a
pipeline at most 2x that cost on the same files and cores.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from skimage import data

from annotator.canny import CannyDetector
from ldm.flags import HelpFormatter
from training.data.crop import crop_square
from training.data.discover import ImageRecord
from training.data.pair_images import ImageSettings, Summary, prepare_images
from training.data.validate import load_rgb

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "cat")


def make_jpegs(folder: Path, n: int) -> list[Path]:
    """n JPEGs of about Stanford Dogs' size (500×375), cut from scikit-image's photos."""
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        photo = getattr(data, PHOTOS[i % len(PHOTOS)])()
        h, w = photo.shape[:2]
        y, x = int(rng.integers(0, max(h - 375, 1))), int(rng.integers(0, max(w - 500, 1)))
        crop = cv2.resize(photo[y : y + 375, x : x + 500], (500, 375))
        path = folder / f"img_{i:05d}.jpg"
        Image.fromarray(crop).save(path, quality=90)
        paths.append(path)
    return paths


def floor_one(path: Path) -> int:
    with Image.open(path) as img:
        rgb = np.asarray(img.convert("RGB"))
    return len(cv2.imencode(".jpg", rgb, [cv2.IMWRITE_JPEG_QUALITY, 95])[1])


def stage_breakdown(paths: list[Path], size: int) -> dict[str, float]:
    """Milliseconds per image for each stage, in one process."""

    def per_image(fn) -> float:
        start = time.perf_counter()
        for p in paths:
            fn(p)
        return (time.perf_counter() - start) / len(paths) * 1000

    rgb = {p: load_rgb(p) for p in paths}
    square = {p: crop_square(rgb[p], size=size, mode="center") for p in paths}
    edges = {p: CannyDetector()(square[p]) for p in paths}
    return {
        "floor: decode + re-encode": per_image(floor_one),
        "full decode + checks (load_rgb)": per_image(load_rgb),
        f"crop + resize to {size}": per_image(lambda p: crop_square(rgb[p], size=size, mode="center")),
        "canny": per_image(lambda p: CannyDetector()(square[p])),
        "encode target JPEG": per_image(lambda p: cv2.imencode(".jpg", square[p], [cv2.IMWRITE_JPEG_QUALITY, 95])),
        "encode edges PNG": per_image(lambda p: cv2.imencode(".png", edges[p], [cv2.IMWRITE_PNG_COMPRESSION, 1])),
    }


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--n", type=int, default=200, help="number of JPEGs")
    parser.add_argument("--workers", type=int, default=os.cpu_count(), help="processes for both measurements")
    parser.add_argument("--size", type=int, default=512, help="output side")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_jpegs(Path(tmp), args.n)
        with ProcessPoolExecutor(args.workers) as pool:
            floor = timed(lambda: list(pool.map(floor_one, paths, chunksize=8)))
        records = [ImageRecord(p, p.stem) for p in paths]
        pipeline = timed(
            lambda: prepare_images(
                records,
                Path(tmp) / "out",
                ImageSettings(size=args.size, crop="center"),
                workers=args.workers,
                summary=Summary(),
            )
        )
        stages = stage_breakdown(paths[:50], args.size)
    print(f"{args.n} JPEGs of 500x375, {args.workers} worker processes, output {args.size}x{args.size}")
    print(f"{'step':40s} {'images/s':>10s} {'seconds':>8s}")
    print(f"{'decode + re-encode (floor)':40s} {args.n / floor:10.1f} {floor:8.2f}")
    print(f"{'validate + crop + canny + write':40s} {args.n / pipeline:10.1f} {pipeline:8.2f}")
    print(f"pipeline / floor: {pipeline / floor:.2f}x (goal: at most 2x)")
    print("per image, one process:")
    for name, ms in stages.items():
        print(f"  {name:38s} {ms:6.2f} ms")


if __name__ == "__main__":
    main()
