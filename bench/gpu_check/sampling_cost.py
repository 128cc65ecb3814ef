"""Sampling cost: DDIM with classifier-free guidance, s/image."""

from __future__ import annotations

import time

import torch

from bench.gpu_check.common import PROMPT, Plan, Row, build, peak_memory_gib, random_hint, synchronize, wake_zero_inits
from cldm.sampling import sample


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
