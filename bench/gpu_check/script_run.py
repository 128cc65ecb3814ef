"""The real script: tutorial_train.py on generated toy pairs from a fresh init (DDP where there are two GPUs)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import torch

from bench.gpu_check.common import ROOT, Plan, Row
from training.data.toy_data import write_toy_dataset


def script(plan: Plan, work: Path) -> list[Row]:
    """`tutorial_train.py` itself, from a fresh init, on generated toy pairs at the plan's resolution."""
    section = "script"
    data = write_toy_dataset(work / "toy", n=max(4 * plan.batch, 8), size=plan.resolution, seed=0)
    runs = [1, 2] if plan.device == "cuda" and torch.cuda.device_count() >= 2 else [1]
    rows = []
    for devices in runs:
        command = [
            sys.executable,
            str(ROOT / "tutorial_train.py"),
            "--config",
            plan.config,
            "--data",
            str(data),
            "--init",
            "none",
            "--output",
            str(work / f"run_{devices}"),
            "--max-steps",
            str(plan.script_steps),
            "--batch-size",
            str(min(plan.batch, 4)),
            "--ckpt-every",
            str(plan.script_steps),
            "--logger-freq",
            str(10 * plan.script_steps),
            "--workers",
            "0",
            "--no-cache-latents",
        ]
        if plan.device == "cuda":
            command += ["--accelerator", "gpu", "--devices", str(devices), "--precision", "bf16-mixed"]
            command += ["--frozen-dtype", "bfloat16", "--checkpointing"]
        else:
            command += ["--accelerator", "cpu", "--devices", "1", "--precision", "32"]
        start = time.perf_counter()
        proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        ok = proc.returncode == 0 and (work / f"run_{devices}" / "control.safetensors").is_file()
        label = f"tutorial_train.py, {plan.script_steps} steps, {devices} device" + ("s (DDP)" if devices > 1 else "")
        value = f"exit {proc.returncode}, {seconds:.0f} s in all" + ("" if ok else f": {tail(proc)}")
        rows.append(Row(section, label, value, ok, {"exit_code": proc.returncode, "seconds": seconds}))
    return rows


def tail(proc: subprocess.CompletedProcess, lines: int = 3) -> str:
    return " | ".join((proc.stdout + proc.stderr).strip().splitlines()[-lines:])
