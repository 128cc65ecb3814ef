"""Shared fixtures: the tiny ControlLDM (built once per session) and the repo root."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
TINY_CONFIG = ROOT / "models" / "cldm_tiny.yaml"

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def _tiny_model_template():
    from cldm.model import create_model

    torch.manual_seed(0)
    return create_model(TINY_CONFIG)


@pytest.fixture
def tiny_model(_tiny_model_template):
    """A fresh copy of the tiny ControlLDM (tests may change it)."""
    return copy.deepcopy(_tiny_model_template)


def make_batch(n: int = 2, size: int = 64, seed: int = 0) -> dict:
    """A batch in the training format: jpg B×H×W×3 in [−1, 1], hint in [0, 1], txt prompts."""
    g = torch.Generator().manual_seed(seed)
    return {"jpg": torch.rand(n, size, size, 3, generator=g) * 2 - 1,
            "hint": (torch.rand(n, size, size, 3, generator=g) > 0.8).float(),
            "txt": [f"a red circle on a blue background {i}" for i in range(n)]}
