"""Square crops at the training resolution: squash (the seed's), center, or around the annotated dog box."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from training.data.discover import Box

CROP_MODES = ("squash", "center", "bbox")


def _union(boxes: Sequence[Box]) -> Box:
    return Box(
        min(b.xmin for b in boxes), min(b.ymin for b in boxes), max(b.xmax for b in boxes), max(b.ymax for b in boxes)
    )


def square_window(height: int, width: int, box: Box | None) -> tuple[int, int, int]:
    """(top, left, side) of the square to cut: centred on the box (or image), as large as the short side
    or the box, shifted to stay inside the image where possible."""
    if box is None:
        side = min(height, width)
        return (height - side) // 2, (width - side) // 2, side
    bw, bh = box.xmax - box.xmin, box.ymax - box.ymin
    side = max(min(height, width), bw, bh)
    cy, cx = (box.ymin + box.ymax) // 2, (box.xmin + box.xmax) // 2
    top = min(max(cy - side // 2, 0), max(height - side, 0))
    left = min(max(cx - side // 2, 0), max(width - side, 0))
    top = min(top, box.ymin)  # keep the whole box inside even when the square must hang over an edge
    left = min(left, box.xmin)
    return top, left, side


def crop_square(image: np.ndarray, *, size: int, mode: str, boxes: Sequence[Box] = ()) -> np.ndarray:
    """uint8 H×W×3 → uint8 size×size×3. `bbox` without boxes falls back to `center`."""
    if mode not in CROP_MODES:
        raise ValueError(f"crop mode must be one of {CROP_MODES}, got {mode!r}")
    if size < 64 or size % 64:
        raise ValueError(f"size must be a multiple of 64, got {size}")
    h, w = image.shape[:2]
    if mode == "squash":
        square = image
    else:
        top, left, side = square_window(h, w, _union(boxes) if mode == "bbox" and boxes else None)
        pad_bottom, pad_right = max(top + side - h, 0), max(left + side - w, 0)
        if pad_bottom or pad_right:  # a box longer than the short side: extend the image by reflection
            image = cv2.copyMakeBorder(image, 0, pad_bottom, 0, pad_right, cv2.BORDER_REFLECT_101)
        square = image[top : top + side, left : left + side]
    interpolation = cv2.INTER_AREA if min(square.shape[:2]) > size else cv2.INTER_LINEAR
    return cv2.resize(square, (size, size), interpolation=interpolation)
