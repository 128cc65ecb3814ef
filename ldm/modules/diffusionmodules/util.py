"""Small network helpers shared by the UNet and the ControlNet (Ho et al. 2020; Rombach et al. 2022)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: int = 10000) -> torch.Tensor:
    """Sinusoidal timestep embedding, cos half first (the reference's layout)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
    freqs = freqs.to(device=timesteps.device)  # half
    args = timesteps[:, None].float() * freqs[None]  # B×half
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # B×2half
    if dim % 2:
        embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)  # B×dim
    return embedding


def zero_module(module: nn.Module) -> nn.Module:
    """Zero every parameter: the block starts as a no-op on the residual stream."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32 and cast back, so half-precision activations normalise stably."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Parameters are upcast too, so a UNet stored in bf16 (a memory saver) normalises in float32 as well.
        weight = None if self.weight is None else self.weight.float()
        bias = None if self.bias is None else self.bias.float()
        return F.group_norm(x.float(), self.num_groups, weight, bias, self.eps).type(x.dtype)


def normalization(channels: int) -> nn.Module:
    """The UNet's normalisation layer: 32 groups."""
    return GroupNorm32(32, channels)


def checkpoint(fn: Callable[..., torch.Tensor], *args: torch.Tensor, enabled: bool) -> torch.Tensor:
    """Run `fn(*args)`, recomputing activations in backward when `enabled` and gradients are on."""
    if enabled and torch.is_grad_enabled():
        return torch.utils.checkpoint.checkpoint(fn, *args, use_reentrant=False)
    return fn(*args)
