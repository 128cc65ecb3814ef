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


def to_unit_range(images: torch.Tensor) -> torch.Tensor:
    """Decoded images (about [−1, 1]) → [0, 1] in float32, what the canny takes."""
    return (images.float() / 2 + 0.5).clamp(0, 1)


def kornia_thresholds(thresholds: CannyThresholds) -> tuple[float, float]:
    return thresholds.low / OPENCV_PER_KORNIA, thresholds.high / OPENCV_PER_KORNIA


def edge_reward(
    images: torch.Tensor, references: torch.Tensor, thresholds: CannyThresholds
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample (B), the MSE between the edge magnitudes of `images` and of the `references` the edge maps were made
    from, both B×3×H×W in [0, 1]: zero, with a zero gradient, where the images are the references. And, without a
    gradient, the exact (pixel-for-pixel) F1 over the batch of the images' canny edges against the references', both
    by Kornia at the data's thresholds (Kornia's blur places edges a pixel from OpenCV's, so the data's own OpenCV
    edge maps would score a perfect image at about 0.5). One canny per image gives both: the magnitude (after
    non-maximum suppression) does not depend on the thresholds, the edges do."""
    low, high = kornia_thresholds(thresholds)
    magnitude, found = kornia.filters.canny(images.float(), low, high)  # B×1×H×W each; edges in {0, 1}
    with torch.no_grad():
        target, wanted = kornia.filters.canny(references.float(), low, high)  # B×1×H×W each
    loss = F.mse_loss(magnitude, target, reduction="none").mean(dim=(1, 2, 3))  # B
    found, wanted = found.detach() > 0.5, wanted > 0.5
    f1 = 2.0 * (found & wanted).sum() / (found.sum() + wanted.sum()).clamp(min=1)
    return loss, f1
