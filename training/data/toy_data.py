"""A Fill50K-style toy set (the ControlNet authors' sanity check): circle outlines → filled circles.

Targets are a filled circle on a plain background; sources are the canny edges of the target, so the
hint is exactly what the canny ControlNet sees at test time; prompts name the colours. dataset.json records
how the set was made (the thresholds above all), as the Stanford Dogs preparation's does.

    python -m training.data.toy_data --out training/toy --n 2000 --size 64 --seed 0
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

from annotator.canny import DEFAULT_THRESHOLDS, CannyDetector, CannyThresholds
from ldm.flags import HelpFormatter
from ldm.util import write_bytes_atomically
from pairs.manifest import DatasetManifest, HowMade
from pairs.prompt_file import PROMPT_FILE, VAL_PROMPT_FILE, write_prompt_file
from pairs.toy_palette import COLOURS


def toy_example(
    rng: np.random.Generator, size: int, thresholds: CannyThresholds = DEFAULT_THRESHOLDS
) -> tuple[np.ndarray, np.ndarray, str]:
    """(target H×W×3 uint8, edge map H×W uint8, prompt) for one random circle."""
    names = list(COLOURS)
    fill, background = rng.choice(len(names), size=2, replace=False)
    radius = int(rng.integers(size // 8, size // 3))
    cx, cy = (int(v) for v in rng.integers(radius + 2, size - radius - 2, size=2))
    target = np.empty((size, size, 3), np.uint8)
    target[:] = COLOURS[names[background]]
    cv2.circle(target, (cx, cy), radius, COLOURS[names[fill]], thickness=-1, lineType=cv2.LINE_AA)
    edges = CannyDetector()(target, thresholds.low, thresholds.high)
    return target, edges, f"a {names[fill]} circle on a {names[background]} background"


def write_toy_dataset(
    out: str | Path,
    *,
    n: int = 2000,
    size: int = 64,
    seed: int = 0,
    val_fraction: float = 0.05,
    thresholds: CannyThresholds = DEFAULT_THRESHOLDS,
) -> Path:
    """Write n pairs to `out` (source/, target/, dataset.json, prompt.json, prompt_val.json); the same seed gives
    the same bytes."""
    if n < 2:
        raise ValueError(f"n must be at least 2, got {n}")
    if size < 64 or size % 64:
        raise ValueError(f"size must be a multiple of 64, got {size}")
    out = Path(out)
    (out / "source").mkdir(parents=True, exist_ok=True)
    (out / "target").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        target, edges, prompt = toy_example(rng, size, thresholds)
        name = f"{i:06d}.png"
        write_bytes_atomically(
            out / "target" / name, cv2.imencode(".png", cv2.cvtColor(target, cv2.COLOR_RGB2BGR))[1].tobytes()
        )
        write_bytes_atomically(out / "source" / name, cv2.imencode(".png", edges)[1].tobytes())
        rows.append({"source": f"source/{name}", "target": f"target/{name}", "prompt": prompt})
    n_val = max(1, int(round(n * val_fraction)))
    DatasetManifest(toy_how_made(size, thresholds)).write(out)
    write_prompt_file(out / VAL_PROMPT_FILE, rows[:n_val])
    write_prompt_file(out / PROMPT_FILE, rows[n_val:])  # written last: its presence marks a finished set
    return out


def toy_how_made(size: int, thresholds: CannyThresholds) -> HowMade:
    return HowMade(
        detector="canny",
        low_threshold=thresholds.low,
        high_threshold=thresholds.high,
        size=size,
        crop="none",
        jpeg_quality=None,
        captioner="toy palette",
        caption_model=None,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("training/toy"), help="output folder")
    parser.add_argument("--n", type=int, default=2000, help="number of pairs")
    parser.add_argument("--size", type=int, default=64, help="image side, a multiple of 64")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--low-threshold", type=int, default=DEFAULT_THRESHOLDS.low, help="canny low threshold")
    parser.add_argument("--high-threshold", type=int, default=DEFAULT_THRESHOLDS.high, help="canny high threshold")
    args = parser.parse_args(argv)
    thresholds = CannyThresholds(args.low_threshold, args.high_threshold)
    write_toy_dataset(args.out, n=args.n, size=args.size, seed=args.seed, thresholds=thresholds)
    print(f"wrote {args.n} toy pairs to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
