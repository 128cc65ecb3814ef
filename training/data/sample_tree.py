"""A tiny tree in the Stanford Dogs layout (generated pictures + XML boxes) to try the pipeline without the download."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

BREEDS = ("n02085620-Chihuahua", "n02099601-golden_retriever")


def write_sample_tree(root: str | Path, *, per_breed: int = 3, seed: int = 0) -> tuple[Path, Path]:
    """Write `Images/` and `Annotation/` under `root` (an ellipse 'dog' in each picture); returns both folders."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    images, annotations = root / "Images", root / "Annotation"
    for breed in BREEDS:
        wnid = breed.split("-")[0]
        (images / breed).mkdir(parents=True, exist_ok=True)
        (annotations / breed).mkdir(parents=True, exist_ok=True)
        for i in range(per_breed):
            h, w = int(rng.integers(300, 420)), int(rng.integers(380, 520))
            img = np.full((h, w, 3), rng.integers(120, 230, size=3), np.uint8)
            cx, cy = int(rng.integers(w // 4, 3 * w // 4)), int(rng.integers(h // 3, 2 * h // 3))
            ax, ay = int(rng.integers(40, w // 4)), int(rng.integers(30, h // 4))
            cv2.ellipse(img, (cx, cy), (ax, ay), 0, 0, 360, [int(c) for c in rng.integers(20, 110, size=3)], -1)
            stem = f"{wnid}_{i}"
            cv2.imwrite(str(images / breed / f"{stem}.jpg"), img)
            box = (max(cx - ax, 0), max(cy - ay, 0), min(cx + ax, w), min(cy + ay, h))
            (annotations / breed / stem).write_text(
                f"<annotation><size><width>{w}</width><height>{h}</height></size><object><name>{breed}</name>"
                f"<bndbox><xmin>{box[0]}</xmin><ymin>{box[1]}</ymin><xmax>{box[2]}</xmax><ymax>{box[3]}</ymax>"
                "</bndbox></object></annotation>"
            )
    return images, annotations
