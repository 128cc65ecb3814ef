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
