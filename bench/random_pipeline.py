"""Write a diffusers Stable Diffusion pipeline folder with random weights at a config's architecture.

    .venv/bin/python -m bench.random_pipeline --config models/cldm_v15.yaml --out /tmp/sd15-pipeline

For measuring the import of a pipeline folder (`tool_add_control.py FOLDER ...`) without a download: the folder
has the layout and file names `save_pretrained` writes (unet/, vae/, text_encoder/, model_index.json), in fp32.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from cldm import convert
from cldm.diffusers_io import DIFFUSERS_WEIGHTS, TRANSFORMERS_WEIGHTS
from cldm.loading import load_config
from cldm.weights import save_state
from ldm.flags import HelpFormatter
from ldm.util import instantiate_from_config


def write_pipeline(config_path: Path, out: Path, *, seed: int = 0) -> None:
    config = load_config(config_path)["model"]
    torch.manual_seed(seed)
    model = instantiate_from_config(config)
    state = model.state_dict()
    parts = {
        "unet": (convert.unet_to_diffusers, convert.diffusers_unet_config, DIFFUSERS_WEIGHTS[0]),
        "vae": (convert.vae_to_diffusers, convert.diffusers_vae_config, DIFFUSERS_WEIGHTS[0]),
        "text_encoder": (convert.text_encoder_to_transformers, convert.clip_text_config, TRANSFORMERS_WEIGHTS[0]),
    }
    for name, (to_diffusers, part_config, weights) in parts.items():
        (out / name).mkdir(parents=True, exist_ok=True)
        save_state({k: v.contiguous() for k, v in to_diffusers(state, model).items()}, out / name / weights)
        (out / name / "config.json").write_text(json.dumps(part_config(model), indent=2))
    (out / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--config", type=Path, default=Path("models/cldm_v15.yaml"))
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    write_pipeline(args.config, args.out)
    print(f"wrote a random-weight pipeline folder for {args.config} to {args.out}")


if __name__ == "__main__":
    main()
