"""DDIM sampling (Song et al. 2021, eq. 12) with classifier-free guidance (Ho & Salimans 2022)."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from typing import Any

import torch

logger = logging.getLogger(__name__)

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x B×C×H×W, t B) → ε B×C×H×W


def ddim_timesteps(num_steps: int, num_train_steps: int) -> torch.Tensor:
    """Uniform discretisation with the reference's +1 offset: 1, 1+c, 1+2c, … with c = T // S.

    Where the offset would reach T (e.g. S = 3: 1, 334, 667, 1000) the reference fails with an index
    error; that last step is dropped here instead.
    """
    if not 1 <= num_steps <= num_train_steps:
        raise ValueError(f"DDIM steps must be in [1, {num_train_steps}], got {num_steps}")
    steps = torch.arange(0, num_train_steps, num_train_steps // num_steps) + 1
    return steps[steps < num_train_steps]


def ddim_sample(
    denoise: Denoiser,
    x_T: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    *,
    steps: int,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    callback: Callable[[int], None] | None = None,
    log_every_t: int = 100,
) -> tuple[torch.Tensor, dict[str, list[torch.Tensor]]]:
    """Run DDIM from x_T; returns (x_0, {'x_inter': [...], 'pred_x0': [...]})."""
    if not 0.0 <= eta <= 1.0:  # also refuses NaN; above 1 the variance term takes the square root of a negative
        raise ValueError(f"eta must be in [0, 1] (0: deterministic DDIM, 1: DDPM-like), got {eta}")
    timesteps = ddim_timesteps(steps, alphas_cumprod.shape[0]).to(alphas_cumprod.device)
    acp = alphas_cumprod.float()
    alphas = acp[timesteps]  # S
    alphas_prev = torch.cat([acp[:1], acp[timesteps[:-1]]])  # S
    # σ in float64 from the float32 ᾱ values, then rounded once (as the reference computes it).
    a64, ap64 = alphas.double(), alphas_prev.double()
    sigmas = (eta * ((1 - ap64) / (1 - a64) * (1 - a64 / ap64)).sqrt()).float()  # S
    x = x_T
    intermediates: dict[str, list[torch.Tensor]] = {"x_inter": [x_T], "pred_x0": [x_T]}
    n = len(timesteps)
    for i in range(n):
        index = n - 1 - i
        t = torch.full((x.shape[0],), int(timesteps[index]), device=x.device, dtype=torch.long)  # B
        eps = denoise(x, t)  # B×C×H×W
        a_t, a_prev, sigma_t = alphas[index], alphas_prev[index], sigmas[index]
        pred_x0 = (x - (1.0 - a_t).sqrt() * eps) / a_t.sqrt()  # B×C×H×W
        dir_xt = (1.0 - a_prev - sigma_t**2).sqrt() * eps  # B×C×H×W
        x = a_prev.sqrt() * pred_x0 + dir_xt
        if eta > 0:
            noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            x = x + sigma_t * noise
        if callback is not None:
            callback(i)
        if index % log_every_t == 0 or index == n - 1:
            intermediates["x_inter"].append(x)
            intermediates["pred_x0"].append(pred_x0)
    return x, intermediates


def guided_denoiser(
    apply_model: Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor], cond: Any, uncond: Any | None, scale: float
) -> Denoiser:
    """ε for classifier-free guidance: ε_u + s(ε_c − ε_u); scale 1 (or no uncond) is the conditional ε.

    The two branches run as one batch (what diffusers calls the CFG batch) when their conditionings stack; a
    hint present in one branch only (guess mode) runs them one after the other.
    """
    if not math.isfinite(scale):
        raise ValueError(f"the guidance scale must be a finite number, got {scale}")
    if uncond is None or scale == 1.0:
        return lambda x, t: apply_model(x, t, cond)
    both = _stacked(cond, uncond)

    def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if both is not None:
            eps_cond, eps_uncond = apply_model(torch.cat([x, x]), torch.cat([t, t]), both).chunk(2)  # B×C×H×W each
        else:
            eps_cond, eps_uncond = apply_model(x, t, cond), apply_model(x, t, uncond)
        return eps_uncond + scale * (eps_cond - eps_uncond)

    return denoise


def _stacked(cond: Any, uncond: Any) -> dict[str, list[torch.Tensor] | None] | None:
    """The conditional and unconditional conditioning as one batch (conditional first), or None where their
    entries differ in kind or shape."""
    if not isinstance(cond, Mapping) or not isinstance(uncond, Mapping) or cond.keys() != uncond.keys():
        return None
    both: dict[str, list[torch.Tensor] | None] = {}
    for key, c in cond.items():
        u = uncond[key]
        if c is None and u is None:
            both[key] = None
        elif not (isinstance(c, list | tuple) and isinstance(u, list | tuple) and len(c) == len(u)) or any(
            not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor) or a.shape != b.shape
            for a, b in zip(c, u)
        ):
            return None
        else:
            both[key] = [torch.cat([a, b]) for a, b in zip(c, u)]  # 2B×…
    return both


class DDIMSampler:
    """The original repo's sampler interface over `ddim_sample`, for any model with `apply_model` and `alphas_cumprod`."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model

    @torch.no_grad()
    def sample(
        self,
        S: int,
        batch_size: int,
        shape: tuple[int, int, int],
        conditioning: Mapping[str, Any],
        verbose: bool = False,
        eta: float = 0.0,
        unconditional_guidance_scale: float = 1.0,
        unconditional_conditioning: Mapping[str, Any] | None = None,
        x_T: torch.Tensor | None = None,
        callback: Callable[[int], None] | None = None,
        generator: torch.Generator | None = None,
        log_every_t: int = 100,
    ) -> tuple[torch.Tensor, dict[str, list[torch.Tensor]]]:
        """S DDIM steps from x_T (or noise from `generator`) of shape batch_size×`shape`."""
        if len(shape) != 3:
            raise ValueError(f"shape must be (C, H, W) of the latents, got {shape}")
        acp = self.model.alphas_cumprod
        if x_T is None:
            x_T = torch.randn((batch_size, *shape), generator=generator, device=acp.device)  # B×C×H×W
        elif tuple(x_T.shape) != (batch_size, *shape):
            raise ValueError(f"x_T has shape {tuple(x_T.shape)}, expected {(batch_size, *shape)}")
        if verbose:
            logger.info("DDIM: %d steps, eta %.2f, guidance %.2f", S, eta, unconditional_guidance_scale)
        denoise = guided_denoiser(
            self.model.apply_model, conditioning, unconditional_conditioning, unconditional_guidance_scale
        )
        return ddim_sample(
            denoise, x_T, acp, steps=S, eta=eta, generator=generator, callback=callback, log_every_t=log_every_t
        )
