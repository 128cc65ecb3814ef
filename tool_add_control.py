"""Turn a Stable Diffusion checkpoint into the initial ControlLDM checkpoint for training.

    python tool_add_control.py models/v1-5-pruned.ckpt models/control_sd15_ini.ckpt

Every `control_model.X` that has a twin `model.diffusion_model.X` is copied from it; the hint encoder
and the zero convolutions keep their fresh initialisation. The output format follows OUTPUT's
extension (.ckpt/.pth: a torch pickle with 'state_dict'; .safetensors).
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

from cldm.model import load_config, load_state_dict
from cldm.weights import CheckpointMismatchError, ControlInit, build_control_init, save_state

OUTPUT_SUFFIXES = (".ckpt", ".pth", ".safetensors")


def check_paths(src: Path, dst: Path) -> None:
    """Refuse before any heavy work: a missing or wrong input, an existing output, a missing folder."""
    if src.is_dir():
        if (src / "model_index.json").exists() or (src / "unet").is_dir():
            raise ValueError(
                f"{src} is a diffusers folder, not an ldm checkpoint; use the single-file "
                "checkpoint (e.g. v1-5-pruned.ckpt or .safetensors)"
            )
        raise ValueError(f"{src} is a folder; give the checkpoint file (.ckpt, .pth or .safetensors)")
    if not src.is_file():
        raise ValueError(f"input checkpoint {src} does not exist; download v1-5-pruned.ckpt (see docs/training.md)")
    if dst.exists():
        raise ValueError(f"output {dst} already exists; remove it or choose another name")
    if not dst.parent.is_dir():
        raise ValueError(f"output folder {dst.parent} does not exist; create it first")
    if dst.suffix.lower() not in OUTPUT_SUFFIXES:
        raise ValueError(f"output {dst} must end in one of {', '.join(OUTPUT_SUFFIXES)}")


def check_family(sd_state: dict, config: Path) -> None:
    """Point SD2 files at the SD2 config and vice versa, before a long list of key mismatches."""
    is_sd2_file = any(k.startswith("cond_stage_model.model.") for k in sd_state)
    is_sd2_config = "v21" in config.name
    if is_sd2_file and not is_sd2_config:
        raise ValueError("this is an SD2.x checkpoint (OpenCLIP text encoder); add --config models/cldm_v21.yaml")
    if not is_sd2_file and is_sd2_config and any(k.startswith("cond_stage_model.transformer.") for k in sd_state):
        raise ValueError("this is an SD1.x checkpoint (CLIP text encoder); use --config models/cldm_v15.yaml")
    if not any(k.startswith("model.diffusion_model.") for k in sd_state):
        raise ValueError(
            f"no 'model.diffusion_model.*' keys: not a Stable Diffusion ldm checkpoint "
            f"(first keys: {', '.join(list(sd_state)[:3])})"
        )


def make_init(args: argparse.Namespace) -> ControlInit:
    """Check the paths, read INPUT and build the initial state; ValueError (one line) when anything is wrong."""
    check_paths(args.input, args.output)
    sd_state = load_state_dict(args.input)
    check_family(sd_state, args.config)
    try:
        return build_control_init(
            load_config(args.config)["model"],
            sd_state,
            seed=args.seed,
            source=args.input,
            allow_nonfinite=args.allow_nonfinite,
        )
    except CheckpointMismatchError as err:
        raise ValueError(f"{args.input} is not an SD checkpoint for {args.config}: {err}") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", type=Path, help="SD checkpoint (.ckpt, .pth or .safetensors)")
    parser.add_argument("output", type=Path, help="ControlLDM checkpoint to write (.ckpt, .pth or .safetensors)")
    parser.add_argument("--config", type=Path, default=Path("models/cldm_v15.yaml"), help="model config")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fresh hint encoder (same input, same file)")
    parser.add_argument(
        "--allow-nonfinite", action="store_true", help="accept NaN or inf in INPUT (refused by default)"
    )
    args = parser.parse_args(argv)
    try:
        init = make_init(args)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    save_state(init.state, args.output)
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
