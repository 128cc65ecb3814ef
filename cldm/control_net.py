"""The ControlNet: a trainable copy of the UNet encoder fed by a hint (Zhang et al. 2023, §3.2–3.3)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from ldm.modules.diffusionmodules.openaimodel import TimestepEmbedSequential, UNetEncoder, UNetSpec
from ldm.modules.diffusionmodules.util import zero_module


def _zero_conv(channels: int) -> TimestepEmbedSequential:
    # Zero-initialised so that, before training, the ControlNet adds nothing to the locked UNet.
    return TimestepEmbedSequential(zero_module(nn.Conv2d(channels, channels, 1)))


class ControlNet(UNetEncoder):
    """UNet encoder + middle block copy, with a hint encoder in and one zero convolution per output."""

    def __init__(self, *, hint_channels: int, **architecture: Any) -> None:
        # `architecture`: the UNet's own (`UNetSpec.create`'s) keyword arguments, so the copy matches its encoder.
        spec = UNetSpec.create(**architecture)
        super().__init__(spec)
        if not isinstance(hint_channels, int) or hint_channels < 1:
            raise ValueError(f"hint_channels must be a positive int, got {hint_channels!r}")
        self.hint_channels = hint_channels
        # Hint encoder: 8× downsampling from image space to latent space (paper §3.3, "tiny network E").
        widths = [(hint_channels, 16, 1), (16, 16, 1), (16, 32, 2), (32, 32, 1), (32, 96, 2), (96, 96, 1), (96, 256, 2)]
        layers: list[nn.Module] = []
        for c_in, c_out, stride in widths:
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1, stride=stride), nn.SiLU()]
        layers.append(zero_module(nn.Conv2d(256, spec.model_channels, 3, padding=1)))
        self.input_hint_block = TimestepEmbedSequential(*layers)
        self.zero_convs = nn.ModuleList(_zero_conv(ch) for ch in self.skip_channels)
        self.middle_block_out = _zero_conv(self.middle_channels)

    def zero_conv_parameters(self) -> list[nn.Parameter]:
        """The weights and biases of the output layers (the zero convolutions): all zero until training moves them."""
        return [*self.zero_convs.parameters(), *self.middle_block_out.parameters()]

    @property
    def num_outputs(self) -> int:
        """How many residuals the ControlNet returns: one per UNet skip, plus the middle block."""
        return len(self.zero_convs) + 1

    def forward(
        self, x: torch.Tensor, hint: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor
    ) -> list[torch.Tensor]:
        if (
            hint.ndim != 4
            or hint.shape[1] != self.hint_channels
            or hint.shape[-2:] != tuple(8 * s for s in x.shape[-2:])
        ):
            raise ValueError(
                f"hint must be B×{self.hint_channels}×8H×8W for latents {tuple(x.shape)}, got {tuple(hint.shape)}"
            )
        emb = self.embed_time(timesteps)  # B×4·model_channels
        guided_hint = self.input_hint_block(hint, emb, context)  # B×model_channels×H×W
        outs = []
        h = x
        for i, (block, zero_conv) in enumerate(zip(self.input_blocks, self.zero_convs)):
            h = block(h, emb, context)
            if i == 0:
                h = h + guided_hint  # the hint joins after the first convolution
            outs.append(zero_conv(h, emb, context))
        h = self.middle_block(h, emb, context)  # B×C×H/f×W/f
        outs.append(self.middle_block_out(h, emb, context))
        return outs
