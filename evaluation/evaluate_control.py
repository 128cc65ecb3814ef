"""Controllability of a ControlNet on a held-out set: generate from each edge map, detect edges again, compare."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from annotator.canny import DEFAULT_THRESHOLDS, CannyDetector, CannyThresholds
from annotator.util import read_rgb
from cldm.sampling import hint_from_edges, images_to_uint8, sample
from evaluation.controllability import EdgeCounts, edge_counts, edge_f1, ssim
from evaluation.toy_scores import Palette, ToyPrompt, fill_colour, parse_toy_prompt, position_error
from ldm.flags import knob
from pairs.prompt_file import VAL_PROMPT_FILE, read_prompt_file
from pairs.toy_palette import COLOURS

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalSettings:
    """How samples are drawn and scored: one set for the offline tool and the monitor during training."""

    n: int = knob("held-out pairs to evaluate", default=32)
    steps: int = knob("DDIM steps", default=20)
    guidance_scale: float = knob("guidance scale", default=9.0, flag="--scale")
    # those that made the held-out edge maps (pairs.manifest), never a flag: scoring at others would be wrong
    thresholds: CannyThresholds = knob("canny thresholds of the data", default=DEFAULT_THRESHOLDS, cli=False)
    tolerance: int = knob("slack in pixels of the second, tolerant edge F1", default=1)
    seed: int = knob("seed of each pair's starting noise", default=0)
    # a pair's noise is its own, whatever batch it is in; another size may change the last bits of the samples
    batch_size: int = knob("pairs sampled together (training's monitor uses the default)", default=8)


@dataclass(frozen=True)
class PairScore:
    """The scores of one generated image against the pair it was made from; `index` is the pair's place in the
    held-out file, so shares scored apart (one per rank) sort back into one order."""

    index: int
    counts: EdgeCounts  # pixel-exact, summed over pairs into ControlNet++'s F1
    tolerant_f1: float
    ssim: float
    toy: ToyPrompt | None  # None: not a toy prompt (or an empty edge map)
    fill_read: str | None  # the fill colour read from the image (toy prompts)
    position_error: float | None  # px from the generated circle's centre to the edge map's (toy prompts)


def score_pair(
    index: int,
    detected: np.ndarray,
    edge_map: np.ndarray,
    image: np.ndarray,
    target: np.ndarray,
    prompt: str,
    *,
    tolerance: int,
    palette: Palette,
) -> PairScore:
    """One pair: canny of the image and the input edge map (H×W), the image and target (H×W×3 uint8)."""
    toy = parse_toy_prompt(prompt, palette) if edge_map.any() else None
    return PairScore(
        index,
        edge_counts(detected, edge_map),
        edge_f1(detected, edge_map, tolerance=tolerance).f1,
        ssim(image, target),
        toy,
        fill_colour(image, edge_map, palette) if toy else None,
        position_error(image, edge_map, toy, palette) if toy else None,
    )


class ControlScores:
    """The scores of generated images against the edge maps they were made from, pair by pair: what one control
    strength accumulates (and the toy base's round trip, with the target's canny as edges)."""

    def __init__(self, *, tolerance: int, palette: Palette) -> None:
        self.tolerance = tolerance
        self.palette = palette
        self.pairs: list[PairScore] = []

    def add(
        self, detected: np.ndarray, edge_map: np.ndarray, image: np.ndarray, target: np.ndarray, prompt: str
    ) -> None:
        """The next pair (see `score_pair`)."""
        self.pairs.append(
            score_pair(
                len(self.pairs),
                detected,
                edge_map,
                image,
                target,
                prompt,
                tolerance=self.tolerance,
                palette=self.palette,
            )
        )

    def colour_hits_by(self, part: str) -> dict[str, tuple[int, int]]:
        """Fills read as the named colour, as (hits, samples), per colour name of the prompt's `part`
        ("fill" or "background"): where the colour score is lost."""
        counts: dict[str, tuple[int, int]] = {}
        for pair in self.pairs:
            if pair.toy is not None:
                name = getattr(pair.toy, part)
                hits, n = counts.get(name, (0, 0))
                counts[name] = (hits + (pair.fill_read == pair.toy.fill), n + 1)
        return dict(sorted(counts.items()))

    def summary(self) -> dict[str, float | int | None]:
        return summarise(self.pairs)


def summarise(pairs: list[PairScore]) -> dict[str, float | int | None]:
    """The figures over all pairs, taken in held-out order (the same floats however the pairs were shared out)."""
    pairs = sorted(pairs, key=lambda p: p.index)
    if not pairs:
        raise ValueError("no pair was scored")
    exact = sum((p.counts for p in pairs), EdgeCounts()).score()
    toy = [p for p in pairs if p.toy is not None]
    return {
        "edge_f1": exact.f1,
        "edge_precision": exact.precision,
        "edge_recall": exact.recall,
        "edge_f1_tolerant": float(np.mean([p.tolerant_f1 for p in pairs])),
        "ssim": float(np.mean([p.ssim for p in pairs])),
        "colour_accuracy": float(np.mean([p.fill_read == p.toy.fill for p in toy])) if toy else None,
        "position_error_median": float(np.median([p.position_error for p in toy])) if toy else None,
        "n": len(pairs),
        "n_toy": len(toy),
    }


@dataclass(frozen=True)
class HeldOutPair:
    index: int  # place in the held-out file
    edges: np.ndarray  # H×W×3 uint8, white edges on black
    target: np.ndarray  # H×W×3 uint8
    prompt: str


def held_out_rows(folder: str | Path, prompt_file: str, n: int) -> list[dict[str, str]]:
    """The first `n` rows of the held-out prompt file; refused when it lists none."""
    path = Path(folder) / prompt_file
    rows = read_prompt_file(path)[:n]
    if not rows:
        raise ValueError(f"{path} lists no pairs")
    return rows


def batches_of(n_pairs: int, batch_size: int, *, rank: int = 0, world_size: int = 1) -> list[range]:
    """The held-out indices a rank samples, in batches. The batches are fixed by `batch_size` alone, and ranks take
    whole batches in turn, so every pair is sampled in the same batch on one process as on many: equal scores."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    batches = [range(i, min(i + batch_size, n_pairs)) for i in range(0, n_pairs, batch_size)]
    return batches[rank::world_size]


def read_pairs(folder: Path, rows: list[dict[str, str]], indices: range) -> list[HeldOutPair]:
    pairs = []
    for i in indices:
        row = rows[i]
        edges, target = read_rgb(folder / row["source"]), read_rgb(folder / row["target"])
        if edges.shape[0] % 64 or edges.shape[1] % 64:
            raise ValueError(f"{row['source']}: sides must be multiples of 64, got {edges.shape[:2]}")
        pairs.append(HeldOutPair(i, edges, target, row["prompt"]))
    return pairs


def fixed_noise(model: torch.nn.Module, pairs: list[HeldOutPair], seed: int) -> torch.Tensor:
    """The starting noise B×C×h×w of a batch: each pair's own draw from `seed + index`, on the model's device."""
    device = model.betas.device
    f = model.first_stage_model.downsample_factor
    noise = []
    for pair in pairs:
        shape = (1, model.channels, pair.edges.shape[0] // f, pair.edges.shape[1] // f)
        generator = torch.Generator(device=device).manual_seed(seed + pair.index)
        noise.append(torch.randn(shape, generator=generator, device=device))  # 1×C×h×w
    return torch.cat(noise)


def score_batch(
    model: torch.nn.Module,
    pairs: list[HeldOutPair],
    strength: float,
    settings: EvalSettings,
    palette: Palette,
) -> tuple[list[PairScore], list[np.ndarray]]:
    """Sample one batch of pairs at one control strength and score it: the scores and the H×W×3 samples."""
    device = model.betas.device
    hint = torch.cat([hint_from_edges(p.edges, 1, device) for p in pairs])  # B×3×H×W
    images = sample(
        model,
        hint,
        [p.prompt for p in pairs],
        [""] * len(pairs),
        control_scales=[strength] * model.control_model.num_outputs,
        steps=settings.steps,
        guidance_scale=settings.guidance_scale,
        x_T=fixed_noise(model, pairs, settings.seed),  # the same noise at every strength: only the control differs
    )
    samples = images_to_uint8(images)  # B × H×W×3
    canny = CannyDetector()
    scores = []
    for pair, image in zip(pairs, samples):
        detected = canny(image, settings.thresholds.low, settings.thresholds.high)  # H×W
        scores.append(
            score_pair(
                pair.index,
                detected,
                pair.edges[:, :, 0],
                image,
                pair.target,
                pair.prompt,
                tolerance=settings.tolerance,
                palette=palette,
            )
        )
    return scores, samples


Gather = Callable[[list[PairScore]], list[PairScore]]


def evaluate(
    model: torch.nn.Module,
    folder: str | Path,
    strengths: tuple[float, ...],
    *,
    settings: EvalSettings = EvalSettings(),
    prompt_file: str = VAL_PROMPT_FILE,
    grid_rows: list[list[np.ndarray]] | None = None,
    palette: Palette = COLOURS,
    rank: int = 0,
    world_size: int = 1,
    gather: Gather | None = None,
    progress: bool = True,
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

    Under DDP each rank passes its `rank` and the `world_size`, samples its share of the batches, and `gather`
    collects every rank's pair scores (all ranks get the same result). When `grid_rows` is a list, one row per
    pair this rank sampled is appended to it: edges, a sample per strength, target.
    """
    folder = Path(folder)
    rows = held_out_rows(folder, prompt_file, settings.n)
    scores: dict[str, list[PairScore]] = {f"{s:g}": [] for s in strengths}
    batches = batches_of(len(rows), settings.batch_size, rank=rank, world_size=world_size)
    for indices in tqdm(batches, desc="evaluate", unit="batch", disable=not progress):
        pairs = read_pairs(folder, rows, indices)
        columns = []
        for strength in strengths:
            batch_scores, samples = score_batch(model, pairs, strength, settings, palette)
            scores[f"{strength:g}"] += batch_scores
            columns.append(samples)
        if grid_rows is not None:
            for j, pair in enumerate(pairs):
                grid_rows.append([pair.edges] + [column[j] for column in columns] + [pair.target])
    if gather is not None:
        scores = {s: gather(entry) for s, entry in scores.items()}
    return {s: summarise(entry) for s, entry in scores.items()}
