"""The latent-diffusion UNet (Rombach et al. 2022, §3.3; blocks after Dhariwal & Nichol 2021)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ldm.modules.attention import SpatialTransformer
from ldm.modules.diffusionmodules.util import checkpoint, normalization, timestep_embedding, zero_module


class TimestepEmbedSequential(nn.Sequential):
    """A sequential block that hands the timestep embedding to ResBlocks and the context to transformers."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context)
            else:
                x = layer(x)
        return x


class ResBlock(nn.Module):
    """Residual block with the timestep embedding added between its two convolutions."""

    def __init__(
        self, channels: int, emb_channels: int, *, out_channels: int, dropout: float, use_checkpoint: bool
    ) -> None:
        super().__init__()
        self.in_layers = nn.Sequential(
            normalization(channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1)
        )
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, out_channels))
        self.out_layers = nn.Sequential(
            normalization(out_channels),
            nn.SiLU(),
            nn.Dropout(p=dropout),
            zero_module(nn.Conv2d(out_channels, out_channels, 3, padding=1)),
        )
        self.skip_connection = nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)
        self.use_checkpoint = use_checkpoint

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return checkpoint(self._forward, x, emb, enabled=self.use_checkpoint)

    def _forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x)  # B×C'×H×W
        emb_out = self.emb_layers(emb).type(h.dtype)[..., None, None]  # B×C'×1×1
        h = self.out_layers(h + emb_out)  # B×C'×H×W
        return self.skip_connection(x) + h


class Downsample(nn.Module):
    """Strided 3×3 convolution halving H and W."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Nearest-neighbour ×2 upsampling followed by a 3×3 convolution."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


@dataclass(frozen=True)
class UNetSpec:
    """The architecture knobs shared by the UNet and the ControlNet, validated once."""

    in_channels: int
    model_channels: int
    num_res_blocks: int
    attention_resolutions: tuple[int, ...]
    channel_mult: tuple[int, ...]
    context_dim: int
    num_heads: int
    num_head_channels: int
    transformer_depth: int
    use_linear_in_transformer: bool
    use_checkpoint: bool
    dropout: float

    @classmethod
    def create(
        cls,
        *,
        in_channels: int,
        model_channels: int,
        num_res_blocks: int,
        attention_resolutions: Sequence[int],
        channel_mult: Sequence[int],
        context_dim: int,
        num_heads: int = -1,
        num_head_channels: int = -1,
        transformer_depth: int = 1,
        use_linear_in_transformer: bool = False,
        use_checkpoint: bool = False,
        dropout: float = 0.0,
        image_size: int | None = None,
        use_spatial_transformer: bool = True,
        legacy: bool = False,
    ) -> UNetSpec:
        """Check the arguments; `image_size`, `use_spatial_transformer` and `legacy` come from public YAMLs."""
        if image_size is not None and not isinstance(image_size, int):
            raise ValueError(f"image_size must be an int or None (it does not change the network), got {image_size!r}")
        if not use_spatial_transformer:
            raise ValueError(
                "use_spatial_transformer=False (the class-conditional UNet) is not supported; set it to True"
            )
        if legacy:
            raise ValueError("legacy=True head sizing is not supported; SD1.x/2.x configs use legacy: False")
        if (num_heads == -1) == (num_head_channels == -1):
            raise ValueError(f"set exactly one of num_heads ({num_heads}) and num_head_channels ({num_head_channels})")
        for name, value in (
            ("in_channels", in_channels),
            ("model_channels", model_channels),
            ("num_res_blocks", num_res_blocks),
            ("context_dim", context_dim),
            ("transformer_depth", transformer_depth),
        ):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not channel_mult or any(m < 1 for m in channel_mult):
            raise ValueError(f"channel_mult must be a non-empty list of positive ints, got {list(channel_mult)}")
        if model_channels % 32:
            raise ValueError(f"model_channels must be a multiple of 32 (GroupNorm groups), got {model_channels}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        return cls(
            in_channels,
            model_channels,
            num_res_blocks,
            tuple(attention_resolutions),
            tuple(channel_mult),
            context_dim,
            num_heads,
            num_head_channels,
            transformer_depth,
            use_linear_in_transformer,
            use_checkpoint,
            dropout,
        )

    def heads_for(self, ch: int) -> tuple[int, int]:
        """(heads, head width) of the transformer at width `ch`."""
        if self.num_head_channels == -1:
            return self.num_heads, ch // self.num_heads
        return ch // self.num_head_channels, self.num_head_channels

    def transformer(self, ch: int) -> SpatialTransformer:
        heads, dim_head = self.heads_for(ch)
        return SpatialTransformer(
            ch,
            n_heads=heads,
            d_head=dim_head,
            depth=self.transformer_depth,
            context_dim=self.context_dim,
            dropout=self.dropout,
            use_linear=self.use_linear_in_transformer,
            use_checkpoint=self.use_checkpoint,
        )

    def res_block(self, ch: int, out_ch: int) -> ResBlock:
        return ResBlock(
            ch, self.model_channels * 4, out_channels=out_ch, dropout=self.dropout, use_checkpoint=self.use_checkpoint
        )


class UNetEncoder(nn.Module):
    """Time embedding, input blocks and middle block: the part that the ControlNet copies (paper §3.2)."""

    def __init__(self, spec: UNetSpec) -> None:
        super().__init__()
        self.spec = spec  # what the weight layouts (cldm/convert.py) read the architecture from
        self.model_channels = spec.model_channels
        time_dim = spec.model_channels * 4
        self.time_embed = nn.Sequential(
            nn.Linear(spec.model_channels, time_dim), nn.SiLU(), nn.Linear(time_dim, time_dim)
        )
        ch = spec.model_channels
        blocks = [TimestepEmbedSequential(nn.Conv2d(spec.in_channels, ch, 3, padding=1))]
        self.skip_channels = [ch]  # channels of every input block's output, in order
        ds = 1
        for level, mult in enumerate(spec.channel_mult):
            for _ in range(spec.num_res_blocks):
                layers: list[nn.Module] = [spec.res_block(ch, mult * spec.model_channels)]
                ch = mult * spec.model_channels
                if ds in spec.attention_resolutions:
                    layers.append(spec.transformer(ch))
                blocks.append(TimestepEmbedSequential(*layers))
                self.skip_channels.append(ch)
            if level != len(spec.channel_mult) - 1:
                blocks.append(TimestepEmbedSequential(Downsample(ch)))
                self.skip_channels.append(ch)
                ds *= 2
        self.input_blocks = nn.ModuleList(blocks)
        self.middle_block = TimestepEmbedSequential(
            spec.res_block(ch, ch), spec.transformer(ch), spec.res_block(ch, ch)
        )
        self.middle_channels = ch
        self.num_downsamples = ds

    def embed_time(self, timesteps: torch.Tensor) -> torch.Tensor:
        t_emb = timestep_embedding(timesteps, self.model_channels)  # B×model_channels
        return self.time_embed(t_emb.to(self.time_embed[0].weight.dtype))  # B×4·model_channels


class UNetModel(UNetEncoder):
    """The text-conditioned denoising UNet that predicts the noise ε (Rombach et al. 2022, §3.3)."""

    def __init__(self, *, out_channels: int, **architecture: Any) -> None:
        # `architecture`: the keyword arguments of `UNetSpec.create`, which rejects unknown names.
        spec = UNetSpec.create(**architecture)
        super().__init__(spec)
        if not isinstance(out_channels, int) or out_channels < 1:
            raise ValueError(f"out_channels must be a positive int, got {out_channels!r}")
        self.out_channels = out_channels
        skips = list(self.skip_channels)
        ch = self.middle_channels
        ds = self.num_downsamples
        blocks = []
        for level, mult in reversed(list(enumerate(spec.channel_mult))):
            for i in range(spec.num_res_blocks + 1):
                layers: list[nn.Module] = [spec.res_block(ch + skips.pop(), spec.model_channels * mult)]
                ch = spec.model_channels * mult
                if ds in spec.attention_resolutions:
                    layers.append(spec.transformer(ch))
                if level and i == spec.num_res_blocks:
                    layers.append(Upsample(ch))
                    ds //= 2
                blocks.append(TimestepEmbedSequential(*layers))
        self.output_blocks = nn.ModuleList(blocks)
        self.out = nn.Sequential(
            normalization(ch), nn.SiLU(), zero_module(nn.Conv2d(spec.model_channels, out_channels, 3, padding=1))
        )

    def encode(
        self, x: torch.Tensor, emb: torch.Tensor, context: torch.Tensor
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Input blocks and middle block: (middle output, the skip features in order)."""
        hs = []
        h = x
        for block in self.input_blocks:
            h = block(h, emb, context)
            hs.append(h)
        return self.middle_block(h, emb, context), hs  # B×C×H/f×W/f, skips

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        emb = self.embed_time(timesteps)  # B×4·model_channels
        h, hs = self.encode(x, emb, context)
        for block in self.output_blocks:
            h = block(torch.cat([h, hs.pop()], dim=1), emb, context)
        return self.out(h)  # B×C_out×H×W
