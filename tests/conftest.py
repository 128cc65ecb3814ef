"""Shared fixtures: the repo root, the tiny ControlLDM (built once per session), and one toy data set."""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from repo_paths import ROOT, TINY_CONFIG

# make test sets one thread per worker (OMP_NUM_THREADS); a bare `pytest` computes on 2.
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT


@pytest.fixture
def tiny_config() -> dict[str, Any]:
    """The `model:` node of cldm_tiny.yaml, a fresh copy each time."""
    from cldm.loading import load_config

    return load_config(TINY_CONFIG)["model"]


@pytest.fixture
def build_tiny(tiny_config) -> Callable[..., Any]:
    """Build the tiny ControlLDM with some constructor arguments changed, e.g. `build_tiny(sd_locked=False)`."""
    from ldm.util import instantiate_from_config

    def build(**params: Any) -> Any:
        config = copy.deepcopy(tiny_config)
        config["params"].update(params)
        torch.manual_seed(0)
        return instantiate_from_config(config)

    return build


@pytest.fixture(scope="session")
def _tiny_model_template():
    from cldm.loading import create_model

    torch.manual_seed(0)
    return create_model(TINY_CONFIG)


@pytest.fixture
def tiny_model(_tiny_model_template):
    """A fresh copy of the tiny ControlLDM (tests may change its weights)."""
    return copy.deepcopy(_tiny_model_template)


@pytest.fixture(scope="session")
def toy_data(tmp_path_factory) -> Path:
    """48 generated circle pairs at 64×64 (46 train, 2 held out); tests only read it."""
    from training.data.toy_data import write_toy_dataset

    return write_toy_dataset(tmp_path_factory.mktemp("toy"), n=48, size=64, seed=0)


@pytest.fixture(scope="session")
def base(tmp_path_factory) -> Path:
    """A stand-in for a pretrained SD: the tiny model with a random (not zero-initialised) UNet."""
    from cldm.loading import create_model

    torch.manual_seed(0)
    model = create_model(TINY_CONFIG)
    with torch.no_grad():
        for p in model.model.diffusion_model.parameters():
            p.normal_(std=0.05)
    path = tmp_path_factory.mktemp("base") / "base.ckpt"
    torch.save({"state_dict": model.state_dict()}, path)
    return path
