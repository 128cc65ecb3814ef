"""Sampling from a ControlLDM with explicit control scales; the model itself is never changed.

DDIM (`ldm.models.diffusion.ddim.ddim_sample`) with classifier-free guidance. The hint stays in the
unconditional branch (the paper's CFG setting, §4) unless guess mode drops it (§4.3, "guess mode").
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import partial

import numpy as np
import torch
from einops import rearrange

from ldm.models.diffusion.ddim import ddim_sample, guided_denoiser


def guess_mode_scales(strength: float, n: int, *, guess_mode: bool) -> list[float]:
    """Guess mode: strength × 0.825^(n−1−i), deep residuals strongest; else strength everywhere."""
    return [strength * 0.825 ** float(n - 1 - i) for i in range(n)] if guess_mode else [strength] * n


def hint_from_edges(edges: np.ndarray, n: int, device: torch.device) -> torch.Tensor:
    """uint8 H×W×3 edge map (white edges on black) → the hint B×3×H×W in [0, 1], repeated `n` times."""
    hint = torch.from_numpy(edges.copy()).float().to(device) / 255.0  # H×W×3
    return rearrange(torch.stack([hint] * n), "b h w c -> b c h w")  # B×3×8H×8W


def images_to_uint8(images: torch.Tensor) -> list[np.ndarray]:
    """B×3×H×W in [−1, 1] → B uint8 H×W×3 images."""
    x = rearrange(images.float(), "b c h w -> b h w c") * 127.5 + 127.5  # B×H×W×3
    return list(x.cpu().numpy().clip(0, 255).astype(np.uint8))


@torch.no_grad()
def sample(
    model: torch.nn.Module,
    hint: torch.Tensor,
    prompts: Sequence[str],
    negative_prompts: Sequence[str],
    *,
    control_scales: Sequence[float],
    steps: int,
    guidance_scale: float,
    eta: float = 0.0,
    hint_in_uncond: bool = True,
    generator: torch.Generator | None = None,
    x_T: torch.Tensor | None = None,
    callback: Callable[[int], None] | None = None,
    low_vram: bool = False,
    autocast_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Decoded samples B×3×8H×8W in [−1, 1] for the hint B×3×8H×8W and B prompts.

    `control_scales` holds one scale per ControlNet residual (see `guess_mode_scales`); all zeros is the
    base model with its control off. `x_T` (B×C×H×W), when given, is the starting noise instead of a draw from
    `generator`: fixed noise per sample, whatever batch it lands in. `low_vram` keeps only the running parts on
    the compute device.
    """
    n = hint.shape[0]
    if not all(math.isfinite(c) for c in control_scales):
        raise ValueError(f"control scales must be finite numbers, got {list(control_scales)}")
    if len(prompts) != n or len(negative_prompts) != n:
        raise ValueError(
            f"need one prompt and one negative prompt per hint ({n}), got {len(prompts)} and {len(negative_prompts)}"
        )
    device = hint.device
    if low_vram:
        model.low_vram_shift(is_diffusing=False)
    cond = {"c_concat": [hint], "c_crossattn": [model.get_learned_conditioning(list(prompts))]}
    uncond = {
        "c_concat": [hint] if hint_in_uncond else None,
        "c_crossattn": [model.get_learned_conditioning(list(negative_prompts))],
    }
    f = model.first_stage_model.downsample_factor
    shape = (n, model.channels, hint.shape[-2] // f, hint.shape[-1] // f)
    if low_vram:
        model.low_vram_shift(is_diffusing=True)
    with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        if x_T is None:
            x_T = torch.randn(shape, generator=generator, device=model.alphas_cumprod.device)  # B×C×H×W
        elif tuple(x_T.shape) != shape:
            raise ValueError(f"x_T must have the latent shape {shape}, got {tuple(x_T.shape)}")
        denoise = guided_denoiser(
            partial(model.apply_model, control_scales=list(control_scales)), cond, uncond, guidance_scale
        )
        latents, _ = ddim_sample(
            denoise, x_T, model.alphas_cumprod, steps=steps, eta=eta, generator=generator, callback=callback
        )  # B×C×H×W
        if low_vram:
            model.low_vram_shift(is_diffusing=False)
        return model.decode_first_stage(latents).float()  # B×3×8H×8W
