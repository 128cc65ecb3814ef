"""CLIP BPE tokenisation to fixed-length id sequences, offline (the vocabulary ships inside open_clip)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from open_clip.tokenizer import SimpleTokenizer

BOS_ID = 49406
EOS_ID = 49407


class CLIPTokenizer:
    """Text → LongTensor B×L: BOS, BPE ids truncated to L−2, EOS, then `pad_id` up to L."""

    def __init__(self, *, max_length: int = 77, pad_id: int = EOS_ID) -> None:
        if max_length < 2:
            raise ValueError(f"max_length must leave room for BOS and EOS, got {max_length}")
        self.max_length = max_length
        self.pad_id = pad_id
        self._bpe = SimpleTokenizer(context_length=max_length)

    def count_tokens(self, text: str) -> int:
        """BPE tokens of `text` plus BOS and EOS, before truncation."""
        return len(self._bpe.encode(text)) + 2

    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise TypeError(f"texts must be a list of strings (wrap a single prompt in a list), got {texts!r:.80}")
        ids = torch.full((len(texts), self.max_length), self.pad_id, dtype=torch.long)  # B×L
        for row, text in enumerate(texts):
            tokens = [BOS_ID, *self._bpe.encode(text)[: self.max_length - 2], EOS_ID]
            ids[row, : len(tokens)] = torch.tensor(tokens)
        return ids
