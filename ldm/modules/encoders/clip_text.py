"""CLIP text transformers (Radford et al. 2021) with the parameter names of the public SD checkpoints.

`CLIPTextTransformer` mirrors the Hugging Face CLIP text model layout used by SD1.x checkpoints
(`text_model.*`); `OpenCLIPTextTransformer` mirrors open_clip's text tower used by SD2.x. Both are
written here so the checkpoint keys do not depend on the installed transformers/open_clip versions.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange


def causal_mask(length: int, *, device: torch.device | None = None) -> torch.Tensor:
    """L×L additive mask: −inf above the diagonal, so token i attends to tokens ≤ i."""
    return torch.full((length, length), float("-inf"), device=device).triu(1)


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(1.702 * x)


class _Embeddings(nn.Module):
    def __init__(self, vocab_size: int, max_length: int, width: int) -> None:
        super().__init__()
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.position_embedding = nn.Embedding(max_length, width)
        self.register_buffer("position_ids", torch.arange(max_length)[None], persistent=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.token_embedding(ids) + self.position_embedding(self.position_ids[:, : ids.shape[1]])  # B×L×D


class _SelfAttention(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q_proj = nn.Linear(width, width)
        self.k_proj = nn.Linear(width, width)
        self.v_proj = nn.Linear(width, width)
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        q, k, v = (
            rearrange(p(x), "b l (h d) -> b h l d", h=self.heads) for p in (self.q_proj, self.k_proj, self.v_proj)
        )
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask.to(q.dtype))  # B×heads×L×d
        return self.out_proj(rearrange(out, "b h l d -> b l (h d)"))  # B×L×D


class _MLP(nn.Module):
    def __init__(self, width: int, mlp_width: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, mlp_width)
        self.fc2 = nn.Linear(mlp_width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(quick_gelu(self.fc1(x)))


class _EncoderLayer(nn.Module):
    def __init__(self, width: int, heads: int, mlp_width: int) -> None:
        super().__init__()
        self.self_attn = _SelfAttention(width, heads)
        self.layer_norm1 = nn.LayerNorm(width)
        self.mlp = _MLP(width, mlp_width)
        self.layer_norm2 = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x), mask)  # B×L×D
        return x + self.mlp(self.layer_norm2(x))  # B×L×D


class _Encoder(nn.Module):
    def __init__(self, width: int, layers: int, heads: int, mlp_width: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(_EncoderLayer(width, heads, mlp_width) for _ in range(layers))


class _TextModel(nn.Module):
    def __init__(self, vocab_size: int, max_length: int, width: int, layers: int, heads: int, mlp_width: int) -> None:
        super().__init__()
        self.embeddings = _Embeddings(vocab_size, max_length, width)
        self.encoder = _Encoder(width, layers, heads, mlp_width)
        self.final_layer_norm = nn.LayerNorm(width)


class CLIPTextTransformer(nn.Module):
    """CLIP ViT-L/14 text model (SD1.x): ids B×L → final-layer-normed last hidden state B×L×D."""

    def __init__(
        self, *, vocab_size: int, max_length: int, width: int, layers: int, heads: int, mlp_width: int
    ) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} must be divisible by heads {heads}")
        self.text_model = _TextModel(vocab_size, max_length, width, layers, heads, mlp_width)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        tm = self.text_model
        x = tm.embeddings(ids)  # B×L×D
        mask = causal_mask(ids.shape[1], device=ids.device)  # L×L
        for layer in tm.encoder.layers:
            x = layer(x, mask)
        return tm.final_layer_norm(x)  # B×L×D


class _ResidualAttentionBlock(nn.Module):
    def __init__(self, width: int, heads: int, mlp_width: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential()
        self.mlp.add_module("c_fc", nn.Linear(width, mlp_width))
        self.mlp.add_module("gelu", nn.GELU())
        self.mlp.add_module("c_proj", nn.Linear(mlp_width, width))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        y = self.ln_1(x)
        x = x + self.attn(y, y, y, need_weights=False, attn_mask=mask.to(y.dtype))[0]  # B×L×D
        return x + self.mlp(self.ln_2(x))  # B×L×D


class _Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int, mlp_width: int) -> None:
        super().__init__()
        self.resblocks = nn.ModuleList(_ResidualAttentionBlock(width, heads, mlp_width) for _ in range(layers))


class OpenCLIPTextTransformer(nn.Module):
    """OpenCLIP text tower (SD2.x): ids B×L → `ln_final` of the output of the first `layers − skip` blocks."""

    def __init__(
        self, *, vocab_size: int, max_length: int, width: int, layers: int, heads: int, mlp_width: int, embed_dim: int
    ) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} must be divisible by heads {heads}")
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.positional_embedding = nn.Parameter(torch.empty(max_length, width))
        self.transformer = _Transformer(width, layers, heads, mlp_width)
        self.ln_final = nn.LayerNorm(width)
        # Projection and temperature belong to the CLIP checkpoint; SD2 does not use them but keeps them.
        self.text_projection = nn.Parameter(torch.empty(width, embed_dim))
        self.logit_scale = nn.Parameter(torch.ones([]))
        self.register_buffer("attn_mask", causal_mask(max_length), persistent=False)
        nn.init.normal_(self.positional_embedding, std=0.01)
        nn.init.normal_(self.text_projection, std=width**-0.5)

    def forward(self, ids: torch.Tensor, *, skip_last: int) -> torch.Tensor:
        x = self.token_embedding(ids) + self.positional_embedding[: ids.shape[1]]  # B×L×D
        mask = self.attn_mask[: ids.shape[1], : ids.shape[1]]
        blocks = self.transformer.resblocks
        for block in blocks[: len(blocks) - skip_last]:
            x = block(x, mask)
        return self.ln_final(x)  # B×L×D
