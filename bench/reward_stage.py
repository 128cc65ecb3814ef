r"""Does the reward stage push the control further: from one trained ControlNet, the same number of steps with the
reward and without it (the same learning rate, seeds, data and held-out evaluation), and the held-out scores
before and after.

    .venv/bin/python -m bench.reward_stage                      # make demo's ControlNet, 400 steps, seeds 0 1 2
    .venv/bin/python -m bench.reward_stage --control runs/toy/control.safetensors --steps 400 --lr 1e-4 \
        --reward-weight 1 --eval-every 100

Any further flags go to tutorial_train.py as they are, the same for both arms (the quickstart config, its data and
initial weights by default). Each run lives in OUT/ARM/seedS and resumes there; a finished run is only read again.
Both arms of a seed start from the same ControlNet (--control-from) and draw the same noise; the step-0 eval of
each run scores that ControlNet (before), its last eval the trained one (after). Printed per arm, mean over the
seeds: exact and 1-px edge F1, SSIM and colour accuracy before and after, and seconds per training step.
OUT/summary.json holds the same per run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from bench.convergence import ROOT, finished, run_logged, seconds_per_step
from ldm.flags import HelpFormatter
from ldm.util import write_text_atomically
from training.control_curve import read_curve

SCORES = {"edge_f1": "exact F1", "edge_f1_tolerant": "1-px F1", "ssim": "SSIM", "colour_accuracy": "colour"}


def arm_flags(arm: str, reward_weight: float) -> list[str]:
    return ["--reward-weight", str(reward_weight if arm == "reward" else 0.0)]


def result_of(arm: str, seed: int, folder: Path) -> dict:
    rows = read_curve(folder)
    before, after = rows[0], rows[-1]
    return {
        "arm": arm,
        "seed": seed,
        "steps": after["step"],
        **{f"{key}_before": float(before[key]) for key in SCORES},
        **{f"{key}_after": float(after[key]) for key in SCORES},
        "seconds_per_step": seconds_per_step(folder),
    }


def table(results: list[dict]) -> str:
    lines = [f"{'arm':<7} {'seeds':>5} " + " ".join(f"{name + ' before → after':>24}" for name in SCORES.values())]
    lines[0] += f" {'s/step':>7}"
    for arm in ("plain", "reward"):
        runs = [r for r in results if r["arm"] == arm]
        if not runs:
            continue
        cells = [
            f"{statistics.mean(r[f'{k}_before'] for r in runs):.3f} → {statistics.mean(r[f'{k}_after'] for r in runs):.3f}"
            for k in SCORES
        ]
        times = [r["seconds_per_step"] for r in runs if r["seconds_per_step"] is not None]
        lines.append(
            f"{arm:<7} {len(runs):>5} "
            + " ".join(f"{c:>24}" for c in cells)
            + f" {(f'{statistics.mean(times):.3f}' if times else '-'):>7}"
        )
    by_seed = {(r["arm"], r["seed"]): r["edge_f1_after"] for r in results}
    ratios = [
        by_seed[("reward", s)] / by_seed[("plain", s)] for a, s in by_seed if a == "plain" and ("reward", s) in by_seed
    ]
    if ratios:
        lines.append(f"exact F1 after, reward / plain, per seed: {', '.join(f'{x:.2f}' for x in ratios)}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--control", type=Path, default=ROOT / "runs/toy/control.safetensors", help="the start")
    parser.add_argument("--steps", type=int, default=400, help="training steps of each run")
    parser.add_argument("--reward-weight", type=float, default=1.0, help="λ of the reward arm")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "reward_stage", help="where the runs live")
    args, flags = parser.parse_known_args(argv)
    if not args.control.is_file():
        raise SystemExit(f"--control {args.control} does not exist: train one first (make demo), or name another")
    results = []
    for seed in args.seeds:
        for arm in ("plain", "reward"):
            folder = args.out / arm / f"seed{seed}"
            if not finished(folder, args.steps):
                print(f"training {arm}, seed {seed} in {folder}", flush=True)
                common = ["--control-from", str(args.control), "--max-steps", str(args.steps)]
                run_logged([*flags, *common, *arm_flags(arm, args.reward_weight)], seed, folder)
            results.append(result_of(arm, seed, folder))
    write_text_atomically(args.out / "summary.json", json.dumps(results, indent=1))
    print(f"from {args.control}, {args.steps} steps; flags: {' '.join(flags) or '(the config)'}; seeds {args.seeds}")
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
