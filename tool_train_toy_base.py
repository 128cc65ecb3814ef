"""Pretrain the toy base model (the "Stable Diffusion" of the CPU quickstart) on generated circles.

    python tool_train_toy_base.py --config models/cldm_toy.yaml --out models/toy_base.safetensors
    python tool_train_toy_base.py --score models/toy_base.safetensors   # the autoencoder's round trip

Phase 1 fits the KL autoencoder to fresh circles; phase 2 fits the UNet and the text encoder to
denoise its latents from the colour prompts. The ControlNet is not involved: the output holds every
tensor of the config but `control_model.*`, in SD's key layout, ready for `tool_add_control.py`.
Parameters are stored in fp16 (the schedule buffers in fp32) to keep the committed file small.
The same seed on the same machine reproduces the file; other CPUs may differ in the last bits.

After phase 1 (and with --score) it prints the autoencoder's round trip on the held-out pairs: canny
of the reconstruction against canny of the target (pixel-exact and 1-pixel tolerant edge F1), and how
often the reconstructed fill is still the named colour. No sample can beat these figures.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from annotator.canny import CannyDetector
from cldm.loading import load_config
from cldm.sampling import images_to_uint8
from cldm.weights import load_state_dict, save_state
from evaluation.evaluate_control import ControlScores
from ldm.flags import HelpFormatter
from ldm.models.autoencoder import AutoencoderKL
from pairs.prompt_file import PROMPT_FILE, VAL_PROMPT_FILE
from pairs.toy_palette import COLOURS
from training.data.toy_data import write_toy_dataset
from training.toy_base import (
    PhaseSettings,
    ToyStream,
    build_base,
    encode_posteriors,
    latent_std,
    load_toy_images,
    start_with_small_posterior_variance,
    train_autoencoder,
    train_denoiser,
)


def base_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state to save: parameters in fp16, buffers (the diffusion schedule) in fp32 as SD stores them."""
    params = {name for name, _ in model.named_parameters()}
    return {k: (v.half() if k in params else v).contiguous() for k, v in model.state_dict().items()}


@torch.no_grad()
def reconstruction_scores(ae: AutoencoderKL, images: torch.Tensor, prompts: list[str]) -> dict[str, Any]:
    """The autoencoder's round trip (encode → posterior mode → decode) on N×3×H×W images in [−1, 1], scored as
    samples are: canny of the reconstruction against canny of the image."""
    recon = torch.cat([ae.decode(ae.encode(images[i : i + 64]).mode()) for i in range(0, len(images), 64)])
    canny, scores = CannyDetector(), ControlScores(tolerance=1, palette=COLOURS)
    for got, want, prompt in zip(images_to_uint8(recon), images_to_uint8(images), prompts):
        scores.add(canny(got), canny(want), got, want, prompt)  # the toy set's edges: the default thresholds
    error = (recon.clamp(-1, 1) - images).abs().mean(dim=(0, 2, 3))  # 3: per RGB channel
    return scores.summary() | {
        "channel_error": [round(float(e), 3) for e in error],
        "colour_by_fill": scores.colour_hits_by("fill"),
        "colour_by_background": scores.colour_hits_by("background"),
    }


def print_reconstruction_scores(ae: AutoencoderKL, data: Path) -> None:
    images, prompts = load_toy_images(data, VAL_PROMPT_FILE)
    r = reconstruction_scores(ae, images, prompts)
    colour = "-" if r["colour_accuracy"] is None else f"{r['colour_accuracy']:.0%}"
    print(
        f"autoencoder round trip on {len(images)} held-out targets: edge F1 {r['edge_f1']:.3f} (pixel-exact), "
        f"{r['edge_f1_tolerant']:.3f} (1-pixel tolerance), fill colour kept {colour}, "
        f"mean |error| per RGB channel {r['channel_error']} (images in [-1, 1])"
    )
    for part in ("fill", "background"):
        counts = ", ".join(f"{name} {hits}/{n}" for name, (hits, n) in r[f"colour_by_{part}"].items())
        print(f"  fill colour kept, by {part}: {counts}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--config", default="models/cldm_toy.yaml", help="ControlLDM config whose base to train")
    p.add_argument("--data", default="training/toy", help="toy folder (generated from the config when missing)")
    p.add_argument("--score", type=Path, help="only print the autoencoder round trip of this base file")
    p.add_argument("--ae-steps", type=int, default=3000, help="autoencoder steps")
    p.add_argument("--ae-batch-size", type=int, default=8)
    p.add_argument("--ae-lr", type=float, default=5e-4)
    p.add_argument("--unet-steps", type=int, default=3000, help="UNet + text encoder steps")
    p.add_argument("--unet-images", type=int, default=10000, help="fresh circles the UNet phase trains on")
    p.add_argument("--unet-batch-size", type=int, default=32)
    p.add_argument("--unet-lr", type=float, default=1e-3)
    p.add_argument("--empty-prompt-p", type=float, default=0.1, help="unconditional share, for guidance")
    p.add_argument(
        "--any-scale-factor",
        action="store_true",
        help="train phase 2 even when the config's scale_factor does not give the latents unit variance (trials)",
    )
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
    torch.manual_seed(args.seed)
    model = build_base(config["model"])
    if args.score is not None:
        state = {k: v.float() for k, v in load_state_dict(args.score).items() if k.startswith("first_stage_model.")}
        model.load_state_dict(state, strict=False)
        print_reconstruction_scores(model.first_stage_model.eval(), data)
        return 0
    size = int(config["model"]["params"]["first_stage_config"]["params"]["ddconfig"]["resolution"])
    start = time.time()
    # Phase 1 is saved on its own, so a rerun after an interruption starts at phase 2.
    ae_file = args.work_dir / "autoencoder.safetensors"
    if ae_file.is_file():
        model.first_stage_model.load_state_dict(load_file(str(ae_file)))
        print(f"autoencoder: reusing {ae_file} (delete it to retrain)")
    else:
        start_with_small_posterior_variance(model.first_stage_model)
        train_autoencoder(
            model.first_stage_model,
            ToyStream(size, seed=args.seed),
            PhaseSettings(steps=args.ae_steps, batch_size=args.ae_batch_size, lr=args.ae_lr, seed=args.seed),
            log=print,
        )
        args.work_dir.mkdir(parents=True, exist_ok=True)
        save_state(model.first_stage_model.state_dict(), ae_file)
    print_reconstruction_scores(model.first_stage_model, data)
    images, prompts = ToyStream(size, seed=args.seed + 1).batch(args.unet_images)
    posteriors = encode_posteriors(model.first_stage_model, images)  # N×2C×h×w
    std = latent_std(posteriors)
    print(f"latent std {std:.4f}: scale_factor 1/std = {1 / std:.5f} (config: {model.scale_factor})")
    if abs(model.scale_factor * std - 1) > 0.25 and not args.any_scale_factor:
        print(
            f"error: the latents would not have unit variance: set scale_factor: {1 / std:.5f} in {args.config} "
            f"and run this again (it reuses the autoencoder in {args.work_dir})",
            file=sys.stderr,
        )
        return 2
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
