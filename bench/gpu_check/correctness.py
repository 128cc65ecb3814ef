"""Correctness on the device: eps against the CPU, the zero-conv identity, bf16-mixed against fp32."""

from __future__ import annotations

from typing import Any

import torch

from bench.gpu_check.common import (
    Plan,
    Row,
    build,
    denoiser_inputs,
    eps,
    relative_error,
    tf32,
    toy_batch,
    wake_zero_inits,
)

# Tolerances of the correctness checks, relative to max|eps|.
DEVICE_TOLERANCE = 1e-4


BF16_TOLERANCE = 5e-2


MIN_GRAD_COSINE = 0.99


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
