"""Canny edge maps (Canny 1986), the condition of the canny ControlNet."""

from __future__ import annotations

import cv2
import numpy as np


class CannyDetector:
    """uint8 H×W×C (or H×W) image → uint8 H×W edge map with values 0 and 255."""

    def __call__(self, image: np.ndarray, low_threshold: int = 100, high_threshold: int = 200) -> np.ndarray:
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
            raise TypeError(
                f"CannyDetector needs a uint8 array, got {getattr(image, 'dtype', type(image).__name__)}; "
                "convert with annotator.util.HWC3"
            )
        if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 3)):
            raise ValueError(f"CannyDetector needs H×W or H×W×3, got shape {image.shape}")
        if not 0 <= low_threshold <= high_threshold <= 255 * 4:
            raise ValueError(f"need 0 <= low_threshold <= high_threshold, got {low_threshold}, {high_threshold}")
        return cv2.Canny(image, low_threshold, high_threshold)
