"""Export a trained ControlNet for other tools: a diffusers ControlNet folder, or the ldm release file.

    python tool_export_control.py runs/sd15_canny_dogs runs/sd15_canny_dogs/control_diffusers --format diffusers
    python tool_export_control.py control.safetensors out/ --format diffusers --config models/cldm_v15.yaml
    python tool_export_control.py models/control_sd15_canny.pth control_sd15_canny.safetensors --format ldm
    python tool_export_control.py lllyasviel-control_v11p_sd15_canny/ control_canny.safetensors --format ldm

SRC is a run folder (its control.safetensors and config.yaml), a ControlNet file (control_model.* keys), a full
ControlLDM file, or a diffusers ControlNet folder. `--format diffusers` writes config.json +
diffusion_pytorch_model.safetensors, which `diffusers.ControlNetModel.from_pretrained(OUT)` loads; `--format ldm`
writes the control_model.* safetensors that ComfyUI and the A1111 extension load.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from cldm.diffusers_io import save_diffusers_controlnet
from cldm.edge_record import recorded_thresholds
from cldm.loading import load_config, load_control
from cldm.weights import export_control
from ldm.flags import HelpFormatter
from ldm.util import check_writable, instantiate_from_config
from training.checkpoint import CONTROL_FILE

RUN_CONFIG = "config.yaml"


def resolve_source(src: Path, config: Path | None) -> tuple[Path, Path]:
    """(the ControlNet weights, the config they belong to); a run folder names both."""
    if src.is_dir() and (src / CONTROL_FILE).is_file():
        return src / CONTROL_FILE, config or src / RUN_CONFIG
    if not src.exists():
        raise FileNotFoundError(f"{src} does not exist")
    if config is None:
        raise ValueError(f"{src} is not a run folder: give the model config with --config (e.g. models/cldm_v15.yaml)")
    return src, config


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("src", type=Path, help="run folder, ControlNet file, full ControlLDM file or diffusers ControlNet")
    p.add_argument("out", type=Path, help="folder (--format diffusers) or .safetensors file (--format ldm)")
    p.add_argument("--format", choices=("diffusers", "ldm"), required=True, help="what to write")
    p.add_argument("--config", type=Path, help="model config (default: the run folder's config.yaml)")
    p.add_argument("--allow-nonfinite", action="store_true", help="export weights holding NaN or inf")
    args = p.parse_args(argv)
    try:
        weights, config_path = resolve_source(args.src, args.config)
        if args.format == "ldm" and args.out.suffix.lower() != ".safetensors":
            raise ValueError(f"--format ldm writes a .safetensors file, got {args.out}")
        if args.out.exists():
            raise ValueError(f"{args.out} already exists; delete it or choose another output (nothing was written)")
        config = load_config(config_path)["model"]
        model = instantiate_from_config(config)
        load_control(model, weights, allow_nonfinite=args.allow_nonfinite)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        check_writable(args.out, folder=args.format == "diffusers")
        if args.format == "ldm":
            export_control(model, args.out)
        else:
            save_diffusers_controlnet(model, args.out, thresholds=recorded_thresholds(weights))
    except (OSError, ValueError) as err:  # nothing half-written stays to block the corrected command
        if args.out.is_dir():
            shutil.rmtree(args.out, ignore_errors=True)
        else:
            args.out.unlink(missing_ok=True)
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {args.out} ({args.format}) from {weights}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
