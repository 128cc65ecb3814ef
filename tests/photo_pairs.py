"""Held-out pairs from scikit-image's photos at chosen canny thresholds, with their dataset.json: natural edges
change with the thresholds (the toy circles' do not), so a test can tell which thresholds scored or served them."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from skimage import data

from annotator.canny import CannyDetector, CannyThresholds
from pairs.manifest import DatasetManifest, HowMade
from pairs.prompt_file import PROMPT_FILE, VAL_PROMPT_FILE, write_prompt_file

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")


def photo(name: str, size: int) -> np.ndarray:
    """A size×size×3 uint8 RGB photo."""
    return cv2.resize(getattr(data, name)(), (size, size), interpolation=cv2.INTER_AREA)


def write_photo_pairs(root: Path, thresholds: CannyThresholds, *, size: int = 64) -> Path:
    """Four pairs (two training, two held out) whose edge maps were made at `thresholds`, and the manifest."""
    (root / "source").mkdir(parents=True)
    (root / "target").mkdir()
    rows = []
    for name in PHOTOS:
        rgb = photo(name, size)
        cv2.imwrite(str(root / "target" / f"{name}.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(root / "source" / f"{name}.png"), CannyDetector()(rgb, thresholds.low, thresholds.high))
        rows.append({"source": f"source/{name}.png", "target": f"target/{name}.png", "prompt": f"a photo of {name}"})
    made = HowMade("canny", thresholds.low, thresholds.high, size, "squash", None, "test", None)
    DatasetManifest(made).write(root)
    write_prompt_file(root / VAL_PROMPT_FILE, rows[:2])
    write_prompt_file(root / PROMPT_FILE, rows[2:])
    return root
