"""Training cost: s/step, samples/s, peak memory, TFLOP/s and MFU, at the batch asked and the largest that fits."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from bench.gpu_check.common import Plan, Row, build, is_out_of_memory, peak_memory_gib, synchronize, toy_batch
from bench.gpu_check.environment import known_peak


def step_flops(model: torch.nn.Module, batch: dict[str, Any], autocast: Callable[[], Any]) -> int:
    """FLOPs of one training step's forward and backward (matrix products and convolutions)."""
    counter = FlopCounterMode(display=False)
    with counter:
        with autocast():
            loss, _ = model.training_loss(batch, 0)
        loss.backward()
    model.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


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
