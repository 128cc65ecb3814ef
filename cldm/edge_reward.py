"""ControlNet++'s consistency reward for canny edges (Li et al., ECCV 2024, arXiv 2404.07987, §3.3; code
liming-ai/ControlNet_Plus_Plus, train/reward_control.py): the image a one-step denoise implies is run through a
differentiable canny (Kornia's), and the loss is the MSE between its edge magnitudes and those of the training image
its input edge map was made from, as ControlNet++ labels its canny reward. The magnitudes are taken after
non-maximum suppression, before any threshold; the thresholds of the data (its dataset.json) set which pixels count
as edges in the exact edge F1 logged beside the loss."""

from __future__ import annotations

import kornia
import torch
import torch.nn.functional as F

from annotator.canny import CannyThresholds

REWARD_MAX_T = 200  # ControlNet++ rewards the samples noised to t <= 200 of SD's 1000 (its reward_*.sh scripts)

# OpenCV's canny takes |gx| + |gy| of an unnormalised 3×3 Sobel on a 0–255 image; Kornia's takes the L2 norm of a
# Sobel normalised by 8 on a 0–1 image. A threshold in OpenCV's units is about this many times one in Kornia's.
OPENCV_PER_KORNIA = 255.0 * 8.0


def kornia_thresholds(thresholds: CannyThresholds) -> tuple[float, float]:
    return thresholds.low / OPENCV_PER_KORNIA, thresholds.high / OPENCV_PER_KORNIA


def edge_magnitude(images: torch.Tensor, thresholds: CannyThresholds) -> torch.Tensor:
    """B×3×H×W in [0, 1] → B×1×H×W: canny's gradient magnitude after non-maximum suppression (differentiable)."""
    low, high = kornia_thresholds(thresholds)
    magnitude, _ = kornia.filters.canny(images, low, high, hysteresis=False)  # B×1×H×W
    return magnitude


def edge_reward_loss(images: torch.Tensor, references: torch.Tensor, thresholds: CannyThresholds) -> torch.Tensor:
    """Per sample (B), the MSE between the edge magnitudes of `images` and of the `references` the edge maps were made
    from, both B×3×H×W in [0, 1]. Zero, with a zero gradient, where the images are the references."""
    with torch.no_grad():
        target = edge_magnitude(references.float(), thresholds)  # B×1×H×W
    return F.mse_loss(edge_magnitude(images.float(), thresholds), target, reduction="none").mean(dim=(1, 2, 3))


@torch.no_grad()
def edge_f1(images: torch.Tensor, references: torch.Tensor, thresholds: CannyThresholds) -> torch.Tensor:
    """The exact (pixel-for-pixel) F1 over the batch of the images' canny edges against the references', both by
    Kornia's canny at the data's thresholds (Kornia's blur places edges a pixel from OpenCV's, so the data's own
    OpenCV edge maps would score a perfect image at about 0.5)."""
    low, high = kornia_thresholds(thresholds)
    _, found = kornia.filters.canny(images.float(), low, high)  # B×1×H×W in {0, 1}
    _, wanted = kornia.filters.canny(references.float(), low, high)  # B×1×H×W in {0, 1}
    found, wanted = found > 0.5, wanted > 0.5
    hit = (found & wanted).sum()
    return 2.0 * hit / (found.sum() + wanted.sum()).clamp(min=1)
