"""The KL-regularised autoencoder that maps images to SD's latent space (Rombach et al. 2022, §3.1)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn as nn

from ldm.modules.diffusionmodules.model import Decoder, Encoder
from ldm.modules.distributions.distributions import DiagonalGaussianDistribution

_DDCONFIG_KEYS = {
    "double_z",
    "z_channels",
    "resolution",
    "in_channels",
    "out_ch",
    "ch",
    "ch_mult",
    "num_res_blocks",
    "attn_resolutions",
    "dropout",
    "norm_groups",
}
# The optional keys, as SD has them; a narrow toy autoencoder wants fewer norm groups (several channels per group).
DDCONFIG_DEFAULTS: dict[str, Any] = {"dropout": 0.0, "attn_resolutions": (), "norm_groups": 32}


def _check_ddconfig(ddconfig: Mapping[str, Any]) -> dict[str, Any]:
    cfg = {**DDCONFIG_DEFAULTS, **ddconfig}
    unknown, missing = set(cfg) - _DDCONFIG_KEYS, _DDCONFIG_KEYS - set(cfg)
    if unknown or missing:
        raise ValueError(
            f"ddconfig: unknown keys {sorted(unknown)}, missing keys {sorted(missing)}; "
            f"expected {sorted(_DDCONFIG_KEYS)}"
        )
    if not cfg["double_z"]:
        raise ValueError("ddconfig.double_z must be true for the KL autoencoder (mean and log-variance)")
    if cfg["ch"] % cfg["norm_groups"]:
        raise ValueError(
            f"ddconfig.ch must be a multiple of norm_groups ({cfg['norm_groups']} GroupNorm groups), got {cfg['ch']}"
        )
    return cfg


class AutoencoderKL(nn.Module):
    """Encoder → diagonal Gaussian posterior over latents → decoder; used frozen by the diffusion model."""

    def __init__(
        self,
        *,
        ddconfig: Mapping[str, Any],
        embed_dim: int,
        lossconfig: Mapping[str, Any] | None = None,
        monitor: str | None = None,
    ) -> None:
        super().__init__()
        if lossconfig is not None and dict(lossconfig).get("target") != "torch.nn.Identity":
            raise ValueError(
                f"lossconfig {dict(lossconfig)} is not supported: CuteNet does not train the "
                "autoencoder; use 'target: torch.nn.Identity' or drop lossconfig"
            )
        if monitor is not None and not isinstance(monitor, str):
            raise ValueError(f"monitor must be a metric name or None, got {monitor!r}")
        cfg = _check_ddconfig(ddconfig)
        common = dict(
            ch=cfg["ch"],
            ch_mult=cfg["ch_mult"],
            num_res_blocks=cfg["num_res_blocks"],
            attn_resolutions=cfg["attn_resolutions"],
            dropout=cfg["dropout"],
            resolution=cfg["resolution"],
            z_channels=cfg["z_channels"],
            norm_groups=cfg["norm_groups"],
        )
        self.encoder = Encoder(in_channels=cfg["in_channels"], double_z=cfg["double_z"], **common)
        self.decoder = Decoder(out_ch=cfg["out_ch"], **common)
        self.quant_conv = nn.Conv2d(2 * cfg["z_channels"], 2 * embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(embed_dim, cfg["z_channels"], 1)
        self.embed_dim = embed_dim
        self.ddconfig = cfg  # checked, with its defaults filled in: what the weight layouts read
        self.downsample_factor = 2 ** (len(cfg["ch_mult"]) - 1)

    def encode(self, x: torch.Tensor) -> DiagonalGaussianDistribution:
        moments = self.quant_conv(self.encoder(x))  # B×2·embed_dim×H/f×W/f
        return DiagonalGaussianDistribution(moments)

    def decode(self, z: torch.Tensor, *, checkpointed: bool = False) -> torch.Tensor:
        """Latents → image B×3×H×W in about [−1, 1]; `checkpointed` recomputes each level's activations in backward."""
        return self.decoder(self.post_quant_conv(z), checkpointed=checkpointed)  # B×3×H×W

    def forward(
        self, x: torch.Tensor, *, sample_posterior: bool = True, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, DiagonalGaussianDistribution]:
        posterior = self.encode(x)
        z = posterior.sample(generator) if sample_posterior else posterior.mode()
        return self.decode(z), posterior
