"""Controllability metrics for canny control (ControlNet++ protocol, Li et al. 2024, §4.1).

The generated image is run through the same canny detector as the input, and the two binarised edge
maps are compared pixel by pixel: ControlNet++'s figure is the binary F1 (torchmetrics' `BinaryF1Score`)
accumulated over every pixel of every pair (`ExactEdgeScore`), with no tolerance. `edge_f1` is a second, more
forgiving figure: an edge pixel counts when the other map has one within a few pixels. SSIM compares
the generated image with the held-out target.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class EdgeScore:
    """Precision, recall and F1 of predicted edge pixels against reference edge pixels."""

    precision: float
    recall: float
    f1: float


def _check_edge_map(name: str, edges: np.ndarray) -> np.ndarray:
    if not isinstance(edges, np.ndarray) or edges.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (H×W) edge map, got {getattr(edges, 'shape', type(edges))}")
    return edges > 0


@dataclass(frozen=True)
class EdgeCounts:
    """Edge pixels of predicted maps against reference maps: true positives, false positives, false negatives.
    Counts add, so the score of many pairs (or of many ranks' shares of them) is the score of their sum."""

    tp: int = 0
    fp: int = 0
    fn: int = 0

    def __add__(self, other: EdgeCounts) -> EdgeCounts:
        return EdgeCounts(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn)

    def score(self) -> EdgeScore:
        """Precision, recall and F1 of the counted pixels; 0 where a ratio has nothing to divide (torchmetrics'
        zero_division=0)."""
        precision = self.tp / (self.tp + self.fp) if self.tp + self.fp else 0.0
        recall = self.tp / (self.tp + self.fn) if self.tp + self.fn else 0.0
        f1 = 2 * self.tp / (2 * self.tp + self.fp + self.fn) if self.tp else 0.0
        return EdgeScore(precision, recall, f1)


def edge_counts(predicted: np.ndarray, reference: np.ndarray) -> EdgeCounts:
    """Pixel-exact counts of one pair of H×W edge maps (any non-zero pixel is an edge)."""
    pred = _check_edge_map("predicted", predicted)
    ref = _check_edge_map("reference", reference)
    if pred.shape != ref.shape:
        raise ValueError(f"edge maps differ in size: predicted {pred.shape} vs reference {ref.shape}")
    return EdgeCounts(int((pred & ref).sum()), int((pred & ~ref).sum()), int((~pred & ref).sum()))


class ExactEdgeScore:
    """ControlNet++'s canny score: pixel-exact precision, recall and F1 of edge pixels, summed over all pairs.

    Each `update` adds one pair of H×W edge maps; `compute` gives the figures over every pixel seen so far, as
    torchmetrics' `BinaryF1Score` does (tested against it). Counted here rather than in torchmetrics, because
    counts add exactly across pairs and ranks, where its metric objects would have to be synchronised.
    """

    def __init__(self) -> None:
        self.counts = EdgeCounts()

    def update(self, predicted: np.ndarray, reference: np.ndarray) -> None:
        self.counts = self.counts + edge_counts(predicted, reference)

    def compute(self) -> EdgeScore:
        return self.counts.score()


def _dilate(mask: np.ndarray, tolerance: int) -> np.ndarray:
    if tolerance == 0:
        return mask
    size = 2 * tolerance + 1
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size))
    return cv2.dilate(mask.astype(np.uint8), kernel) > 0


def edge_f1(predicted: np.ndarray, reference: np.ndarray, *, tolerance: int = 1) -> EdgeScore:
    """Tolerant edge F1 of one pair: an edge pixel counts as matched when the other map has one within `tolerance` px.

    Both maps are H×W; any non-zero pixel is an edge. Two empty maps score F1 = 1 (nothing to find,
    nothing found); one empty map against a non-empty one scores 0.
    """
    pred = _check_edge_map("predicted", predicted)
    ref = _check_edge_map("reference", reference)
    if pred.shape != ref.shape:
        raise ValueError(f"edge maps differ in size: predicted {pred.shape} vs reference {ref.shape}")
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0 pixels, got {tolerance}")
    n_pred, n_ref = int(pred.sum()), int(ref.sum())
    if n_pred == 0 and n_ref == 0:
        return EdgeScore(1.0, 1.0, 1.0)
    precision = float((pred & _dilate(ref, tolerance)).sum() / n_pred) if n_pred else 0.0
    recall = float((ref & _dilate(pred, tolerance)).sum() / n_ref) if n_ref else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return EdgeScore(precision, recall, f1)


def ssim(image_a: np.ndarray, image_b: np.ndarray) -> float:
    """Mean SSIM (Wang et al. 2004: 11×11 Gaussian window, σ 1.5) of two uint8 images, on luminance."""
    gray = []
    for name, img in (("image_a", image_a), ("image_b", image_b)):
        if not isinstance(img, np.ndarray) or img.dtype != np.uint8 or img.ndim not in (2, 3):
            raise TypeError(
                f"{name} must be a uint8 H×W or H×W×3 array, got "
                f"{getattr(img, 'dtype', type(img))} {getattr(img, 'shape', '')}"
            )
        gray.append((cv2.cvtColor(img, cv2.COLOR_RGB2GRAY) if img.ndim == 3 else img).astype(np.float64))
    a, b = gray
    if a.shape != b.shape:
        raise ValueError(f"images differ in size: {a.shape} vs {b.shape}")
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2

    def blur(x: np.ndarray) -> np.ndarray:
        return cv2.GaussianBlur(x, (11, 11), 1.5, borderType=cv2.BORDER_REFLECT)

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return float(ssim_map.mean())
