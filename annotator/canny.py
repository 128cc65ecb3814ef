"""Canny edge maps (Canny 1986), the condition of the canny ControlNet."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class CannyThresholds:
    """The hysteresis thresholds that made an edge map: a ControlNet is served and scored with the ones it learned."""

    low: int
    high: int

    def __post_init__(self) -> None:
        if not (isinstance(self.low, int) and isinstance(self.high, int)) or isinstance(self.low, bool):
            raise TypeError(f"canny thresholds must be integers, got {self.low!r}, {self.high!r}")
        if not 0 <= self.low <= self.high <= 255 * 4:
            raise ValueError(f"need 0 <= low <= high <= 1020 for the canny thresholds, got {self.low}, {self.high}")

    def __str__(self) -> str:
        return f"{self.low}/{self.high}"


# The original ControlNet's canny thresholds: the one place that says so. Data prepared without a record of its own
# thresholds (before dataset.json held them) is taken to have been made with these.
DEFAULT_THRESHOLDS = CannyThresholds(100, 200)


class CannyDetector:
    """uint8 H×W×C (or H×W) image → uint8 H×W edge map with values 0 and 255."""

    def __call__(
        self,
        image: np.ndarray,
        low_threshold: int = DEFAULT_THRESHOLDS.low,
        high_threshold: int = DEFAULT_THRESHOLDS.high,
    ) -> np.ndarray:
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
