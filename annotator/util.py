"""Image helpers for condition extraction: uint8 HWC arrays in and out."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np


def HWC3(image: np.ndarray) -> np.ndarray:
    """Any gray, gray+alpha, RGB or RGBA image (uint8 or uint16) → uint8 H×W×3 RGB.

    Alpha is composited over white, as the original ControlNet helper does; 16-bit values are scaled
    down to 8 bits.
    """
    if not isinstance(image, np.ndarray):
        raise TypeError(f"expected a numpy array, got {type(image).__name__}")
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    if image.dtype != np.uint8:
        raise TypeError(f"expected a uint8 or uint16 image, got {image.dtype}")
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 2, 3, 4):
        raise ValueError(f"expected H×W, H×W×1, H×W×3 or H×W×4, got shape {image.shape}")
    channels = image.shape[2]
    if channels == 3:
        return image
    if channels in (1, 2):
        gray = image[:, :, :1]
        if channels == 1:
            return np.concatenate([gray] * 3, axis=2)
        image = np.concatenate([gray] * 3 + [image[:, :, 1:2]], axis=2)
    color = image[:, :, :3].astype(np.float32)
    alpha = image[:, :, 3:4].astype(np.float32) / 255.0
    return (color * alpha + 255.0 * (1.0 - alpha)).clip(0, 255).round().astype(np.uint8)


def read_rgb(path: str | Path) -> np.ndarray:
    """Decode an image file into uint8 H×W×3 RGB (OpenCV decodes to BGR); ValueError naming the file if it cannot."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)  # H×W×3 BGR
    if image is None:
        raise ValueError(f"cannot decode {path}")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def resized_size(height: int, width: int, resolution: int) -> tuple[int, int]:
    """(height, width) after `resize_image`: the short side scaled to `resolution`, both rounded to multiples of 64."""
    if resolution < 64:
        raise ValueError(f"resolution must be at least 64, got {resolution}")
    k = resolution / min(height, width)
    return tuple(max(64, int(np.round(s * k / 64.0)) * 64) for s in (height, width))  # type: ignore[return-value]


def resize_image(image: np.ndarray, resolution: int) -> np.ndarray:
    """Scale so the short side is `resolution`, then round both sides to multiples of 64."""
    h, w = image.shape[:2]
    new_h, new_w = resized_size(h, w, resolution)
    interpolation = cv2.INTER_LANCZOS4 if resolution > min(h, w) else cv2.INTER_AREA
    return cv2.resize(image, (new_w, new_h), interpolation=interpolation)
