"""Encoder and decoder of the KL autoencoder (Rombach et al. 2022, §3.1; Esser et al. 2021)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint
from einops import rearrange


def Normalize(channels: int, groups: int = 32) -> nn.GroupNorm:
    """The autoencoder's normalisation: GroupNorm with eps 1e-6; SD uses 32 groups."""
    return nn.GroupNorm(num_groups=groups, num_channels=channels, eps=1e-6, affine=True)


def swish(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(x)


class ResnetBlock(nn.Module):
    """Two 3×3 convolutions with a residual connection (1×1 shortcut when the width changes)."""

    def __init__(self, in_channels: int, out_channels: int, *, dropout: float, groups: int = 32) -> None:
        super().__init__()
        self.norm1 = Normalize(in_channels, groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = Normalize(out_channels, groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(swish(self.norm1(x)))  # B×C'×H×W
        h = self.conv2(self.dropout(swish(self.norm2(h))))  # B×C'×H×W
        skip = x if self.nin_shortcut is None else self.nin_shortcut(x)
        return skip + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the H×W positions."""

    def __init__(self, channels: int, groups: int = 32) -> None:
        super().__init__()
        self.norm = Normalize(channels, groups)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, _, h, w = x.shape
        x_norm = self.norm(x)
        q, k, v = (rearrange(f(x_norm), "b c h w -> b 1 (h w) c") for f in (self.q, self.k, self.v))  # B×1×L×C
        out = F.scaled_dot_product_attention(q, k, v)  # B×1×L×C, scale C**-0.5
        return x + self.proj_out(rearrange(out, "b 1 (h w) c -> b c h w", h=h, w=w))


class Downsample(nn.Module):
    """Stride-2 3×3 convolution after padding one pixel on the right and bottom only."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest-neighbour ×2 then a 3×3 convolution."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Level(nn.Module):
    """One resolution of the encoder or decoder: ResnetBlocks, optional attention, optional resampling."""

    def __init__(self, block: list[ResnetBlock], attn: list[AttnBlock]) -> None:
        super().__init__()
        self.block = nn.ModuleList(block)
        self.attn = nn.ModuleList(attn)

    def run(self, h: torch.Tensor) -> torch.Tensor:
        for i, block in enumerate(self.block):
            h = block(h)
            if self.attn:
                h = self.attn[i](h)
        return h

    def forward_up(self, h: torch.Tensor) -> torch.Tensor:
        """A decoder level: its blocks, then its upsampling where it has one."""
        h = self.run(h)
        return self.upsample(h) if hasattr(self, "upsample") else h


class _Mid(nn.Module):
    """ResnetBlock, attention, ResnetBlock at the lowest resolution."""

    def __init__(self, channels: int, dropout: float, groups: int) -> None:
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, dropout=dropout, groups=groups)
        self.attn_1 = AttnBlock(channels, groups)
        self.block_2 = ResnetBlock(channels, channels, dropout=dropout, groups=groups)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(h)))


class Encoder(nn.Module):
    """Image B×3×H×W → posterior parameters B×2z×H/f×W/f, f = 2^(levels−1)."""

    def __init__(
        self,
        *,
        ch: int,
        ch_mult: Sequence[int],
        num_res_blocks: int,
        attn_resolutions: Sequence[int],
        dropout: float,
        in_channels: int,
        resolution: int,
        z_channels: int,
        double_z: bool,
        norm_groups: int = 32,
    ) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)
        in_mult = (1, *ch_mult)
        res = resolution
        self.down = nn.ModuleList()
        for level, mult in enumerate(ch_mult):
            block_in, block_out = ch * in_mult[level], ch * mult
            blocks, attns = [], []
            for _ in range(num_res_blocks):
                blocks.append(ResnetBlock(block_in, block_out, dropout=dropout, groups=norm_groups))
                block_in = block_out
                if res in attn_resolutions:
                    attns.append(AttnBlock(block_in, norm_groups))
            stage = _Level(blocks, attns)
            if level != len(ch_mult) - 1:
                stage.downsample = Downsample(block_in)
                res //= 2
            self.down.append(stage)
        self.mid = _Mid(block_in, dropout, norm_groups)
        self.norm_out = Normalize(block_in, norm_groups)
        self.conv_out = nn.Conv2d(block_in, 2 * z_channels if double_z else z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)  # B×ch×H×W
        for stage in self.down:
            h = stage.run(h)
            if hasattr(stage, "downsample"):
                h = stage.downsample(h)
        h = self.mid(h)
        return self.conv_out(swish(self.norm_out(h)))  # B×2z×H/f×W/f


class Decoder(nn.Module):
    """Latent B×z×h×w → image B×3×fh×fw."""

    def __init__(
        self,
        *,
        ch: int,
        out_ch: int,
        ch_mult: Sequence[int],
        num_res_blocks: int,
        attn_resolutions: Sequence[int],
        dropout: float,
        resolution: int,
        z_channels: int,
        norm_groups: int = 32,
    ) -> None:
        super().__init__()
        block_in = ch * ch_mult[-1]
        res = resolution // 2 ** (len(ch_mult) - 1)
        self.conv_in = nn.Conv2d(z_channels, block_in, 3, padding=1)
        self.mid = _Mid(block_in, dropout, norm_groups)
        up: list[_Level] = []
        for level in reversed(range(len(ch_mult))):
            block_out = ch * ch_mult[level]
            blocks, attns = [], []
            for _ in range(num_res_blocks + 1):
                blocks.append(ResnetBlock(block_in, block_out, dropout=dropout, groups=norm_groups))
                block_in = block_out
                if res in attn_resolutions:
                    attns.append(AttnBlock(block_in, norm_groups))
            stage = _Level(blocks, attns)
            if level != 0:
                stage.upsample = Upsample(block_in)
                res *= 2
            up.insert(0, stage)  # stored lowest level first, as in the checkpoint keys
        self.up = nn.ModuleList(up)
        self.norm_out = Normalize(block_in, norm_groups)
        self.conv_out = nn.Conv2d(block_in, out_ch, 3, padding=1)

    def forward(self, z: torch.Tensor, *, checkpointed: bool = False) -> torch.Tensor:
        """`checkpointed`: keep only each level's input for backward and recompute its activations there, so that a
        loss on the decoded image (the reward stage) holds one level's activations at a time, not the whole
        decoder's."""
        h = self._run(self.mid, self.conv_in(z), checkpointed)  # B×C×h×w
        for stage in reversed(self.up):
            h = self._run(stage.forward_up, h, checkpointed)  # B×C'×2h×2w (the last level keeps its size)
        return self.conv_out(swish(self.norm_out(h)))  # B×3×fh×fw

    @staticmethod
    def _run(part: Callable[[torch.Tensor], torch.Tensor], h: torch.Tensor, checkpointed: bool) -> torch.Tensor:
        if checkpointed and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(part, h, use_reentrant=False)
        return part(h)
