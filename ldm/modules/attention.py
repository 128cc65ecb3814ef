"""Cross-attention transformer blocks of the latent-diffusion UNet (Rombach et al. 2022, §3.3)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from ldm.modules.diffusionmodules.util import checkpoint, zero_module


class CrossAttention(nn.Module):
    """Multi-head attention of queries from `x` over keys/values from `context` (self-attention if None)."""

    def __init__(
        self,
        query_dim: int,
        *,
        context_dim: int | None = None,
        heads: int = 8,
        dim_head: int = 64,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        inner_dim = heads * dim_head
        context_dim = query_dim if context_dim is None else context_dim
        self.heads = heads
        self.to_q = nn.Linear(query_dim, inner_dim, bias=False)
        self.to_k = nn.Linear(context_dim, inner_dim, bias=False)
        self.to_v = nn.Linear(context_dim, inner_dim, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner_dim, query_dim), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        context = x if context is None else context
        q = rearrange(self.to_q(x), "b l (h d) -> b h l d", h=self.heads)  # B×heads×L×d
        k = rearrange(self.to_k(context), "b l (h d) -> b h l d", h=self.heads)  # B×heads×Lc×d
        v = rearrange(self.to_v(context), "b l (h d) -> b h l d", h=self.heads)  # B×heads×Lc×d
        out = F.scaled_dot_product_attention(q, k, v)  # B×heads×L×d, scale d**-0.5
        return self.to_out(rearrange(out, "b h l d -> b l (h d)"))  # B×L×D


class GEGLU(nn.Module):
    """Gated GELU projection (Shazeer 2020)."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, gate = self.proj(x).chunk(2, dim=-1)  # B×L×D_out each
        return x * F.gelu(gate)


class FeedForward(nn.Module):
    """GEGLU feed-forward with a 4× hidden width."""

    def __init__(self, dim: int, *, mult: int = 4, dropout: float = 0.0) -> None:
        super().__init__()
        inner = dim * mult
        self.net = nn.Sequential(GEGLU(dim, inner), nn.Dropout(dropout), nn.Linear(inner, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class BasicTransformerBlock(nn.Module):
    """Self-attention, cross-attention to the text, feed-forward; pre-norm residuals."""

    def __init__(
        self,
        dim: int,
        *,
        n_heads: int,
        d_head: int,
        context_dim: int,
        dropout: float = 0.0,
        use_checkpoint: bool = False,
    ) -> None:
        super().__init__()
        self.attn1 = CrossAttention(dim, heads=n_heads, dim_head=d_head, dropout=dropout)
        self.ff = FeedForward(dim, dropout=dropout)
        self.attn2 = CrossAttention(dim, context_dim=context_dim, heads=n_heads, dim_head=d_head, dropout=dropout)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)
        self.use_checkpoint = use_checkpoint

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return checkpoint(self._forward, x, context, enabled=self.use_checkpoint)

    def _forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = self.attn1(self.norm1(x)) + x  # B×L×D
        x = self.attn2(self.norm2(x), context) + x  # B×L×D
        return self.ff(self.norm3(x)) + x  # B×L×D


class SpatialTransformer(nn.Module):
    """Transformer over the H×W positions of a feature map, conditioned on a context sequence."""

    def __init__(
        self,
        in_channels: int,
        *,
        n_heads: int,
        d_head: int,
        depth: int,
        context_dim: int,
        dropout: float = 0.0,
        use_linear: bool = False,
        use_checkpoint: bool = False,
    ) -> None:
        super().__init__()
        inner_dim = n_heads * d_head
        self.norm = nn.GroupNorm(32, in_channels, eps=1e-6)
        self.use_linear = use_linear
        if use_linear:  # SD2.x projects tokens with linear layers
            self.proj_in: nn.Module = nn.Linear(in_channels, inner_dim)
            proj_out: nn.Module = nn.Linear(inner_dim, in_channels)
        else:  # SD1.x uses 1×1 convolutions
            self.proj_in = nn.Conv2d(in_channels, inner_dim, 1)
            proj_out = nn.Conv2d(inner_dim, in_channels, 1)
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(
                inner_dim,
                n_heads=n_heads,
                d_head=d_head,
                context_dim=context_dim,
                dropout=dropout,
                use_checkpoint=use_checkpoint,
            )
            for _ in range(depth)
        )
        # Zero-initialised so a fresh block leaves the residual stream unchanged.
        self.proj_out = zero_module(proj_out)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        _, _, h, w = x.shape
        x_in = x
        x = self.norm(x)  # B×C×H×W
        if self.use_linear:
            x = self.proj_in(rearrange(x, "b c h w -> b (h w) c"))  # B×L×D
        else:
            x = rearrange(self.proj_in(x), "b c h w -> b (h w) c")  # B×L×D
        for block in self.transformer_blocks:
            x = block(x, context)  # B×L×D
        # Tokens back to a feature map: a permuted view with channels-last strides. Made contiguous here, or every
        # convolution downstream would be handed channels-last activations and re-lay its weights on each call.
        if self.use_linear:
            x = rearrange(self.proj_out(x), "b (h w) c -> b c h w", h=h, w=w).contiguous()  # B×C×H×W
        else:
            x = self.proj_out(rearrange(x, "b (h w) c -> b c h w", h=h, w=w).contiguous())  # B×C×H×W
        return x + x_in
