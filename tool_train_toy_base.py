"""Pretrain the toy base model (the "Stable Diffusion" of the CPU quickstart) on the generated circles.

    python tool_train_toy_base.py --config models/cldm_toy.yaml --out models/toy_base.safetensors

Phase 1 fits the KL autoencoder to the toy targets; phase 2 fits the UNet and the text encoder to
denoise its latents from the colour prompts. The ControlNet is not involved: the output holds every
tensor of the config but `control_model.*`, in SD's key layout, ready for `tool_add_control.py`.
Parameters are stored in fp16 (the schedule buffers in fp32) to keep the committed file small.
The same seed on the same machine reproduces the file; other CPUs may differ in the last bits.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from cldm.model import load_config
from cldm.weights import save_state
from training.prompt_file import PROMPT_FILE
from training.toy_base import (
    PhaseSettings,
    build_base,
    encode_posteriors,
    latent_std,
    load_toy_images,
    train_autoencoder,
    train_denoiser,
)
from training.toy_data import write_toy_dataset


def base_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state to save: parameters in fp16, buffers (the diffusion schedule) in fp32 as SD stores them."""
    params = {name for name, _ in model.named_parameters()}
    return {k: (v.half() if k in params else v).contiguous() for k, v in model.state_dict().items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="models/cldm_toy.yaml", help="ControlLDM config whose base to train")
    p.add_argument("--data", default="training/toy", help="toy folder (generated from the config when missing)")
    p.add_argument("--ae-steps", type=int, default=4000, help="autoencoder steps")
    p.add_argument("--ae-batch-size", type=int, default=8)
    p.add_argument("--ae-lr", type=float, default=2e-3)
    p.add_argument("--unet-steps", type=int, default=1500, help="UNet + text encoder steps")
    p.add_argument("--unet-batch-size", type=int, default=32)
    p.add_argument("--unet-lr", type=float, default=1e-3)
    p.add_argument("--empty-prompt-p", type=float, default=0.1, help="unconditional share, for guidance")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("models/toy_base.safetensors"))
    p.add_argument("--work-dir", type=Path, default=Path("runs/toy_base"), help="phase-1 result, for reruns")
    args = p.parse_args(argv)
    config = load_config(args.config)
    data = Path(args.data)
    if not (data / PROMPT_FILE).is_file():
        toy = config.get("training", {}).get("toy_data") or {"n": 2000, "size": 64, "seed": 0}
        print(f"generating toy data in {data} ({toy})")
        write_toy_dataset(data, **toy)
    images, prompts = load_toy_images(data)
    torch.manual_seed(args.seed)
    model = build_base(config["model"])
    start = time.time()
    # Phase 1 is saved on its own, so a rerun after an interruption starts at phase 2.
    ae_file = args.work_dir / "autoencoder.safetensors"
    if ae_file.is_file():
        model.first_stage_model.load_state_dict(load_file(str(ae_file)))
        print(f"autoencoder: reusing {ae_file} (delete it to retrain)")
    else:
        train_autoencoder(
            model.first_stage_model,
            images,
            PhaseSettings(steps=args.ae_steps, batch_size=args.ae_batch_size, lr=args.ae_lr, seed=args.seed),
            log=print,
        )
        args.work_dir.mkdir(parents=True, exist_ok=True)
        save_state(model.first_stage_model.state_dict(), ae_file)
    posteriors = encode_posteriors(model.first_stage_model, images)  # N×2C×h×w
    std = latent_std(posteriors)
    print(f"latent std {std:.4f}: scale_factor 1/std = {1 / std:.5f} (config: {model.scale_factor})")
    if abs(model.scale_factor * std - 1) > 0.25:
        print(f"warning: set scale_factor: {1 / std:.5f} in {args.config} so the latents have unit variance")
    train_denoiser(
        model,
        posteriors,
        prompts,
        PhaseSettings(steps=args.unet_steps, batch_size=args.unet_batch_size, lr=args.unet_lr, seed=args.seed),
        empty_prompt_p=args.empty_prompt_p,
        log=print,
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_state(base_state(model), args.out, metadata={k: str(v) for k, v in vars(args).items()})  # how it was made
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.1f} MB) in {time.time() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
