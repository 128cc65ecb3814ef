r"""Turn a Stable Diffusion checkpoint into the initial ControlLDM checkpoint for training.

    python tool_add_control.py models/v1-5-pruned.ckpt models/control_sd15_ini.ckpt
    python tool_add_control.py models/stable-diffusion-v1-5 models/control_sd15_ini.safetensors   # diffusers folder
    python tool_add_control.py models/v1-5-pruned.ckpt models/canny_ini.safetensors \
        --control-from models/control_v11p_sd15_canny   # fine-tune a public ControlNet instead

INPUT is an ldm checkpoint file or a diffusers pipeline folder. Every `control_model.X` that has a twin
`model.diffusion_model.X` is copied from it; the hint encoder and the zero convolutions keep their fresh
initialisation. With --control-from the whole ControlNet comes from an existing one instead. The output format
follows OUTPUT's extension (.ckpt/.pth: a torch pickle with 'state_dict'; .safetensors).
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

import torch

from cldm.diffusers_io import is_pipeline_folder
from cldm.loading import load_base, load_config, load_control
from cldm.weights import (
    CheckpointMismatchError,
    ControlInit,
    LoadReport,
    build_control_init,
    load_state_dict,
    save_state,
)
from ldm.flags import HelpFormatter, add_flags, preparse
from ldm.util import check_writable
from training.settings import TrainSettings

OUTPUT_SUFFIXES = (".ckpt", ".pth", ".safetensors")


def check_paths(src: Path, dst: Path) -> None:
    """Refuse before any heavy work: a missing or wrong input, an existing output, a missing folder."""
    if src.is_dir() and not is_pipeline_folder(src):
        raise ValueError(
            f"{src} is a folder but not a diffusers pipeline (no model_index.json or unet/); give a "
            "pipeline folder or the checkpoint file (.ckpt, .pth or .safetensors)"
        )
    if not src.exists():
        raise ValueError(f"input checkpoint {src} does not exist; download v1-5-pruned.ckpt (see docs/training.md)")
    if dst.exists():
        raise ValueError(f"output {dst} already exists; remove it or choose another name")
    if not dst.parent.is_dir():
        raise ValueError(f"output folder {dst.parent} does not exist; create it first")
    if dst.suffix.lower() not in OUTPUT_SUFFIXES:
        raise ValueError(f"output {dst} must end in one of {', '.join(OUTPUT_SUFFIXES)}")
    check_writable(dst)  # a read-only or full folder fails now, not after the weights are built


def check_family(src: Path, sd_state: dict, config: Path) -> None:  # the keys of an ldm file, from its header
    """Point SD2 files at the SD2 config and vice versa, and name LoRA files, before a long list of key mismatches."""
    if any("lora" in k for k in sd_state):
        raise ValueError(f"{src} holds LoRA adapter weights, not a Stable Diffusion checkpoint; give the base model")
    is_sd2_file = any(k.startswith("cond_stage_model.model.") for k in sd_state)
    is_sd2_config = "v21" in config.name
    if is_sd2_file and not is_sd2_config:
        raise ValueError(f"{src} is an SD2.x checkpoint (OpenCLIP text encoder); add --config models/cldm_v21.yaml")
    if not is_sd2_file and is_sd2_config and any(k.startswith("cond_stage_model.transformer.") for k in sd_state):
        raise ValueError(f"{src} is an SD1.x checkpoint (CLIP text encoder); use --config models/cldm_v15.yaml")
    if not any(k.startswith("model.diffusion_model.") for k in sd_state):
        raise ValueError(
            f"{src} has no 'model.diffusion_model.*' keys: not a Stable Diffusion ldm checkpoint "
            f"(first keys: {', '.join(list(sd_state)[:3])})"
        )


def make_init(args: argparse.Namespace) -> ControlInit:
    """Check the paths, read INPUT and build the initial state; ValueError (one line) when anything is wrong."""
    check_paths(args.input, args.output)
    if args.input.is_file():
        check_family(args.input, load_state_dict(args.input, shapes_only=True), args.config)
    config = load_config(args.config)["model"]

    def control(model: torch.nn.Module) -> LoadReport:
        return load_control(model, args.control_from, allow_nonfinite=args.allow_nonfinite)

    try:
        return build_control_init(
            config,
            lambda model: load_base(model, args.input, allow_nonfinite=args.allow_nonfinite),
            seed=args.seed,
            load_control=control if args.control_from else None,
        )
    except CheckpointMismatchError as err:
        raise ValueError(f"{args.input} is not an SD checkpoint for {args.config}: {err}") from None


DEFAULT_CONFIG = "models/cldm_v15.yaml"
# The training settings this tool shares with training's own making of `init` (the same function, the same values).
SHARED = ("seed", "control_from", "allow_nonfinite")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    config_path = preparse(argv, "--config", DEFAULT_CONFIG)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument(
        "input", type=Path, help="SD checkpoint (.ckpt, .pth or .safetensors) or diffusers pipeline folder"
    )
    parser.add_argument("output", type=Path, help="ControlLDM checkpoint to write (.ckpt, .pth or .safetensors)")
    parser.add_argument("--config", type=Path, default=Path(DEFAULT_CONFIG), help="model config")
    defaults = training_defaults(config_path)
    add_flags(parser, TrainSettings, only=SHARED, defaults=defaults)
    args = parser.parse_args(argv)
    fallback = {"seed": 0, "control_from": None, "allow_nonfinite": False}  # a config without a training section
    for name in SHARED:
        if not hasattr(args, name):
            setattr(args, name, getattr(defaults, name) if defaults is not None else fallback[name])
    args.control_from = Path(args.control_from) if args.control_from else None
    return args


def training_defaults(config_path: str) -> TrainSettings | None:
    try:
        return TrainSettings.from_config(load_config(config_path).get("training"), config_path)
    except (FileNotFoundError, ValueError):
        return None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        init = make_init(args)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        save_state(init.state, args.output)
    except OSError as err:  # the disk filled up while writing: nothing half-written is left
        print(f"error: cannot write {args.output} ({err.strerror}); free some space and run again", file=sys.stderr)
        return 2
    if args.control_from:
        print(f"the ControlNet comes from {args.control_from}")
    blocks = Counter(".".join(k.split(".")[:2]) for k in init.fresh)
    print(f"copied {len(init.copied)} ControlNet tensors from their UNet twins (model.diffusion_model.*)")
    print(f"newly initialised {len(init.fresh)} ControlNet tensors (no twin in the UNet):")
    for block, n in sorted(blocks.items()):
        print(f"  {block}.*  ({n} tensors)")
    if init.kept_fresh:
        print(f"added (not in the input file): {', '.join(init.kept_fresh)}")
    if init.dropped_extras:
        print(f"dropped {len(init.dropped_extras)} extra entries of the input (EMA copy, position_ids)")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
