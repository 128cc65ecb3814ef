r"""Does CuteNet run on this GPU, and how fast will a run be? One command before a long job.

    .venv/bin/python -m bench.gpu_check                       # SD1.5 architecture at 512², on CUDA
    .venv/bin/python -m bench.gpu_check --json gpu_check.json # the same table as JSON
    .venv/bin/python -m bench.gpu_check --config models/cldm_tiny.yaml --device cpu   # every path but the kernels

Random weights throughout (nothing is downloaded): correctness and cost do not depend on the values.
It prints one table:

- environment: the device, its memory, and the torch, CUDA and driver versions;
- correctness on the device: eps against the same model on the CPU (fp32, TF32 off), the zero-conv
  identity, bf16-mixed against fp32 (eps, and one training step's ControlNet gradients);
- training: bf16-mixed with the frozen parts in bf16, gradient checkpointing on and off, at `--batch`
  and at the largest batch that fits (found by doubling): s/step, samples/s, peak memory, TFLOP/s (FLOPs
  of one step from `torch.utils.flop_counter`) and MFU against the device's dense bf16 peak;
- sampling: DDIM with classifier-free guidance, s/image (fp16 on CUDA, bf16 on CPU);
- the real script: `tutorial_train.py` on generated toy pairs from a fresh init (and with DDP on two
  GPUs where there are two).

It exits 1 when a correctness check or the script fails.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from bench.gpu_check.common import Row, default_plan
from bench.gpu_check.correctness import correctness
from bench.gpu_check.environment import environment
from bench.gpu_check.sampling_cost import sampling
from bench.gpu_check.script_run import script
from bench.gpu_check.training_cost import training
from ldm.flags import HelpFormatter


def format_table(rows: list[Row]) -> str:
    width = max(len(r.name) for r in rows)
    lines, section = [], None
    for r in rows:
        if r.section != section:
            section = r.section
            lines.append(f"\n[{section}]")
        verdict = "" if r.passed is None else ("  ok" if r.passed else "  FAILED")
        lines.append(f"  {r.name:<{width}}  {r.value}{verdict}")
    return "\n".join(lines).lstrip("\n")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.gpu_check", description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--config", default="models/cldm_v15.yaml", help="model config (random weights)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=("cuda", "cpu"))
    p.add_argument("--resolution", type=int, help="image side (default 512 on CUDA, 64 on CPU)")
    p.add_argument("--batch", type=int, help="training batch (default 8 on CUDA, 2 on CPU)")
    p.add_argument("--max-batch", type=int, help="stop doubling the batch here (default 512 on CUDA, 4 on CPU)")
    p.add_argument("--steps", type=int, help="timed training steps per row, after one warm-up")
    p.add_argument("--sample-batch", type=int, help="images per sampling call (default 4 on CUDA, 1 on CPU)")
    p.add_argument("--sample-steps", type=int, default=20, help="DDIM steps")
    p.add_argument("--script-steps", type=int, help="steps of the tutorial_train.py run (default 20 on CUDA)")
    p.add_argument("--peak-tflops", type=float, help="the device's dense bf16 peak, for MFU (known GPUs: built in)")
    p.add_argument("--compile", action="store_true", help="add training rows with torch.compile")
    p.add_argument("--skip", nargs="*", default=[], choices=("correctness", "training", "sampling", "script"))
    p.add_argument("--json", type=Path, help="write the table as JSON here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: no CUDA device is visible to torch; use --device cpu for a check of the code paths")
        return 2
    plan = default_plan(args)
    if plan.resolution % 64:
        print(f"error: --resolution must be a multiple of 64, got {plan.resolution}")
        return 2
    started = time.perf_counter()
    rows = environment(plan)
    stages: list[tuple[str, Callable[[], list[Row]]]] = [
        ("correctness", lambda: correctness(plan)),
        ("training", lambda: training(plan)),
        ("sampling", lambda: sampling(plan)),
    ]
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as work:
        stages.append(("script", lambda: script(plan, Path(work))))
        for name, run in stages:
            if name not in args.skip:
                rows += run()
                print(format_table([r for r in rows if r.section == name]), flush=True)
    elapsed = time.perf_counter() - started
    print()
    print(format_table(rows))
    failed = [r for r in rows if r.passed is False]
    print(f"\n{len(failed)} check(s) failed" if failed else "\nall checks passed", f"in {elapsed:.0f} s")
    if args.json is not None:
        report = {
            "plan": dataclasses.asdict(plan),
            "seconds": elapsed,
            "rows": [dataclasses.asdict(r) for r in rows],
            "failed": len(failed),
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
        print(f"wrote {args.json}")
    return 1 if failed else 0
