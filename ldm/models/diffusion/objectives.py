"""The training objective of an ε-predicting model: how the ε-MSE of each sample is weighted by its timestep, and
how the timesteps are drawn. The model predicts ε whatever the objective, so its weights, exports and sampling
are unchanged; only where training puts its effort moves.

Weightings (w_t multiplies the per-sample ε-MSE; SNR_t = ᾱ_t / (1 − ᾱ_t)):
- `eps`: w_t = 1, the objective SD and every ControlNet trainer inherit (Ho et al. 2020).
- `x0`: w_t = 1 / SNR_t, so the loss is the MSE of the x0 the model implies, ‖x̂0 − x0‖² with
  x̂0 = (x_t − √(1−ᾱ_t) ε̂) / √ᾱ_t: x0-supervision (arXiv 2604.05761; CEA-LIST/x0-supervision), which puts the
  weight on the high-noise steps where layout, and so control, is decided. As in its code, no clipping.
- `min-snr`: w_t = min(SNR_t, γ) / SNR_t, Min-SNR-γ for ε-prediction (Hang et al., arXiv 2303.09556; γ = 5 there).

Timestep sampling:
- `uniform`: t ~ U{0, …, T−1}.
- `cubic`: t = ⌊(1 − u³) T⌋ with u ~ U[0, 1), towards high noise, as T2I-Adapter trains its adapters
  (diffusers' train_t2i_adapter_sdxl.py)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

LOSS_WEIGHTINGS = ("eps", "x0", "min-snr")
TIMESTEP_SAMPLINGS = ("uniform", "cubic")


@dataclass(frozen=True)
class Objective:
    loss_weighting: str = "eps"
    timestep_sampling: str = "uniform"
    min_snr_gamma: float = 5.0

    def __post_init__(self) -> None:
        if self.loss_weighting not in LOSS_WEIGHTINGS:
            raise ValueError(f"loss_weighting must be one of {LOSS_WEIGHTINGS}, got {self.loss_weighting!r}")
        if self.timestep_sampling not in TIMESTEP_SAMPLINGS:
            raise ValueError(f"timestep_sampling must be one of {TIMESTEP_SAMPLINGS}, got {self.timestep_sampling!r}")
        if not (isinstance(self.min_snr_gamma, int | float) and math.isfinite(self.min_snr_gamma)):
            raise ValueError(f"min_snr_gamma must be a positive number, got {self.min_snr_gamma!r}")
        if self.min_snr_gamma <= 0:
            raise ValueError(f"min_snr_gamma must be a positive number, got {self.min_snr_gamma!r}")

    def weights(self, alphas_cumprod: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """w_t of each sample (B), from the schedule's ᾱ (T) and the timesteps (B), in float32."""
        if self.loss_weighting == "eps":
            return torch.ones(t.shape, device=t.device, dtype=torch.float32)
        acp = alphas_cumprod.double()[t]  # B, in float64: 1 − ᾱ near t = 0 loses digits in float32
        snr = acp / (1.0 - acp)  # B
        if self.loss_weighting == "x0":
            return (1.0 / snr).float()
        return (snr.clamp(max=self.min_snr_gamma) / snr).float()

    def timesteps(
        self, n: int, num_timesteps: int, *, generator: torch.Generator | None, device: torch.device
    ) -> torch.Tensor:
        """n training timesteps (int64), drawn from `generator` (a resumed step draws what it drew before)."""
        if self.timestep_sampling == "uniform":
            return torch.randint(0, num_timesteps, (n,), device=device, generator=generator)  # B
        u = torch.rand((n,), device=device, generator=generator, dtype=torch.float64)  # B in [0, 1)
        return ((1.0 - u**3) * num_timesteps).long().clamp(0, num_timesteps - 1)  # B
