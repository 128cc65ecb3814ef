"""Controllability of a ControlNet on a held-out set: generate from each edge map, detect edges again, compare."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from annotator.canny import CannyDetector
from annotator.util import read_rgb
from cldm.sampling import hint_from_edges, images_to_uint8, sample
from evaluation.controllability import edge_f1, ssim
from training.prompt_file import VAL_PROMPT_FILE, read_prompt_file

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalSettings:
    """How samples are drawn and scored."""

    n: int = 32
    steps: int = 20
    guidance_scale: float = 9.0
    low_threshold: int = 100
    high_threshold: int = 200
    tolerance: int = 1
    seed: int = 0


def evaluate(
    model: torch.nn.Module,
    folder: str | Path,
    strengths: tuple[float, ...],
    *,
    settings: EvalSettings = EvalSettings(),
    prompt_file: str = VAL_PROMPT_FILE,
    grid_rows: list[list[np.ndarray]] | None = None,
) -> dict[str, dict[str, float]]:
    """Mean edge precision/recall/F1 (canny of the sample vs the input edges) and SSIM (vs the target) per strength.

    When `grid_rows` is a list, one row per pair is appended to it: edges, a sample per strength, target.
    """
    folder = Path(folder)
    rows = read_prompt_file(folder / prompt_file)[: settings.n]
    if not rows:
        raise ValueError(f"{folder / prompt_file} lists no pairs")
    device = model.betas.device
    n_scales = model.control_model.num_outputs
    scores: dict[str, dict[str, list[float]]] = {
        f"{s:g}": {"precision": [], "recall": [], "f1": [], "ssim": []} for s in strengths
    }
    for i, row in enumerate(tqdm(rows, desc="evaluate", unit="pair")):
        edges, target = read_rgb(folder / row["source"]), read_rgb(folder / row["target"])
        if edges.shape[0] % 64 or edges.shape[1] % 64:
            raise ValueError(f"{row['source']}: sides must be multiples of 64, got {edges.shape[:2]}")
        row_images = [edges]
        hint = hint_from_edges(edges, 1, device)  # 1×3×H×W
        for strength in strengths:
            # The same seed for every strength: only the control differs between the columns.
            generator = torch.Generator(device=device).manual_seed(settings.seed + i)
            images = sample(
                model,
                hint,
                [row["prompt"]],
                [""],
                control_scales=[strength] * n_scales,
                steps=settings.steps,
                guidance_scale=settings.guidance_scale,
                generator=generator,
            )
            sample_image = images_to_uint8(images)[0]  # H×W×3
            detected = CannyDetector()(sample_image, settings.low_threshold, settings.high_threshold)
            score = edge_f1(detected, edges[:, :, 0], tolerance=settings.tolerance)
            entry = scores[f"{strength:g}"]
            entry["precision"].append(score.precision)
            entry["recall"].append(score.recall)
            entry["f1"].append(score.f1)
            entry["ssim"].append(ssim(sample_image, target))
            row_images.append(sample_image)
        if grid_rows is not None:
            grid_rows.append(row_images + [target])
    return {s: {k: float(np.mean(v)) for k, v in metrics.items()} | {"n": len(rows)} for s, metrics in scores.items()}
