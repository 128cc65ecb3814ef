"""Strict loading of public SD / ControlNet checkpoints into a ControlLDM: no silent key loss."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from cldm.model import iter_tensor_chunks, load_state_dict

logger = logging.getLogger(__name__)

# Entries real files carry that the model does not hold, dropped by name:
# - position_ids: in v1-5-pruned.ckpt and control_sd15_*.pth; a non-persistent buffer here;
# - model_ema.*: the EMA copy in v1-5-pruned.ckpt (the live weights are used).
KNOWN_EXTRA_KEYS = frozenset({"cond_stage_model.transformer.text_model.embeddings.position_ids"})
KNOWN_EXTRA_PREFIXES = ("model_ema.",)
# `logvar` is an attribute, not a tensor, in v1-5-pruned.ckpt; it keeps its fresh value (zeros).
TOLERATED_MISSING = frozenset({"logvar"})


@dataclass
class LoadReport:
    """What a strict load did besides copying matching tensors."""

    loaded: int = 0
    dropped_extras: list[str] = field(default_factory=list)
    kept_fresh: list[str] = field(default_factory=list)


class CheckpointMismatchError(ValueError):
    """The checkpoint does not fit the model: lists missing, unexpected and mis-shaped keys."""


def _preview(keys: Sequence[str], limit: int = 10) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def check_state_dict(model_state: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor], *,
                     prefixes: Sequence[str] | None = None,
                     exclude: Sequence[str] = ()) -> tuple[dict[str, torch.Tensor], LoadReport]:
    """Filter `state` against the model's keys; raise CheckpointMismatchError listing every problem.

    With `prefixes`, only model keys under them are expected (e.g. ("control_model.",) for a
    ControlNet-only file); keys under `exclude` are not expected (e.g. an SD base file has no
    ControlNet). Anything else in the file is unexpected.
    """
    report = LoadReport()
    wanted = {k: v for k, v in model_state.items()
              if (prefixes is None or k.startswith(tuple(prefixes))) and not k.startswith(tuple(exclude))}
    kept: dict[str, torch.Tensor] = {}
    unexpected, mis_shaped = [], []
    for key, value in state.items():
        if key in KNOWN_EXTRA_KEYS or key.startswith(KNOWN_EXTRA_PREFIXES):
            report.dropped_extras.append(key)
        elif key not in wanted:
            unexpected.append(key)
        elif tuple(value.shape) != tuple(wanted[key].shape):
            mis_shaped.append(f"{key}: file {tuple(value.shape)} vs model {tuple(wanted[key].shape)}")
        else:
            kept[key] = value
    missing = [k for k in wanted if k not in state]
    report.kept_fresh = [k for k in missing if k in TOLERATED_MISSING]
    missing = [k for k in missing if k not in TOLERATED_MISSING]
    if unexpected or missing or mis_shaped:
        parts = []
        if missing:
            parts.append(f"missing keys: {_preview(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_preview(unexpected)}")
        if mis_shaped:
            parts.append(f"shape mismatches: {_preview(mis_shaped)}")
        raise CheckpointMismatchError("checkpoint does not match the model config; " + "; ".join(parts))
    report.loaded = len(kept)
    return kept, report


def load_weights(model: torch.nn.Module, state: Mapping[str, torch.Tensor], *,
                 prefixes: Sequence[str] | None = None, exclude: Sequence[str] = ()) -> LoadReport:
    """Copy `state` into `model` strictly (see `check_state_dict`); returns what was dropped or kept fresh."""
    kept, report = check_state_dict(model.state_dict(), state, prefixes=prefixes, exclude=exclude)
    model.load_state_dict(kept, strict=False)
    _log_report(report)
    return report


def load_weights_from_file(model: torch.nn.Module, path: str | Path, *, prefixes: Sequence[str] | None = None,
                           exclude: Sequence[str] = (), ignore: Sequence[str] = (), trusted: bool = False,
                           chunk_bytes: int = 256 << 20) -> LoadReport:
    """`load_weights` from a file, checked from its header first and then copied a chunk at a time: the
    model is untouched if the file does not fit, and loading needs the model plus one chunk of memory,
    not the model plus the whole file. File keys under `ignore` are skipped (e.g. the ControlNet of a
    full ControlLDM file used only as an SD base)."""
    shapes = {k: v for k, v in load_state_dict(path, trusted=trusted, shapes_only=True).items()
              if not k.startswith(tuple(ignore))}
    kept, report = check_state_dict(model.state_dict(), shapes, prefixes=prefixes, exclude=exclude)
    for chunk in iter_tensor_chunks(path, list(kept), trusted=trusted, chunk_bytes=chunk_bytes):
        model.load_state_dict(chunk, strict=False)
    _log_report(report)
    return report


def _log_report(report: LoadReport) -> None:
    if report.dropped_extras:
        logger.info("dropped %d known extra entries (position_ids, model_ema.*)", len(report.dropped_extras))
    if report.kept_fresh:
        logger.info("not in the file, kept at their initial value: %s", ", ".join(report.kept_fresh))
