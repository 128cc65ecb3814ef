r"""Which training objective takes control soonest: the quickstart recipe once per arm and seed, read from each
run's control curve.

    .venv/bin/python -m bench.convergence                                   # 5 arms × 3 seeds of the toy quickstart
    .venv/bin/python -m bench.convergence --arms eps-uniform x0-cubic --seeds 0 1 2 3
    .venv/bin/python -m bench.convergence --out runs/convergence_600 --max-steps 600 --eval-every 100

An arm is `WEIGHTING-SAMPLING` (--loss-weighting, --timestep-sampling: eps, x0, min-snr × uniform, cubic). Any
further flags go to tutorial_train.py as they are, the same for every arm. Every arm of one seed starts from the
same initial weights (OUT/init-seedS.safetensors) and reads the same data and held-out pairs. Each run lives in
OUT/ARM/seedS and resumes there, so the benchmark goes on where it stopped; a finished run is only read again.

Printed per arm, over its seeds: the onset step (median and range; `-` where the control never took hold), the
mAUCC (the area under the exact edge-F1 curve from step 0, where the F1 is the strength-0 baseline's, to the last
step, divided by that step: the run's mean F1), the final and best exact F1 (mean), and the seconds a training
step took (mean, eval time left out). OUT/summary.json holds the same per run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from evaluation.onset import find_onset
from ldm.flags import HelpFormatter
from ldm.models.diffusion.objectives import LOSS_WEIGHTINGS, TIMESTEP_SAMPLINGS
from ldm.util import write_text_atomically
from training.control_curve import BASELINE_FILE, read_curve

ROOT = Path(__file__).resolve().parents[1]
ARMS = ("eps-uniform", "x0-uniform", "min-snr-uniform", "eps-cubic", "x0-cubic")
TIMING_FILE = "bench_timing.json"  # the wall time of each segment this benchmark ran, and the steps it trained


@dataclass
class RunResult:
    arm: str
    seed: int
    steps: int
    onset: int | None
    maucc: float
    final_f1: float
    best_f1: float
    seconds_per_step: float | None


def split_arm(arm: str) -> tuple[str, str]:
    weighting, _, sampling = arm.rpartition("-")
    if weighting not in LOSS_WEIGHTINGS or sampling not in TIMESTEP_SAMPLINGS:
        raise SystemExit(f"arm {arm!r}: write WEIGHTING-SAMPLING, of {LOSS_WEIGHTINGS} and {TIMESTEP_SAMPLINGS}")
    return weighting, sampling


def maucc(steps: list[int], f1: list[float], baseline: float) -> float:
    """The mean exact F1 over the run: the trapezoid area under (0, baseline), (step, F1)... over the last step."""
    xs, ys = [0, *steps], [baseline, *f1]
    area = sum((xs[i + 1] - xs[i]) * (ys[i] + ys[i + 1]) / 2 for i in range(len(xs) - 1))
    return area / xs[-1]


def run_one(arm: str, seed: int, out: Path, flags: list[str], init: Path | None) -> None:
    """Train (or go on with) one run of an arm."""
    weighting, sampling = split_arm(arm)
    folder = out / arm / f"seed{seed}"
    objective = ["--loss-weighting", weighting, "--timestep-sampling", sampling]
    run_logged([*flags, "--init", str(init or out / f"init-seed{seed}.safetensors"), *objective], seed, folder)


def run_logged(flags: list[str], seed: int, folder: Path) -> None:
    """tutorial_train.py with `flags` for the run in `folder` (resumed where it stopped), its output appended to
    folder/bench.log, and the wall time, eval time and steps of this segment to its timing file."""
    folder.mkdir(parents=True, exist_ok=True)
    before = max((r["step"] for r in read_curve(folder)), default=0)
    command = [
        sys.executable,
        str(ROOT / "tutorial_train.py"),
        *flags,
        "--seed",
        str(seed),
        "--output",
        str(folder),
        "--logger",
        "csv",
        "--resume-from",
        "auto",
    ]
    start = time.perf_counter()
    with open(folder / "bench.log", "a") as log:
        code = subprocess.run(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, check=False).returncode
    wall = time.perf_counter() - start
    if code != 0:
        raise SystemExit(f"{folder}: tutorial_train.py exited with {code}; see {folder / 'bench.log'}")
    rows = read_curve(folder)
    timing_path = folder / TIMING_FILE
    timing = json.loads(timing_path.read_text()) if timing_path.is_file() else {"segments": []}
    evals = sum(r["seconds"] for r in rows if r["step"] > before)
    timing["segments"].append({"wall_s": wall, "eval_s": evals, "steps": rows[-1]["step"] - before if rows else 0})
    write_text_atomically(timing_path, json.dumps(timing, indent=1))


def seconds_per_step(folder: Path) -> float | None:
    """Training seconds a step over the benchmark's segments of a run (eval time left out); the wall time includes
    each segment's start-up (model build, data check), so a short run overstates it."""
    timing_path = folder / TIMING_FILE
    if not timing_path.is_file():
        return None
    segments = json.loads(timing_path.read_text())["segments"]
    trained = sum(s["steps"] for s in segments)
    return sum(s["wall_s"] - s["eval_s"] for s in segments) / trained if trained else None


def finished(folder: Path, steps: int | None) -> bool:
    rows = read_curve(folder)
    return (folder / "control.safetensors").is_file() and bool(rows) and (steps is None or rows[-1]["step"] >= steps)


def result_of(arm: str, seed: int, folder: Path) -> RunResult:
    rows = read_curve(folder)
    baseline = json.loads((folder / BASELINE_FILE).read_text())["scores"]["edge_f1"]
    steps, f1 = [r["step"] for r in rows], [r["edge_f1"] for r in rows]
    return RunResult(
        arm,
        seed,
        steps[-1],
        find_onset(steps, f1, baseline),
        maucc(steps, f1, baseline),
        f1[-1],
        max(f1),
        seconds_per_step(folder),
    )


def table(results: list[RunResult], arms: list[str]) -> str:
    lines = [
        f"{'arm':<18} {'seeds':>5} {'onset median (range)':>22} {'mAUCC (range)':>22} {'final F1':>9} "
        f"{'best F1':>8} {'s/step':>7}"
    ]
    for arm in arms:
        runs = [r for r in results if r.arm == arm]
        if not runs:
            continue
        onsets = [r.onset for r in runs]
        held = sorted(o for o in onsets if o is not None)
        onset = (
            f"{statistics.median([o if o is not None else float('inf') for o in onsets]):.0f} ({held[0]}–{held[-1]})"
            if held
            else "-"
        )
        if len(held) < len(onsets):
            onset += f", {len(onsets) - len(held)} none"
        aucs = [r.maucc for r in runs]
        times = [r.seconds_per_step for r in runs if r.seconds_per_step is not None]
        lines.append(
            f"{arm:<18} {len(runs):>5} {onset:>22} "
            f"{f'{statistics.mean(aucs):.3f} ({min(aucs):.3f}–{max(aucs):.3f})':>22} "
            f"{statistics.mean(r.final_f1 for r in runs):>9.3f} {statistics.mean(r.best_f1 for r in runs):>8.3f} "
            f"{(f'{statistics.mean(times):.3f}' if times else '-'):>7}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--arms", nargs="+", default=list(ARMS), help="WEIGHTING-SAMPLING arms")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "convergence", help="where the runs live")
    parser.add_argument("--max-steps", type=int, help="tutorial_train.py's --max-steps (default: the config's)")
    parser.add_argument(
        "--init", type=Path, help="initial weights of every run (default: OUT/init-seedS.safetensors, made per seed)"
    )
    args, flags = parser.parse_known_args(argv)
    for arm in args.arms:
        split_arm(arm)
    if args.max_steps is not None:
        flags += ["--max-steps", str(args.max_steps)]
    results = []
    for seed in args.seeds:
        for arm in args.arms:
            folder = args.out / arm / f"seed{seed}"
            if not finished(folder, args.max_steps):
                print(f"training {arm}, seed {seed} in {folder}", flush=True)
                run_one(arm, seed, args.out, flags, args.init)
            results.append(result_of(arm, seed, folder))
    write_text_atomically(args.out / "summary.json", json.dumps([asdict(r) for r in results], indent=1))
    print(f"flags: {' '.join(flags) or '(the config)'}; seeds {args.seeds}")
    print(table(results, args.arms))
    return 0


if __name__ == "__main__":
    sys.exit(main())
