"""Decode every image fully, upright; report unreadable ones without touching them."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from annotator.util import UnreadableImage, read_rgb

__all__ = ["UnreadableImage", "load_rgb"]


def load_rgb(path: Path) -> np.ndarray:
    """`path` decoded as training will read it (annotator.util.read_rgb: upright, 8-bit RGB), refused when empty
    or too small to crop. The reason carries no path: the caller lists it beside the file."""
    if path.stat().st_size == 0:
        raise UnreadableImage("empty file (0 bytes)")
    try:
        array = read_rgb(path)
    except UnreadableImage as err:
        raise UnreadableImage(err.reason) from None
    if min(array.shape[:2]) < 8:
        raise UnreadableImage(f"too small ({array.shape[1]}×{array.shape[0]})")
    return array
