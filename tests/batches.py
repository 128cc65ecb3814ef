"""Batches in the training format for model tests."""

from __future__ import annotations

import torch


def make_batch(n: int = 2, size: int = 64, seed: int = 0) -> dict:
    """A batch in the training format: jpg B×H×W×3 in [−1, 1], hint in [0, 1], txt prompts."""
    g = torch.Generator().manual_seed(seed)
    return {
        "jpg": torch.rand(n, size, size, 3, generator=g) * 2 - 1,
        "hint": (torch.rand(n, size, size, 3, generator=g) > 0.8).float(),
        "txt": [f"a red circle on a blue background {i}" for i in range(n)],
    }
