"""Build a ControlLDM from a YAML config, with its weights: the original repo's `cldm.model` entry points."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from cldm.weights import load_state_dict, load_weights_from_file
from ldm.util import instantiate_from_config

__all__ = ["create_model", "load_config", "load_model", "load_state_dict"]  # load_state_dict: the original's path

logger = logging.getLogger(__name__)

UNTRAINED = "UNTRAINED random weights (train first, or pass --ckpt / --base + --control)"


def load_config(config_path: str | Path) -> dict[str, Any]:
    """Read a model YAML (`model: {target, params}`) into plain containers."""
    path = Path(config_path)
    if not path.is_file():
        raise FileNotFoundError(
            f"model config {path} does not exist; the configs ship in models/ "
            "(cldm_v15.yaml, cldm_v21.yaml, cldm_tiny.yaml)"
        )
    config = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    if not isinstance(config, dict) or "model" not in config:
        raise ValueError(f"{path}: expected a top-level 'model:' node with 'target' and 'params'")
    return config


def create_model(config_path: str | Path) -> Any:
    """Instantiate the `model` node of a config (a ControlLDM for the configs in models/), on CPU in fp32."""
    model = instantiate_from_config(load_config(config_path)["model"])
    logger.info("built %s from %s", type(model).__name__, config_path)
    return model


def load_model(
    config_path: str | Path,
    *,
    ckpt: str | Path | None = None,
    base: str | Path | None = None,
    control: str | Path | None = None,
    allow_nonfinite: bool = False,
) -> tuple[Any, str]:
    """A ControlLDM with `ckpt` (a full ControlLDM file), or `base` (SD) + `control` (ControlNet only), or fresh
    weights; returns it with a line that says where its weights came from."""
    if ckpt is not None and (base is not None or control is not None):
        raise ValueError("give either --ckpt, or --base with --control, not both")
    model = create_model(config_path)
    parts = [str(config_path)]
    if ckpt is not None:
        load_weights_from_file(model, ckpt, allow_nonfinite=allow_nonfinite)
        parts.append(f"weights {ckpt}")
    if base is not None:
        load_weights_from_file(
            model, base, exclude=("control_model.",), ignore=("control_model.",), allow_nonfinite=allow_nonfinite
        )
        parts.append(f"base {base}")
    if control is not None:
        load_weights_from_file(model, control, prefixes=("control_model.",), allow_nonfinite=allow_nonfinite)
        parts.append(f"ControlNet {control}")
    if len(parts) == 1:
        parts.append(UNTRAINED)
    return model, "; ".join(parts)
