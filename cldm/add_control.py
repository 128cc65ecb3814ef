"""Initialise a ControlNet from an SD checkpoint: the trainable copy starts as the UNet encoder (paper §3.2)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cldm.checkpoint_keys import check_state_dict
from ldm.util import instantiate_from_config

CONTROL_PREFIX = "control_model."
UNET_PREFIX = "model.diffusion_model."


def unet_twin(control_key: str) -> str:
    """`control_model.X` → `model.diffusion_model.X`: the locked weight the trainable copy starts from."""
    if not control_key.startswith(CONTROL_PREFIX):
        raise ValueError(f"{control_key!r} is not a ControlNet key (expected the prefix {CONTROL_PREFIX!r})")
    return UNET_PREFIX + control_key[len(CONTROL_PREFIX):]


@dataclass
class ControlInit:
    """The initial ControlLDM state and where each ControlNet tensor came from."""

    state: dict[str, torch.Tensor]
    copied: list[str]
    fresh: list[str]
    kept_fresh: list[str]
    dropped_extras: list[str]


def init_control_from_sd(model_state: Mapping[str, torch.Tensor], sd_state: Mapping[str, torch.Tensor]) -> ControlInit:
    """Build the full ControlLDM state: SD tensors as they are, ControlNet tensors copied from their UNet twins.

    `model_state` is a freshly initialised ControlLDM state_dict; ControlNet tensors without a twin of the
    same shape (hint encoder, zero convolutions) keep their fresh values and are listed in `fresh`.
    Everything else must come from `sd_state` (checked strictly: see `check_state_dict`).
    """
    sd_part = {k: v for k, v in model_state.items() if not k.startswith(CONTROL_PREFIX)}
    sd_only = {k: v for k, v in sd_state.items() if not k.startswith(CONTROL_PREFIX)}
    kept, report = check_state_dict(sd_part, sd_only)
    state = {k: kept.get(k, v) for k, v in sd_part.items()}
    copied, fresh = [], []
    for key, value in model_state.items():
        if not key.startswith(CONTROL_PREFIX):
            continue
        twin = sd_state.get(unet_twin(key))
        if twin is not None and twin.shape == value.shape:
            state[key] = twin.clone()
            copied.append(key)
        else:
            state[key] = value
            fresh.append(key)
    return ControlInit(state, copied, fresh, report.kept_fresh, report.dropped_extras)


def build_control_init(model_config: Mapping[str, Any], sd_state: Mapping[str, torch.Tensor], *,
                       seed: int) -> ControlInit:
    """The initial ControlLDM state for the `model` node of a config: a model built with its fresh parts
    (hint encoder, zero convolutions) drawn under `seed`, filled by `init_control_from_sd`. The same
    input and seed give the same state, whichever process makes it (tool_add_control.py, or training's
    `sd_base` on every DDP rank)."""
    torch.manual_seed(seed)
    model = instantiate_from_config(model_config)
    return init_control_from_sd(model.state_dict(), sd_state)


def save_state(state: Mapping[str, torch.Tensor], dst: Path, metadata: Mapping[str, str] | None = None) -> None:
    """Write a state dict atomically (temp file + rename); the format follows dst's extension. `metadata`
    (text only) goes in the safetensors header, or beside `state_dict` in a .ckpt/.pth."""
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")  # per process: DDP ranks may write the same file
    if dst.suffix.lower() == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp), metadata=dict(metadata or {}) or None)
    else:
        torch.save({"state_dict": dict(state), **({"metadata": dict(metadata)} if metadata else {})}, tmp)
    os.replace(tmp, dst)
