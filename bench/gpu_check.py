"""Does CuteNet run on this GPU, and how fast will a run be? One command before a long job.

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
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from cldm.loading import load_config
from cldm.sampling import sample
from ldm.flags import HelpFormatter
from training.run import instantiate_model
from training.settings import ModelOptions
from training.toy_data import write_toy_dataset

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "a photograph of a corgi on the grass"
# Dense bf16 tensor-core peaks from the vendors' datasheets, TFLOP/s; the first name found in the device's wins.
BF16_PEAK_TFLOPS = {
    "H200": 989.0,
    "H100 PCIe": 756.0,
    "H100": 989.0,
    "GH200": 989.0,
    "B200": 2250.0,
    "A100": 312.0,
    "A10G": 70.0,
    "A10": 125.0,
    "L40S": 362.0,
    "L40": 181.0,
    "L4": 121.0,
    "RTX 4090": 165.0,
    "RTX 3090": 71.0,
}
# Tolerances of the correctness checks, relative to max|eps|.
DEVICE_TOLERANCE = 1e-4
BF16_TOLERANCE = 5e-2
MIN_GRAD_COSINE = 0.99


@dataclass
class Row:
    """One line of the table: a figure, and for checks whether it passed."""

    section: str
    name: str
    value: str
    passed: bool | None = None
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Plan:
    config: str
    device: str
    resolution: int
    batch: int
    max_batch: int
    steps: int
    sample_batch: int
    sample_steps: int
    script_steps: int
    peak_tflops: float | None
    compile: bool


def default_plan(args: argparse.Namespace) -> Plan:
    """Full-size figures on CUDA; on CPU, sizes that finish in about a minute on the tiny config."""
    cuda = args.device == "cuda"
    return Plan(
        config=args.config,
        device=args.device,
        resolution=args.resolution or (512 if cuda else 64),
        batch=args.batch or (8 if cuda else 2),
        max_batch=args.max_batch or (512 if cuda else 4),
        steps=args.steps or (3 if cuda else 2),
        sample_batch=args.sample_batch or (4 if cuda else 1),
        sample_steps=args.sample_steps,
        script_steps=args.script_steps or (20 if cuda else 2),
        peak_tflops=args.peak_tflops,
        compile=args.compile,
    )


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def environment(plan: Plan) -> list[Row]:
    rows = [
        Row("environment", "torch", torch.__version__),
        Row("environment", "python", platform.python_version()),
    ]
    if plan.device == "cuda":
        props = torch.cuda.get_device_properties(0)
        rows += [
            Row("environment", "device", f"{torch.cuda.device_count()} x {props.name}"),
            Row("environment", "device memory", f"{props.total_memory / 1024**3:.1f} GiB"),
            Row("environment", "CUDA (torch build)", str(torch.version.cuda)),
            Row("environment", "driver", nvidia_driver()),
            Row("environment", "bf16 dense peak", peak_label(plan.peak_tflops or known_peak(props.name))),
        ]
    else:
        rows.append(Row("environment", "device", f"CPU, {torch.get_num_threads()} threads ({platform.machine()})"))
    return rows


def nvidia_driver() -> str:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown (nvidia-smi did not answer)"
    return out.stdout.strip().splitlines()[0]


def known_peak(device_name: str) -> float | None:
    return next((tflops for name, tflops in BF16_PEAK_TFLOPS.items() if name in device_name), None)


def peak_label(tflops: float | None) -> str:
    return f"{tflops:g} TFLOP/s" if tflops else "unknown: pass --peak-tflops for MFU"


def build(plan: Plan, **options: Any) -> torch.nn.Module:
    """The config's ControlLDM with random weights, with `options` (ModelOptions fields) applied, on the CPU."""
    config = load_config(plan.config)["model"]
    model_options = dataclasses.replace(ModelOptions.from_model_config(config, plan.config), **options)
    torch.manual_seed(0)
    return instantiate_model(model_options.applied_to(config, seed=0))


def wake_zero_inits(module: torch.nn.Module, seed: int = 1) -> None:
    """Give every zero-initialised convolution and linear layer (SD's output layers, the ControlNet's zero
    convolutions) torch's default random init, as in a trained model: with them at zero a fresh UNet predicts
    eps = 0 and no gradient reaches the ControlNet, and the checks would compare zeros."""
    torch.manual_seed(seed)
    for layer in module.modules():
        if isinstance(layer, torch.nn.Conv2d | torch.nn.Linear) and not layer.weight.any():
            layer.reset_parameters()


def random_hint(n: int, side: int, generator: torch.Generator) -> torch.Tensor:
    """A sparse random edge map in [0, 1], B×3×H×W."""
    return (torch.rand(n, 3, side, side, generator=generator) > 0.9).float()


def toy_batch(n: int, side: int) -> dict[str, Any]:
    """A training batch in the dataset's format: images in [−1, 1] and hints in [0, 1], B×H×W×3, and prompts."""
    generator = torch.Generator().manual_seed(0)
    return {
        "jpg": torch.rand(n, side, side, 3, generator=generator) * 2 - 1,
        "hint": random_hint(n, side, generator).permute(0, 2, 3, 1),
        "txt": [PROMPT] * n,
    }


def denoiser_inputs(model: torch.nn.Module, n: int, side: int, device: str) -> tuple[torch.Tensor, ...]:
    """Noisy latents B×4×h×w, timesteps B, hint B×3×H×W and context B×L×D for one denoiser call."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(n, model.channels, side // 8, side // 8, generator=generator)
    t = torch.linspace(50, 950, n).long()
    hint = random_hint(n, side, generator)
    with torch.no_grad():
        context = model.get_learned_conditioning([PROMPT] * n)
    return tuple(v.to(device) for v in (x, t, hint, context))


def eps(model: torch.nn.Module, inputs: tuple[torch.Tensor, ...], autocast: torch.dtype | None = None) -> torch.Tensor:
    x, t, hint, context = inputs
    device = x.device.type
    with torch.no_grad(), torch.autocast(device, dtype=autocast, enabled=autocast is not None):
        return model.apply_model(x, t, {"c_concat": [hint], "c_crossattn": [context]}).float()  # B×4×h×w


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.cpu() - want.cpu()).abs().max() / want.abs().max().clamp_min(1e-12))


@contextmanager
def tf32(enabled: bool) -> Iterator[None]:
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


def correctness(plan: Plan) -> list[Row]:
    section = "correctness"
    rows = []
    model = build(plan).eval()
    wake_zero_inits(model.model.diffusion_model)
    n, side = 2, plan.resolution
    # The zero-conv identity: a fresh ControlNet adds exactly nothing to the locked UNet.
    model.to(plan.device)
    inputs = denoiser_inputs(model, n, side, plan.device)
    x, t, _, context = inputs
    with tf32(False):
        controlled = eps(model, inputs)
        with torch.no_grad():
            plain = model.model.diffusion_model(x, t, context).float()  # B×4×h×w
    gap = float((controlled - plain).abs().max())
    rows.append(Row(section, "zero-conv identity: max|eps - plain UNet eps|", f"{gap:.1e}", gap == 0.0, {"gap": gap}))
    # The device against the CPU, fp32 with TF32 off, with the control path awake.
    wake_zero_inits(model.control_model)
    with tf32(False):
        full = eps(model, inputs)
    reference = eps(model.to("cpu"), tuple(v.cpu() for v in inputs))
    model.to(plan.device)
    err = relative_error(full, reference)
    rows.append(
        Row(
            section,
            f"{plan.device} vs CPU, fp32 (TF32 off): max|diff| / max|eps|"
            + (" (the same device: the code path only)" if plan.device == "cpu" else ""),
            f"{err:.1e} (limit {DEVICE_TOLERANCE:g})",
            err <= DEVICE_TOLERANCE,
            {"relative_error": err},
        )
    )
    low = eps(model, inputs, autocast=torch.bfloat16)
    err = relative_error(low, full)
    rows.append(
        Row(
            section,
            "bf16-mixed vs fp32: max|diff| / max|eps|",
            f"{err:.1e} (limit {BF16_TOLERANCE:g})",
            err <= BF16_TOLERANCE,
            {"relative_error": err},
        )
    )
    cosine = gradient_cosine(model, toy_batch(n, side), plan.device)
    rows.append(
        Row(
            section,
            "ControlNet gradients, bf16-mixed vs fp32: cosine",
            f"{cosine:.4f} (min {MIN_GRAD_COSINE:g})",
            cosine >= MIN_GRAD_COSINE,
            {"cosine": cosine},
        )
    )
    return rows


def gradient_cosine(model: torch.nn.Module, batch: dict[str, Any], device: str) -> float:
    """Cosine similarity of one training step's ControlNet gradients in bf16-mixed and in fp32 (same noise)."""
    model.train()
    grads = []
    for dtype in (None, torch.bfloat16):
        model.zero_grad(set_to_none=True)
        with tf32(False), torch.autocast(torch.device(device).type, dtype=dtype, enabled=dtype is not None):
            loss, _ = model.training_loss(batch, 0)
        loss.backward()
        grads.append(torch.cat([p.grad.float().flatten() for p in model.control_model.parameters()]))
    model.zero_grad(set_to_none=True)
    model.eval()
    return float(torch.nn.functional.cosine_similarity(grads[0], grads[1], dim=0))


def step_flops(model: torch.nn.Module, batch: dict[str, Any], autocast: Callable[[], Any]) -> int:
    """FLOPs of one training step's forward and backward (matrix products and convolutions)."""
    counter = FlopCounterMode(display=False)
    with counter:
        with autocast():
            loss, _ = model.training_loss(batch, 0)
        loss.backward()
    model.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


def peak_memory_gib(device: str) -> float | None:
    return torch.cuda.max_memory_allocated() / 1024**3 if device == "cuda" else None


def is_out_of_memory(err: BaseException) -> bool:
    return isinstance(err, torch.OutOfMemoryError) or "out of memory" in str(err).lower()


def time_training(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: dict[str, Any],
    plan: Plan,
    steps: int | None = None,
) -> tuple[float, float | None]:
    """Median seconds per optimizer step (after a warm-up step) and the peak memory of those steps;
    `steps=0` runs the warm-up step only (does it fit?) and returns its time."""

    def autocast() -> Any:
        return torch.autocast(torch.device(plan.device).type, dtype=torch.bfloat16, cache_enabled=False)

    def step() -> float:
        synchronize(plan.device)
        start = time.perf_counter()
        with autocast():
            loss, _ = model.training_loss(batch, 0)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        synchronize(plan.device)
        return time.perf_counter() - start

    if plan.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    first = step()
    times = sorted(step() for _ in range(plan.steps if steps is None else steps)) or [first]
    return times[len(times) // 2], peak_memory_gib(plan.device)


def training(plan: Plan) -> list[Row]:
    section = "training"
    rows = []
    peak = plan.peak_tflops or (known_peak(torch.cuda.get_device_name(0)) if plan.device == "cuda" else None)
    # Checkpointing off first: its model also gives the FLOPs of a step, without checkpointing's recomputation.
    variants = [(False, False), (True, False)] + ([(False, True), (True, True)] if plan.compile else [])
    flops_per_sample: int | None = None
    for checkpointing, compiled in variants:
        model = build(plan, frozen_dtype="bfloat16", checkpointing=checkpointing).to(plan.device).train()
        if flops_per_sample is None:
            flops_per_sample = step_flops(
                model, toy_batch(1, plan.resolution), lambda: torch.autocast(plan.device, dtype=torch.bfloat16)
            )
        if compiled:
            model.compile_networks()
        optimizer = model.configure_optimizers()
        label = f"bf16-mixed, frozen bf16, checkpointing {'on' if checkpointing else 'off'}" + (
            ", compiled" if compiled else ""
        )
        try:
            seconds, memory = time_training(model, optimizer, toy_batch(plan.batch, plan.resolution), plan)
        except (torch.OutOfMemoryError, RuntimeError) as err:
            if not is_out_of_memory(err):
                raise
            rows.append(Row(section, f"{label}, batch {plan.batch}", "out of memory", False))
        else:
            rows.append(training_row(section, label, plan.batch, seconds, memory, flops_per_sample, peak))
            largest = largest_batch(model, optimizer, plan)
            if largest > plan.batch:
                seconds, memory = time_training(model, optimizer, toy_batch(largest, plan.resolution), plan)
                row = training_row(section, label, largest, seconds, memory, flops_per_sample, peak)
                row.name += (
                    " (largest that fits)" if largest * 2 <= plan.max_batch else f" (--max-batch {plan.max_batch})"
                )
                rows.append(row)
        del model, optimizer
        if plan.device == "cuda":
            torch.cuda.empty_cache()
    return rows


def largest_batch(model: torch.nn.Module, optimizer: torch.optim.Optimizer, plan: Plan) -> int:
    """Double the batch from `plan.batch` while one training step fits (up to `plan.max_batch`)."""
    largest, batch_size = plan.batch, plan.batch * 2
    while batch_size <= plan.max_batch:
        try:
            time_training(model, optimizer, toy_batch(batch_size, plan.resolution), plan, steps=0)
        except (torch.OutOfMemoryError, RuntimeError) as err:
            if not is_out_of_memory(err):
                raise
            break
        finally:
            optimizer.zero_grad(set_to_none=True)
            if plan.device == "cuda":
                torch.cuda.empty_cache()
        largest, batch_size = batch_size, batch_size * 2
    return largest


def training_row(
    section: str,
    label: str,
    batch: int,
    seconds: float,
    memory: float | None,
    flops_per_sample: int,
    peak: float | None,
) -> Row:
    tflops = flops_per_sample * batch / seconds / 1e12
    mfu = tflops / peak if peak else None
    figures = [f"{seconds:.3f} s/step", f"{batch / seconds:.2f} samples/s"]
    figures.append(f"peak {memory:.1f} GiB" if memory is not None else "peak memory: CUDA only")
    figures.append(f"{tflops:.3g} TFLOP/s")
    figures.append(f"MFU {mfu:.1%}" if mfu is not None else "MFU: peak unknown")
    return Row(
        section,
        f"{label}, batch {batch}",
        ", ".join(figures),
        None,
        {
            "batch": batch,
            "seconds_per_step": seconds,
            "samples_per_second": batch / seconds,
            "peak_memory_gib": memory,
            "flops_per_sample": flops_per_sample,
            "tflops": tflops,
            "mfu": mfu,
        },
    )


def sampling(plan: Plan) -> list[Row]:
    section = "sampling"
    dtype = torch.float16 if plan.device == "cuda" else torch.bfloat16
    model = build(plan).eval()
    wake_zero_inits(model)
    model.to(plan.device)
    n, side = plan.sample_batch, plan.resolution
    hint = random_hint(n, side, torch.Generator().manual_seed(0)).to(plan.device)
    rows = []
    for low_vram in (False, True) if plan.device == "cuda" else (False,):

        def run(low_vram: bool = low_vram) -> torch.Tensor:
            return sample(
                model,
                hint,
                [PROMPT] * n,
                [""] * n,
                control_scales=[1.0] * model.control_model.num_outputs,
                steps=plan.sample_steps,
                guidance_scale=9.0,
                generator=torch.Generator(plan.device).manual_seed(0),
                low_vram=low_vram,
                autocast_dtype=dtype,
            )

        run()  # warm-up
        if plan.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        synchronize(plan.device)
        start = time.perf_counter()
        images = run()
        synchronize(plan.device)
        seconds = (time.perf_counter() - start) / n
        memory = peak_memory_gib(plan.device)
        finite = bool(torch.isfinite(images).all())
        label = f"{plan.sample_steps}-step DDIM + CFG, {str(dtype).split('.')[-1]}, batch {n}, {side}²"
        label += ", --low-vram" if low_vram else ""
        value = f"{seconds:.3f} s/image" + (f", peak {memory:.1f} GiB" if memory is not None else "")
        rows.append(Row(section, label, value, finite, {"seconds_per_image": seconds, "peak_memory_gib": memory}))
    if plan.device == "cuda":
        model.to("cpu")
        torch.cuda.empty_cache()
    return rows


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
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
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


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
