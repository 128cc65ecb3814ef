"""Latent diffusion: the DDPM forward process and ε-prediction loss in an autoencoder's latent space.

Ho et al. 2020 (DDPM) and Rombach et al. 2022 (LDM, §3.2). A plain module: `ControlLDM` adds the
Lightning training loop on top.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from ldm.models.diffusion.objectives import Objective
from ldm.modules.distributions.distributions import DiagonalGaussianDistribution
from ldm.util import instantiate_from_config

logger = logging.getLogger(__name__)

Cond = Mapping[str, Any]


# The buffers `register_schedule` derives from the config (timesteps, linear_start, linear_end). Checkpoints
# carry them too, but loading keeps the config's fp32 values: a file saved in bf16 rounds alphas_cumprod[1]
# to 1.0, and DDIM then divides 0 by 0.
SCHEDULE_BUFFERS = (
    "betas",
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
    "logvar",
)


def make_beta_schedule(timesteps: int, linear_start: float, linear_end: float) -> torch.Tensor:
    """SD's "linear" schedule: linear in √β, in float64."""
    return torch.linspace(linear_start**0.5, linear_end**0.5, timesteps, dtype=torch.float64) ** 2


def extract(values: torch.Tensor, t: torch.Tensor, ndim: int) -> torch.Tensor:
    """values[t] reshaped to B×1×…×1 for broadcasting over an `ndim`-D batch."""
    return values.gather(0, t).reshape(t.shape[0], *([1] * (ndim - 1)))


class DiffusionWrapper(nn.Module):
    """Holds the denoiser under the checkpoint name `model.diffusion_model`."""

    def __init__(self, diffusion_model: nn.Module) -> None:
        super().__init__()
        self.diffusion_model = diffusion_model


class LatentDiffusion(nn.Module):
    """ε-prediction diffusion over the latents of a frozen autoencoder, conditioned on frozen text features."""

    def __init__(
        self,
        *,
        unet_config: Mapping[str, Any],
        first_stage_config: Mapping[str, Any],
        cond_stage_config: Mapping[str, Any],
        first_stage_key: str = "jpg",
        cond_stage_key: str = "txt",
        timesteps: int = 1000,
        linear_start: float = 0.00085,
        linear_end: float = 0.012,
        scale_factor: float = 0.18215,
        image_size: int = 64,
        channels: int = 4,
        conditioning_key: str = "crossattn",
        cond_stage_trainable: bool = False,
        num_timesteps_cond: int = 1,
        use_ema: bool = False,
        log_every_t: int = 200,
        monitor: str | None = None,
        loss_weighting: str = "eps",
        timestep_sampling: str = "uniform",
        min_snr_gamma: float = 5.0,
    ) -> None:
        super().__init__()
        # The training objective (ldm/models/diffusion/objectives.py): checked before anything is built.
        self.objective = Objective(loss_weighting, timestep_sampling, min_snr_gamma)
        # These come from the public YAML files; only the values SD uses are supported.
        for name, value, allowed in (
            ("conditioning_key", conditioning_key, "crossattn"),
            ("cond_stage_trainable", cond_stage_trainable, False),
            ("num_timesteps_cond", num_timesteps_cond, 1),
            ("use_ema", use_ema, False),
        ):
            if value != allowed:
                raise ValueError(f"{name}={value!r} is not supported; CuteNet needs {name}: {allowed!r}")
        if not isinstance(log_every_t, int) or log_every_t < 1:
            raise ValueError(f"log_every_t must be a positive int, got {log_every_t!r}")
        if monitor is not None and not isinstance(monitor, str):
            raise ValueError(f"monitor must be a metric name or None, got {monitor!r}")
        if not 0 < linear_start < linear_end < 1:
            raise ValueError(f"need 0 < linear_start < linear_end < 1, got {linear_start}, {linear_end}")
        if not isinstance(timesteps, int) or timesteps < 2:
            raise ValueError(f"timesteps must be an int >= 2, got {timesteps!r}")
        if scale_factor <= 0:
            raise ValueError(f"scale_factor must be positive, got {scale_factor}")
        self.first_stage_key = first_stage_key
        self.cond_stage_key = cond_stage_key
        self.image_size = image_size
        self.linear_start, self.linear_end = linear_start, linear_end  # the schedule, as a scheduler config says it
        self.channels = channels
        self.scale_factor = scale_factor
        self.log_every_t = log_every_t
        self.model = DiffusionWrapper(instantiate_from_config(unet_config))
        self.first_stage_model = instantiate_from_config(first_stage_config)
        self.cond_stage_model = instantiate_from_config(cond_stage_config)
        for frozen in (self.first_stage_model, self.cond_stage_model):
            frozen.requires_grad_(False)
            frozen.eval()
        self.register_schedule(timesteps, linear_start, linear_end)

    def register_schedule(self, timesteps: int, linear_start: float, linear_end: float) -> None:
        """The DDPM schedule buffers, computed in float64 and stored in float32 (the checkpoint format)."""
        betas = make_beta_schedule(timesteps, linear_start, linear_end)
        alphas = 1.0 - betas
        acp = torch.cumprod(alphas, dim=0)
        acp_prev = torch.cat([torch.ones(1, dtype=torch.float64), acp[:-1]])
        self.num_timesteps = timesteps
        posterior_variance = betas * (1.0 - acp_prev) / (1.0 - acp)
        buffers = {
            "betas": betas,
            "alphas_cumprod": acp,
            "alphas_cumprod_prev": acp_prev,
            "sqrt_alphas_cumprod": acp.sqrt(),
            "sqrt_one_minus_alphas_cumprod": (1.0 - acp).sqrt(),
            "log_one_minus_alphas_cumprod": (1.0 - acp).log(),
            "sqrt_recip_alphas_cumprod": (1.0 / acp).sqrt(),
            "sqrt_recipm1_alphas_cumprod": (1.0 / acp - 1).sqrt(),
            "posterior_variance": posterior_variance,
            "posterior_log_variance_clipped": posterior_variance.clamp(min=1e-20).log(),
            "posterior_mean_coef1": betas * acp_prev.sqrt() / (1.0 - acp),
            "posterior_mean_coef2": (1.0 - acp_prev) * alphas.sqrt() / (1.0 - acp),
        }
        assert set(buffers) | {"logvar"} == set(SCHEDULE_BUFFERS)
        device = next(self.parameters()).device
        for name, value in buffers.items():
            self.register_buffer(name, value.to(device=device, dtype=torch.float32))
        # Per-timestep log-variance of the loss weighting; zeros, saved in ControlNet checkpoints.
        self.register_buffer("logvar", torch.zeros(timesteps, device=device))

    @property
    def device(self) -> torch.device:
        return self.betas.device

    def q_sample(self, x_start: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Diffuse x_0 to x_t: √ᾱ_t x_0 + √(1−ᾱ_t) ε."""
        return (
            extract(self.sqrt_alphas_cumprod, t, x_start.ndim) * x_start
            + extract(self.sqrt_one_minus_alphas_cumprod, t, x_start.ndim) * noise
        )  # B×C×H×W

    def apply_model(self, x_noisy: torch.Tensor, t: torch.Tensor, cond: Cond) -> torch.Tensor:
        context = torch.cat(list(cond["c_crossattn"]), dim=1)  # B×L×D
        return self.model.diffusion_model(x_noisy, t, context)  # B×C×H×W

    def predict_start(self, x_noisy: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """The x_0 that x_t and ε imply, in one step: (x_t − √(1−ᾱ_t) ε) / √ᾱ_t."""
        return (
            extract(self.sqrt_recip_alphas_cumprod, t, x_noisy.ndim) * x_noisy
            - extract(self.sqrt_recipm1_alphas_cumprod, t, x_noisy.ndim) * eps
        )  # B×C×H×W

    def p_losses(
        self, x_start: torch.Tensor, cond: Cond, t: torch.Tensor, noise: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss of predicting the noise of x_0 diffused to t (`eps_loss`)."""
        noise = torch.randn_like(x_start) if noise is None else noise
        x_noisy = self.q_sample(x_start, t, noise)  # B×C×H×W
        return self.eps_loss(self.apply_model(x_noisy, t, cond), noise, t)

    def eps_loss(
        self, eps: torch.Tensor, noise: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """ε-prediction MSE weighted by the objective's w_t (1 for `eps`), then by exp(−logvar_t) + logvar_t as the
        reference (logvar is 0 for SD). `loss_simple` is the unweighted ε-MSE, comparable across objectives."""
        loss_simple = F.mse_loss(eps.float(), noise.float(), reduction="none").mean(dim=[1, 2, 3])  # B
        weighted = loss_simple
        if self.objective.loss_weighting != "eps":
            weighted = self.objective.weights(self.alphas_cumprod, t) * loss_simple  # B
        logvar_t = self.logvar[t]  # B
        loss = (weighted / torch.exp(logvar_t) + logvar_t).mean()
        prefix = "train" if self.training else "val"
        return loss, {f"{prefix}/loss_simple": loss_simple.mean().detach(), f"{prefix}/loss": loss.detach()}

    @torch.no_grad()
    def encode_first_stage(self, x: torch.Tensor) -> DiagonalGaussianDistribution:
        return self.first_stage_model.encode(x)

    def get_first_stage_encoding(
        self, posterior: DiagonalGaussianDistribution | torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        z = posterior.sample(generator) if isinstance(posterior, DiagonalGaussianDistribution) else posterior
        return self.scale_factor * z  # B×C×H×W

    @torch.no_grad()
    def decode_first_stage(self, z: torch.Tensor) -> torch.Tensor:
        return self.first_stage_model.decode(z / self.scale_factor)  # B×3×8H×8W

    def get_learned_conditioning(self, prompts: Sequence[str]) -> torch.Tensor:
        with torch.no_grad():
            return self.cond_stage_model.encode(list(prompts))  # B×L×D

    def image_to_latent(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """B×3×H×W in [−1, 1] → scaled latents B×C×H/f×W/f (a posterior sample, as in training)."""
        return self.get_first_stage_encoding(self.encode_first_stage(images), generator).detach()

    def get_input(
        self, batch: Mapping[str, Any], k: str, bs: int | None = None, *, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, Cond]:
        """Unpack a batch: images (B×H×W×3 in [−1, 1]) → latents, prompts → context.

        A batch from the latent cache carries `moments` (the VAE posterior) and `context` instead.
        """
        if "moments" in batch and "context" in batch:
            moments, context = batch["moments"], batch["context"]
            moments, context = (moments, context) if bs is None else (moments[:bs], context[:bs])
            posterior = DiagonalGaussianDistribution(moments.to(self.device).float())
            return self.get_first_stage_encoding(posterior, generator), {"c_crossattn": [context.to(self.device)]}
        x = batch_images(batch, k, low=-1.0, high=1.0)
        x = (x if bs is None else x[:bs]).to(self.device)
        prompts = batch[self.cond_stage_key]
        if isinstance(prompts, str) or not isinstance(prompts, Sequence):
            raise TypeError(f"batch[{self.cond_stage_key!r}] must be a list of prompts, got {type(prompts).__name__}")
        prompts = list(prompts if bs is None else prompts[:bs])
        z = self.image_to_latent(x, generator)  # B×C×H/f×W/f
        return z, {"c_crossattn": [self.get_learned_conditioning(prompts)]}


def batch_images(batch: Mapping[str, Any], key: str, *, low: float, high: float) -> torch.Tensor:
    """batch[key] B×H×W×C (or B×H×W) float in [low, high] → B×C×H×W float32, with a clear error for a wrong
    shape or type. The values are not read here (a device sync per key per step): the datasets make them in
    range by construction, and the pre-flight check has decoded every image."""
    if key not in batch:
        raise KeyError(f"batch has no {key!r} entry (keys: {sorted(batch)})")
    x = batch[key]
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"batch[{key!r}] must be a tensor, got {type(x).__name__}")
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4:
        raise ValueError(f"batch[{key!r}] must be B×H×W×C, got shape {tuple(x.shape)}")
    return rearrange(x.float(), "b h w c -> b c h w").contiguous()  # B×C×H×W
