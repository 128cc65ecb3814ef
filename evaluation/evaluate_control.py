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
from evaluation.controllability import ExactEdgeScore, edge_f1, ssim
from evaluation.toy_scores import Palette, ToyPrompt, fill_colour, parse_toy_prompt, position_error
from pairs.prompt_file import VAL_PROMPT_FILE, read_prompt_file
from pairs.toy_palette import COLOURS

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


class ControlScores:
    """The scores of generated images against the edge maps they were made from, added pair by pair: what
    one control strength accumulates (and the toy base's round trip, with the target's canny as edges)."""

    def __init__(self, *, tolerance: int, palette: Palette) -> None:
        self.tolerance = tolerance
        self.palette = palette
        self.exact = ExactEdgeScore()
        self.tolerant_f1: list[float] = []
        self.ssim: list[float] = []
        self.colour_reads: list[tuple[ToyPrompt, str]] = []  # the prompt, and the fill colour read from the image
        self.position_errors: list[float] = []

    def add(
        self, detected: np.ndarray, edge_map: np.ndarray, image: np.ndarray, target: np.ndarray, prompt: str
    ) -> None:
        """One pair: canny of the image and the input edge map (H×W), the image and target (H×W×3 uint8)."""
        self.exact.update(detected, edge_map)
        self.tolerant_f1.append(edge_f1(detected, edge_map, tolerance=self.tolerance).f1)
        self.ssim.append(ssim(image, target))
        toy = parse_toy_prompt(prompt, self.palette) if edge_map.any() else None
        if toy is not None:
            self.colour_reads.append((toy, fill_colour(image, edge_map, self.palette)))
            self.position_errors.append(position_error(image, edge_map, toy, self.palette))

    def colour_hits_by(self, part: str) -> dict[str, tuple[int, int]]:
        """Fills read as the named colour, as (hits, samples), per colour name of the prompt's `part`
        ("fill" or "background"): where the colour score is lost."""
        counts: dict[str, tuple[int, int]] = {}
        for toy, read in self.colour_reads:
            name = getattr(toy, part)
            hits, n = counts.get(name, (0, 0))
            counts[name] = (hits + (read == toy.fill), n + 1)
        return dict(sorted(counts.items()))

    def summary(self) -> dict[str, float | int | None]:
        exact = self.exact.compute()
        hits = [read == toy.fill for toy, read in self.colour_reads]
        toy = bool(hits)
        return {
            "edge_f1": exact.f1,
            "edge_precision": exact.precision,
            "edge_recall": exact.recall,
            "edge_f1_tolerant": float(np.mean(self.tolerant_f1)),
            "ssim": float(np.mean(self.ssim)),
            "colour_accuracy": float(np.mean(hits)) if toy else None,
            "position_error_median": float(np.median(self.position_errors)) if toy else None,
            "n": len(self.ssim),
            "n_toy": len(hits),
        }


def evaluate(
    model: torch.nn.Module,
    folder: str | Path,
    strengths: tuple[float, ...],
    *,
    settings: EvalSettings = EvalSettings(),
    prompt_file: str = VAL_PROMPT_FILE,
    grid_rows: list[list[np.ndarray]] | None = None,
    palette: Palette = COLOURS,
) -> dict[str, dict[str, float | int | None]]:
    """Scores per strength (keys "1", "0", ...):

    - `edge_f1`, `edge_precision`, `edge_recall`: ControlNet++'s pixel-exact figures over all pairs
      (canny of the sample against the input edges);
    - `edge_f1_tolerant`: the mean per pair of the edge F1 with `settings.tolerance` pixels of slack;
    - `ssim`: the mean SSIM of the sample against the target;
    - on toy prompts ("a red circle on a white background", colours of `palette`): `colour_accuracy`, the
      share of samples whose median colour inside the edge map's circle is nearest to the named fill, and
      `position_error_median`, the median distance in pixels from the generated circle's centre to the
      edge map's; None when no prompt is a toy prompt.

    When `grid_rows` is a list, one row per pair is appended to it: edges, a sample per strength, target.
    """
    folder = Path(folder)
    rows = read_prompt_file(folder / prompt_file)[: settings.n]
    if not rows:
        raise ValueError(f"{folder / prompt_file} lists no pairs")
    device = model.betas.device
    n_scales = model.control_model.num_outputs
    scores = {f"{s:g}": ControlScores(tolerance=settings.tolerance, palette=palette) for s in strengths}
    canny = CannyDetector()
    for i, row in enumerate(tqdm(rows, desc="evaluate", unit="pair")):
        edges, target = read_rgb(folder / row["source"]), read_rgb(folder / row["target"])
        if edges.shape[0] % 64 or edges.shape[1] % 64:
            raise ValueError(f"{row['source']}: sides must be multiples of 64, got {edges.shape[:2]}")
        edge_map = edges[:, :, 0]  # H×W
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
            detected = canny(sample_image, settings.low_threshold, settings.high_threshold)  # H×W
            scores[f"{strength:g}"].add(detected, edge_map, sample_image, target, row["prompt"])
            row_images.append(sample_image)
        if grid_rows is not None:
            grid_rows.append(row_images + [target])
    return {s: entry.summary() for s, entry in scores.items()}
