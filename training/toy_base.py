"""Pretrain the toy base model of the CPU quickstart: a tiny "Stable Diffusion" of the toy circles.

Two phases, as SD was made (Rombach et al. 2022, §3): a KL autoencoder learns to compress the images
(§3.1), then the UNet and text encoder learn ε-prediction in its latent space from the prompts alone
(§3.2). Both draw fresh circles from a seeded stream (`ToyStream`), so neither memorises a fixed set.
The result has SD's checkpoint layout, ready for `tool_add_control.py`.
"""

from __future__ import annotations

import copy
import inspect
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from annotator.util import read_rgb
from cldm.cldm import ControlLDM
from ldm.models.autoencoder import AutoencoderKL
from ldm.models.diffusion.ddpm import LatentDiffusion
from ldm.modules.distributions.distributions import DiagonalGaussianDistribution
from ldm.util import instantiate_from_config
from pairs.prompt_file import PROMPT_FILE, read_prompt_file
from training.data.toy_data import toy_example

logger = logging.getLogger(__name__)

LATENT_DIFFUSION = "ldm.models.diffusion.ddpm.LatentDiffusion"
PLAIN_UNET = "ldm.modules.diffusionmodules.openaimodel.UNetModel"
# ControlLDM's own constructor arguments, which a plain LatentDiffusion does not take.
CONTROL_ONLY_PARAMS = frozenset(
    name for name, p in inspect.signature(ControlLDM.__init__).parameters.items() if p.kind is p.KEYWORD_ONLY
) - frozenset(inspect.signature(LatentDiffusion.__init__).parameters)

Log = Callable[[str], None]


def base_model_config(control_config: Mapping[str, Any]) -> dict[str, Any]:
    """The plain LatentDiffusion config inside a ControlLDM config (what SD's v1-inference.yaml is to cldm_v15.yaml).

    The UNet is the plain `UNetModel` with the same parameters, so its keys are the controlled UNet's.
    """
    params = {k: copy.deepcopy(v) for k, v in control_config["params"].items() if k not in CONTROL_ONLY_PARAMS}
    params["unet_config"] = {"target": PLAIN_UNET, "params": copy.deepcopy(dict(params["unet_config"]["params"]))}
    return {"target": LATENT_DIFFUSION, "params": params}


def load_toy_images(folder: str | Path, prompt_file: str = PROMPT_FILE) -> tuple[torch.Tensor, list[str]]:
    """All targets of a prepared folder as N×3×H×W float32 in [−1, 1], and their prompts."""
    folder = Path(folder)
    rows = read_prompt_file(folder / prompt_file)
    images = [read_rgb(folder / row["target"]) for row in rows]  # H×W×3 each
    return _model_range(images), [row["prompt"] for row in rows]


def _model_range(images: list[np.ndarray]) -> torch.Tensor:
    """H×W×3 uint8 images → N×3×H×W float32 in [−1, 1], contiguous."""
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)  # N×3×H×W
    return (x.float() / 127.5 - 1.0).contiguous()


class ToyStream:
    """An endless, seeded stream of fresh toy circles: the same seed gives the same batches."""

    def __init__(self, size: int, seed: int) -> None:
        self.size = size
        self.rng = np.random.default_rng(seed)

    def batch(self, n: int) -> tuple[torch.Tensor, list[str]]:
        """n circles as N×3×H×W float32 in [−1, 1], with their prompts."""
        examples = [toy_example(self.rng, self.size) for _ in range(n)]
        return _model_range([target for target, _, _ in examples]), [prompt for _, _, prompt in examples]


def _image_gradients(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return x[..., 1:, :] - x[..., :-1, :], x[..., :, 1:] - x[..., :, :-1]  # B×3×(H−1)×W, B×3×H×(W−1)


def autoencoder_loss(
    ae: AutoencoderKL,
    x: torch.Tensor,
    *,
    kl_weight: float,
    edge_weight: float,
    mse_weight: float = 0.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """L1 reconstruction + L1 on image gradients (keeps edges sharp for canny) + MSE (pulls flat colours in:
    L1's gradient does not grow with the error) + a weak KL (SD uses 1e-6)."""
    recon, posterior = ae(x, generator=generator)  # B×3×H×W
    loss = F.l1_loss(recon, x) + mse_weight * F.mse_loss(recon, x)
    if edge_weight:
        loss = loss + edge_weight * sum(F.l1_loss(r, t) for r, t in zip(_image_gradients(recon), _image_gradients(x)))
    return loss + kl_weight * posterior.kl().mean() / x[0].numel()


@dataclass(frozen=True)
class PhaseSettings:
    """One optimisation phase: AdamW with a short warm-up and cosine decay."""

    steps: int
    batch_size: int
    lr: float
    seed: int = 0
    log_every: int = 100


def _schedule(optimizer: torch.optim.Optimizer, steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    return torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=[g["lr"] for g in optimizer.param_groups], total_steps=steps, pct_start=0.05
    )


def _run_phase(
    name: str,
    params: list[torch.nn.Parameter],
    loss_fn: Callable[[torch.Generator], torch.Tensor],
    s: PhaseSettings,
    log: Log,
) -> list[float]:
    """`s.steps` AdamW steps on loss_fn(generator), which draws its own batch; returns the loss per step."""
    optimizer = torch.optim.AdamW(params, lr=s.lr, weight_decay=0.0)
    schedule = _schedule(optimizer, s.steps)
    generator = torch.Generator().manual_seed(s.seed)
    losses, start = [], time.time()
    for step in range(1, s.steps + 1):
        loss = loss_fn(generator)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{name}: non-finite loss at step {step}; lower the learning rate")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        if step % s.log_every == 0 or step == s.steps:
            recent = np.mean(losses[-s.log_every :])
            log(f"{name} step {step}/{s.steps} loss {recent:.4f} ({time.time() - start:.0f} s)")
    return losses


class _Shuffled:
    """Batches of indices into a fixed set: a fresh permutation each pass."""

    def __init__(self, n_items: int, batch_size: int) -> None:
        if batch_size > n_items:
            raise ValueError(f"batch size {batch_size} exceeds the {n_items} items to draw from")
        self.n_items, self.batch_size, self.order, self.cursor = n_items, batch_size, None, n_items

    def __call__(self, generator: torch.Generator) -> torch.Tensor:
        if self.cursor + self.batch_size > self.n_items:
            self.order, self.cursor = torch.randperm(self.n_items, generator=generator), 0
        idx = self.order[self.cursor : self.cursor + self.batch_size]
        self.cursor += self.batch_size
        return idx


def start_with_small_posterior_variance(ae: AutoencoderKL, logvar: float = -12.0) -> None:
    """Set the bias of the log-variance half of `quant_conv` so a fresh encoder's posterior is nearly a point.

    At the default init the posterior std is about 1, and with SD's tiny KL weight the encoder takes
    thousands of steps to shrink it; until then the sampled latents blur every reconstruction.
    """
    with torch.no_grad():
        ae.quant_conv.bias[ae.quant_conv.out_channels // 2 :] = logvar


def train_autoencoder(
    ae: AutoencoderKL,
    images: torch.Tensor | ToyStream,
    s: PhaseSettings,
    *,
    kl_weight: float = 1e-6,
    edge_weight: float = 1.0,
    mse_weight: float = 1.0,
    log: Log = logger.info,
) -> list[float]:
    """Fit the autoencoder to N×3×H×W images in [−1, 1], or to fresh batches of a `ToyStream`; leaves it
    frozen and in eval mode."""
    ae.requires_grad_(True).train()
    indices = None if isinstance(images, ToyStream) else _Shuffled(len(images), s.batch_size)

    def loss_fn(generator: torch.Generator) -> torch.Tensor:
        x = images.batch(s.batch_size)[0] if indices is None else images[indices(generator)]  # B×3×H×W
        return autoencoder_loss(
            ae, x, kl_weight=kl_weight, edge_weight=edge_weight, mse_weight=mse_weight, generator=generator
        )

    losses = _run_phase("autoencoder", list(ae.parameters()), loss_fn, s, log)
    ae.requires_grad_(False).eval()
    return losses


@torch.no_grad()
def encode_posteriors(ae: AutoencoderKL, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """The encoder's Gaussian parameters (mean ‖ log-variance) for N×3×H×W images: N×2C×h×w, computed once."""
    return torch.cat([ae.encode(images[i : i + batch_size]).parameters for i in range(0, len(images), batch_size)])


def latent_std(posteriors: torch.Tensor) -> float:
    """Standard deviation of the posterior means (N×2C×h×w input); SD's scale_factor is its inverse
    (0.18215 for SD's VAE)."""
    mean, _ = torch.chunk(posteriors, 2, dim=1)  # N×C×h×w
    return float(mean.std())


def train_denoiser(
    model: LatentDiffusion,
    posteriors: torch.Tensor,
    prompts: list[str],
    s: PhaseSettings,
    *,
    empty_prompt_p: float = 0.1,
    log: Log = logger.info,
) -> list[float]:
    """Fit the UNet and the text encoder (ε-prediction) on `encode_posteriors` of the images, with the
    autoencoder frozen; `empty_prompt_p` of the prompts are dropped so classifier-free guidance has an
    unconditional model to push against."""
    unet, text = model.model.diffusion_model, model.cond_stage_model
    unet.requires_grad_(True).train()
    text.requires_grad_(True)

    indices = _Shuffled(len(posteriors), s.batch_size)

    def loss_fn(generator: torch.Generator) -> torch.Tensor:
        idx = indices(generator)
        z = model.get_first_stage_encoding(DiagonalGaussianDistribution(posteriors[idx]), generator)  # B×C×H×W
        drop = torch.rand(len(idx), generator=generator) < empty_prompt_p
        batch_prompts = ["" if d else prompts[int(i)] for i, d in zip(idx, drop)]
        t = torch.randint(0, model.num_timesteps, (len(idx),), generator=generator)
        noise = torch.randn(z.shape, generator=generator)
        loss, _ = model.p_losses(z, {"c_crossattn": [text(batch_prompts)]}, t, noise)
        return loss

    losses = _run_phase("denoiser", list(unet.parameters()) + list(text.parameters()), loss_fn, s, log)
    unet.requires_grad_(False).eval()
    text.requires_grad_(False)
    return losses


def build_base(control_config: Mapping[str, Any]) -> LatentDiffusion:
    model = instantiate_from_config(base_model_config(control_config))
    assert isinstance(model, LatentDiffusion)
    return model
