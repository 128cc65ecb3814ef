"""Build a ControlLDM from a YAML config, with its weights: the config reader and the loaders of base, ControlNet
and whole models (`cldm.model` keeps the original repository's import path for `create_model`)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

from cldm.diffusers_io import is_diffusers_controlnet, is_pipeline_folder, load_diffusers_controlnet, load_pipeline
from cldm.weights import CONTROL_PREFIX, LoadReport, load_state_dict, load_weights_from_file
from ldm.util import instantiate_from_config

__all__ = [
    "create_model",
    "load_base",
    "load_config",
    "load_control",
    "load_model",
    "load_state_dict",
]  # load_state_dict: the original's path

logger = logging.getLogger(__name__)

UNTRAINED = "UNTRAINED random weights (train first, or pass --ckpt / --base + --control)"


def load_config(config_path: str | Path) -> dict[str, Any]:
    """Read a model YAML (`model: {target, params}`) into plain containers. A top-level `extends: FILE` (beside
    the YAML) is read first and this file's keys are merged over it: the shared `training:` recipe of models/."""
    path = Path(config_path)
    if not path.is_file():
        raise FileNotFoundError(
            f"model config {path} does not exist; the configs ship in models/ "
            "(cldm_v15.yaml, cldm_v21.yaml, cldm_tiny.yaml)"
        )
    node = _read_yaml(path)
    if isinstance(node, DictConfig) and "extends" in node:
        parent = path.parent / str(node.pop("extends"))
        if not parent.is_file():
            raise FileNotFoundError(f"{path} extends {parent}, which does not exist; restore it or drop `extends`")
        shared = _read_yaml(parent)
        if not isinstance(shared, DictConfig) or "extends" in shared or "model" in shared:
            raise ValueError(f"{parent} (extended by {path}) must hold shared sections only: no model, no extends")
        node = OmegaConf.merge(shared, node)
    config = OmegaConf.to_container(node, resolve=True)
    if not isinstance(config, dict) or "model" not in config:
        raise ValueError(f"{path}: expected a top-level 'model:' node with 'target' and 'params'")
    return config


def _read_yaml(path: Path) -> Any:
    """A YAML file as OmegaConf reads it; a syntax error is one ValueError naming file:line."""
    try:
        return OmegaConf.load(path)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        what = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ValueError(f"{path}{line}: not valid YAML ({what}); fix that line") from None


def create_model(config_path: str | Path) -> Any:
    """Instantiate the `model` node of a config (a ControlLDM for the configs in models/), on CPU in fp32."""
    model = instantiate_from_config(load_config(config_path)["model"])
    logger.info("built %s from %s", type(model).__name__, config_path)
    return model


def load_base(model: Any, path: str | Path, *, allow_nonfinite: bool = False) -> LoadReport:
    """Stable Diffusion weights into a ControlLDM, its ControlNet untouched: from an ldm checkpoint (a ControlNet it
    holds is ignored) or a diffusers pipeline folder."""
    if is_pipeline_folder(path):
        return load_pipeline(model, path, allow_nonfinite=allow_nonfinite)
    if Path(path).is_dir():
        raise ValueError(
            f"{path} is a folder but not a diffusers pipeline (no model_index.json or unet/); give a "
            "pipeline folder or an SD checkpoint file (.ckpt, .pth or .safetensors)"
        )
    return load_weights_from_file(
        model, path, exclude=(CONTROL_PREFIX,), ignore=(CONTROL_PREFIX,), allow_nonfinite=allow_nonfinite
    )


def load_control(model: Any, path: str | Path, *, allow_nonfinite: bool = False) -> LoadReport:
    """ControlNet weights into a ControlLDM: `control_model.*` out of a ControlNet-only or full ldm file
    (control.safetensors, control_sd15_canny.pth, control_v11p_sd15_canny.pth), or a diffusers ControlNet."""
    if is_diffusers_controlnet(path):
        return load_diffusers_controlnet(model, path, allow_nonfinite=allow_nonfinite)
    if Path(path).is_dir():
        raise ValueError(f"{path} is a folder but not a diffusers ControlNet (no config.json of a ControlNetModel)")
    return load_weights_from_file(
        model, path, prefixes=(CONTROL_PREFIX,), keep_only=(CONTROL_PREFIX,), allow_nonfinite=allow_nonfinite
    )


def load_model(
    config_path: str | Path,
    *,
    ckpt: str | Path | None = None,
    base: str | Path | None = None,
    control: str | Path | None = None,
    allow_nonfinite: bool = False,
) -> tuple[Any, str]:
    """A ControlLDM with `ckpt` (a full ControlLDM file), or `base` (SD; a file or a diffusers pipeline folder) +
    `control` (a ControlNet file or a diffusers ControlNet), or fresh weights; returns it with a line that says
    where its weights came from."""
    if ckpt is not None and (base is not None or control is not None):
        raise ValueError("give either --ckpt, or --base with --control, not both")
    config = load_config(config_path)["model"]
    model = instantiate_from_config(config)
    parts = [str(config_path)]
    if ckpt is not None:
        load_weights_from_file(model, ckpt, allow_nonfinite=allow_nonfinite)
        parts.append(f"weights {ckpt}")
    if base is not None:
        load_base(model, base, allow_nonfinite=allow_nonfinite)
        parts.append(f"base {base}")
    if control is not None:
        load_control(model, control, allow_nonfinite=allow_nonfinite)
        parts.append(f"ControlNet {control}")
    if len(parts) == 1:
        parts.append(UNTRAINED)
    return model, "; ".join(parts)
