"""Read and write the folders diffusers users hold: an SD pipeline (`model_index.json`, `unet/`, `vae/`,
`text_encoder/`) and a ControlNet (`config.json` + `diffusion_pytorch_model.safetensors`). Weights stream into
the model a chunk at a time through the key mappings of `cldm.convert`; nothing here imports diffusers.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from annotator.canny import CannyThresholds
from cldm import convert
from cldm.edge_record import threshold_metadata
from cldm.weights import (
    CheckpointMismatchError,
    LoadReport,
    check_state_dict,
    copy_in_chunks,
    load_state_dict,
    save_state,
)
from ldm.util import atomic_write

logger = logging.getLogger(__name__)

# Weight files of a diffusers model folder, in order of preference: fp32 before fp16, safetensors before pickles.
DIFFUSERS_WEIGHTS = (
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.fp16.safetensors",
    "diffusion_pytorch_model.bin",
    "diffusion_pytorch_model.fp16.bin",
)
TRANSFORMERS_WEIGHTS = ("model.safetensors", "model.fp16.safetensors", "pytorch_model.bin", "pytorch_model.fp16.bin")
CONTROLNET_KEYS = ("controlnet_cond_embedding.", "controlnet_down_blocks.")


class DiffusersLayoutError(ValueError):
    """A folder or file that is not the diffusers layout expected; the message names it and what was expected."""


def is_pipeline_folder(path: str | Path) -> bool:
    path = Path(path)
    return path.is_dir() and ((path / "model_index.json").is_file() or (path / "unet").is_dir())


def is_diffusers_controlnet(path: str | Path) -> bool:
    """A diffusers ControlNet folder, or a weights file whose keys are diffusers' ControlNet names."""
    path = Path(path)
    if path.is_dir():
        return (path / "config.json").is_file() and _read_json(path / "config.json").get("_class_name") == (
            "ControlNetModel"
        )
    if path.is_file() and path.suffix.lower() in (".safetensors", ".bin", ".pth", ".ckpt"):
        return any(k.startswith(CONTROLNET_KEYS) for k in load_state_dict(path, shapes_only=True))
    return False


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise DiffusersLayoutError(f"{path} is not readable JSON: {err}") from None


def _weights_file(folder: Path, names: tuple[str, ...]) -> Path:
    for name in names:
        if (folder / name).is_file():
            return folder / name
    sharded = sorted(p.name for p in folder.glob("*.index.json"))
    hint = f"; it holds sharded weights ({sharded[0]}), save them unsharded" if sharded else ""
    raise DiffusersLayoutError(f"{folder} has no weights file (expected one of {', '.join(names)}){hint}")


def _check_config(folder: Path, ours: Mapping[str, Any], keys: tuple[str, ...], what: str) -> None:
    """Compare the architecture fields of `folder/config.json` with the config our YAML implies."""
    theirs = _read_json(folder / "config.json") if (folder / "config.json").is_file() else {}
    for key in keys:
        if key in theirs and theirs[key] is not None and _norm(theirs[key]) != _norm(ours[key]):
            family = ""
            if key == "cross_attention_dim":
                family = {
                    1024: " (an SD2.x model: use --config models/cldm_v21.yaml)",
                    2048: " (an SDXL model, which CuteNet does not support)",
                }.get(theirs[key], "")
            raise DiffusersLayoutError(
                f"{folder} holds a {what} with {key}={theirs[key]}, but the config needs {ours[key]}{family}"
            )


def _norm(value: Any) -> Any:
    return list(value) if isinstance(value, list | tuple) else value


def _stream_into(
    model: torch.nn.Module,
    path: Path,
    names: Mapping[str, str],
    fix: Callable[[str, torch.Tensor], torch.Tensor],
    *,
    prefix: str,
    allow_nonfinite: bool,
) -> LoadReport:
    """Check `path`'s tensors (named theirs → ours by `names`) against the model under `prefix`, then copy them in
    a chunk at a time."""
    shapes = load_state_dict(path, shapes_only=True)
    missing, unexpected = sorted(set(names) - set(shapes)), sorted(set(shapes) - set(names))
    unexpected = [k for k in unexpected if not k.endswith("position_ids")]  # a buffer older files carry
    if missing or unexpected:
        raise DiffusersLayoutError(
            f"{path} does not fit the config: missing {missing[:5]}{f' ({len(missing)} in all)' if len(missing) > 5 else ''}"
            f", unexpected {unexpected[:5]}{f' ({len(unexpected)} in all)' if len(unexpected) > 5 else ''}"
        )
    renamed = {names[k]: fix(names[k], v) for k, v in shapes.items() if k in names}
    try:
        kept, report = check_state_dict(model.state_dict(), renamed, prefixes=(prefix,))
    except CheckpointMismatchError as err:
        raise DiffusersLayoutError(f"{path}: {err}") from None
    copy_in_chunks(
        model,
        path,
        [k for k, ours in names.items() if ours in kept],
        rename=lambda k, v: (names[k], fix(names[k], v)),
        allow_nonfinite=allow_nonfinite,
    )
    return report


def _unchanged(key: str, value: torch.Tensor) -> torch.Tensor:
    return value


def load_pipeline(model: torch.nn.Module, folder: str | Path, *, allow_nonfinite: bool = False) -> LoadReport:
    """Copy a diffusers SD pipeline folder's UNet, VAE and text encoder into a ControlLDM (the ControlNet is left
    as it is). `tokenizer/`, `scheduler/` and the safety checker are not needed: CuteNet tokenizes with the CLIP BPE
    that open_clip ships and takes its schedule from the config; a `scheduler/` that disagrees is reported."""
    folder = Path(folder)
    if not is_pipeline_folder(folder):
        raise DiffusersLayoutError(f"{folder} is not a diffusers pipeline folder (no model_index.json or unet/)")
    for part in ("unet", "vae", "text_encoder"):
        if not (folder / part).is_dir():
            raise DiffusersLayoutError(
                f"{folder} has no {part}/ folder; a Stable Diffusion pipeline has unet/, vae/ and text_encoder/"
            )
    unet, vae, text = folder / "unet", folder / "vae", folder / "text_encoder"
    _check_config(
        unet,
        convert.diffusers_unet_config(model),
        ("cross_attention_dim", "block_out_channels", "layers_per_block", "in_channels"),
        "UNet",
    )
    _check_config(
        vae,
        convert.diffusers_vae_config(model),
        ("block_out_channels", "latent_channels", "norm_num_groups"),
        "VAE",
    )
    unet_spec, vae_levels = model.model.diffusion_model.spec, convert.vae_levels(model)
    parts = [
        (unet, DIFFUSERS_WEIGHTS, convert.UNET_PREFIX, lambda k: convert.unet_key(k, unet_spec), _unchanged),
        (
            vae,
            DIFFUSERS_WEIGHTS,
            convert.VAE_PREFIX,
            lambda k: convert.vae_key(k, vae_levels),
            convert.vae_tensor_from_diffusers,
        ),
    ]
    report = LoadReport()
    for part_folder, files, prefix, name, fix in parts:
        names = {name(k): prefix + k for k in convert.model_keys(model, prefix)}
        part = _stream_into(
            model, _weights_file(part_folder, files), names, fix, prefix=prefix, allow_nonfinite=allow_nonfinite
        )
        report.loaded += part.loaded
        report.kept_fresh += part.kept_fresh
    convert.check_clip_text(model)
    text_file = _weights_file(text, TRANSFORMERS_WEIGHTS)
    hub_layout = any(k.startswith("text_model.") for k in load_state_dict(text_file, shapes_only=True))
    names = {
        ("text_model." if hub_layout else "") + k: convert.TEXT_PREFIX + k
        for k in convert.model_keys(model, convert.TEXT_PREFIX)
    }
    report.loaded += _stream_into(
        model, text_file, names, _unchanged, prefix=convert.TEXT_PREFIX, allow_nonfinite=allow_nonfinite
    ).loaded
    _report_scheduler(folder, model)
    return report


def _report_scheduler(folder: Path, model: torch.nn.Module) -> None:
    path = folder / "scheduler" / "scheduler_config.json"
    if not path.is_file():
        return
    theirs = _read_json(path)
    ours = {
        "num_train_timesteps": model.num_timesteps,
        "beta_start": model.linear_start,
        "beta_end": model.linear_end,
        "beta_schedule": "scaled_linear",
    }
    differ = [
        f"{k}: {theirs[k]} there, {v} in the config"
        for k, v in ours.items()
        if k in theirs and (theirs[k] != v if isinstance(v, str | int) else abs(theirs[k] - v) > 1e-9)
    ]
    if differ:
        logger.warning(
            "%s disagrees with the config's diffusion schedule, which CuteNet uses: %s", path, "; ".join(differ)
        )


def load_diffusers_controlnet(model: torch.nn.Module, path: str | Path, *, allow_nonfinite: bool = False) -> LoadReport:
    """Copy a diffusers ControlNet (a folder with config.json, or its weights file) into `control_model.*`."""
    path = Path(path)
    if path.is_dir():
        _check_config(
            path,
            convert.diffusers_controlnet_config(model),
            ("cross_attention_dim", "block_out_channels", "layers_per_block", "conditioning_channels"),
            "ControlNet",
        )
        path = _weights_file(path, DIFFUSERS_WEIGHTS)
    spec = model.control_model.spec
    names = {
        convert.control_key(k, spec): convert.CONTROL_PREFIX + k
        for k in convert.model_keys(model, convert.CONTROL_PREFIX)
    }
    return _stream_into(model, path, names, _unchanged, prefix=convert.CONTROL_PREFIX, allow_nonfinite=allow_nonfinite)


def save_diffusers_controlnet(
    model: torch.nn.Module, folder: str | Path, *, thresholds: CannyThresholds | None = None
) -> Path:
    """Write the model's `control_model.*` as a diffusers ControlNet folder: config.json +
    diffusion_pytorch_model.safetensors (fp32, with the training data's canny `thresholds` in its header), each file
    atomically. `ControlNetModel.from_pretrained(folder)` loads it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().float().cpu() for k, v in model.state_dict().items() if k.startswith(convert.CONTROL_PREFIX)}
    dstate = convert.controlnet_to_diffusers(state, model)
    if not dstate:
        raise DiffusersLayoutError("no control_model.* tensors to export")
    metadata = {"format": "pt", "source": "cutenet", **threshold_metadata(thresholds)}
    save_state(dstate, folder / DIFFUSERS_WEIGHTS[0], metadata=metadata)
    config = {**convert.diffusers_controlnet_config(model), "_diffusers_version": "0.42.1"}
    with atomic_write(folder / "config.json") as tmp:
        tmp.write_text(json.dumps(config, indent=2) + "\n")
    return folder
