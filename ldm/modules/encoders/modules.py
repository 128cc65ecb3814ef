"""Frozen text encoders that turn prompts into the UNet's cross-attention context (Rombach et al. 2022, §3.3)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from ldm.modules.encoders.clip_text import CLIPTextTransformer, OpenCLIPTextTransformer
from ldm.modules.encoders.tokenizer import EOS_ID, CLIPTokenizer


class _FrozenEncoder(nn.Module):
    """Base: parameters frozen and the module kept in eval mode (no dropout drift) whatever `train()` says."""

    tokenizer: CLIPTokenizer

    def _freeze(self) -> None:
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> _FrozenEncoder:
        return self

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        return self.tokenizer(texts)  # B×L

    def count_tokens(self, text: str) -> int:
        """Tokens `text` needs including BOS/EOS; more than `max_length` are cut off."""
        return self.tokenizer.count_tokens(text)

    @property
    def max_length(self) -> int:
        return self.tokenizer.max_length

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        return self(texts)


class FrozenCLIPEmbedder(_FrozenEncoder):
    """CLIP ViT-L/14 text encoder of SD1.x: context = last hidden state after the final LayerNorm, B×77×768."""

    def __init__(
        self,
        *,
        max_length: int = 77,
        vocab_size: int = 49408,
        width: int = 768,
        layers: int = 12,
        heads: int = 12,
        mlp_width: int = 3072,
    ) -> None:
        super().__init__()
        # The architecture, for the transformers layout (cldm/convert.py's clip_text_config).
        self.vocab_size, self.width = vocab_size, width
        self.layers, self.heads, self.mlp_width = layers, heads, mlp_width
        # SD1.x pads with the end-of-text id (the HF tokenizer's pad token), not 0.
        self.tokenizer = CLIPTokenizer(max_length=max_length, pad_id=EOS_ID)
        self.transformer = CLIPTextTransformer(
            vocab_size=vocab_size, max_length=max_length, width=width, layers=layers, heads=heads, mlp_width=mlp_width
        )
        self._freeze()

    def forward(self, texts: Sequence[str]) -> torch.Tensor:
        device = self.transformer.text_model.embeddings.position_ids.device
        return self.transformer(self.tokenize(texts).to(device))  # B×L×D


class FrozenOpenCLIPEmbedder(_FrozenEncoder):
    """OpenCLIP ViT-H/14 text tower of SD2.x: context = penultimate block output after `ln_final`, B×77×1024."""

    _LAYERS = {"last": 0, "penultimate": 1}

    def __init__(
        self,
        *,
        arch: str = "ViT-H-14",
        layer: str = "penultimate",
        max_length: int = 77,
        vocab_size: int = 49408,
        width: int = 1024,
        layers: int = 24,
        heads: int = 16,
        mlp_width: int = 4096,
        embed_dim: int = 1024,
        freeze: bool = True,
    ) -> None:
        super().__init__()
        if arch != "ViT-H-14":
            raise ValueError(f"arch {arch!r}: only 'ViT-H-14' (SD2.x) is built in; set width/layers/heads for others")
        if layer not in self._LAYERS:
            raise ValueError(f"layer must be one of {sorted(self._LAYERS)}, got {layer!r}")
        if not freeze:
            raise ValueError("freeze=False is not supported: the text encoder stays locked in ControlNet training")
        self.skip_last = self._LAYERS[layer]
        self.tokenizer = CLIPTokenizer(max_length=max_length, pad_id=0)  # open_clip pads with 0
        self.model = OpenCLIPTextTransformer(
            vocab_size=vocab_size,
            max_length=max_length,
            width=width,
            layers=layers,
            heads=heads,
            mlp_width=mlp_width,
            embed_dim=embed_dim,
        )
        self._freeze()

    def forward(self, texts: Sequence[str]) -> torch.Tensor:
        ids = self.tokenize(texts).to(self.model.token_embedding.weight.device)  # B×L
        return self.model(ids, skip_last=self.skip_last)  # B×L×D
