"""Our ControlNet + locked UNet against diffusers' `ControlNetModel` + `UNet2DConditionModel`, same weights.

    .venv/bin/python -m bench.vs_diffusers                       # SD1.5 architecture, random weights, fp32
    .venv/bin/python -m bench.vs_diffusers --sizes 256 --ddim-steps 0 --train-size 0   # one figure only

It builds the architecture of `--config` with random weights, converts ours to diffusers with `cldm.convert`,
checks that both give the same ε, then times the two side by side in one process, interleaved (ours, theirs,
ours, ...), and prints the medians and the ratio (ours / theirs; below 1 is faster):

- one controlled denoiser call: the CFG batch (2) at each `--sizes` image side;
- `--ddim-steps` DDIM steps with guidance at `--ddim-size`: our sampler against diffusers' `DDIMScheduler` with
  the same timesteps;
- one training step at `--train-size`, batch 1: forward and backward through the ControlNet with the locked UNet
  taking no weight gradients, then AdamW over the ControlNet (ours: what `configure_optimizers` returns; theirs:
  `torch.optim.AdamW`, as diffusers' `train_controlnet.py` makes it). Latents and text contexts are given.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from cldm import convert
from cldm.loading import load_config
from ldm.flags import HelpFormatter
from ldm.models.diffusion.ddim import ddim_sample, guided_denoiser
from ldm.util import instantiate_from_config


def build(config_path: str) -> tuple[torch.nn.Module, torch.nn.Module, torch.nn.Module, dict]:
    """Our ControlLDM with random weights everywhere (zero convolutions too, so the control path counts) and the
    diffusers ControlNet and UNet holding the same weights."""
    from diffusers import ControlNetModel, UNet2DConditionModel

    config = load_config(config_path)["model"]
    torch.manual_seed(0)
    model = instantiate_from_config(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith(("control_model.", "model.")):
                p.normal_(std=0.02)
    state = model.state_dict()
    controlnet = ControlNetModel(**_public(convert.diffusers_controlnet_config(model))).eval()
    controlnet.load_state_dict(convert.controlnet_to_diffusers(state, model), strict=True)
    unet = UNet2DConditionModel(**_public(convert.diffusers_unet_config(model))).eval()
    unet.load_state_dict(convert.unet_to_diffusers(state, model), strict=True)
    unet.requires_grad_(False)
    return model, controlnet, unet, config


def _public(config: dict) -> dict:
    return {k: v for k, v in config.items() if not k.startswith("_")}


def _inputs(model: torch.nn.Module, side: int, batch: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    h = side // 8
    x = torch.randn(batch, 4, h, h, generator=g)  # B×C×H×W
    hint = torch.rand(batch, 3, side, side, generator=g)  # B×3×8H×8W
    context_dim = model.get_learned_conditioning([""]).shape[-1]  # the text encoder's width
    context = torch.randn(batch, 77, context_dim, generator=g)  # B×L×D
    return x, hint, context


def ours_eps(
    model: torch.nn.Module, x: torch.Tensor, t: torch.Tensor, hint: torch.Tensor, context: torch.Tensor
) -> torch.Tensor:
    return model.apply_model(x, t, {"c_concat": [hint], "c_crossattn": [context]})


def theirs_eps(
    controlnet: torch.nn.Module,
    unet: torch.nn.Module,
    x: torch.Tensor,
    t: torch.Tensor,
    hint: torch.Tensor,
    context: torch.Tensor,
) -> torch.Tensor:
    down, mid = controlnet(x, t, encoder_hidden_states=context, controlnet_cond=hint, return_dict=False)
    return unet(
        x, t, encoder_hidden_states=context, down_block_additional_residuals=down, mid_block_additional_residual=mid
    ).sample


def interleaved(ours: Callable[[], object], theirs: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Median seconds of each, timed alternately after one warm-up call each."""
    ours(), theirs()
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeats):
        for fn, bucket in ((ours, times[0]), (theirs, times[1])):
            start = time.perf_counter()
            fn()
            bucket.append(time.perf_counter() - start)
    return statistics.median(times[0]), statistics.median(times[1])


def denoiser_call(model, controlnet, unet, side: int, repeats: int) -> tuple[float, float, float]:
    x, hint, context = _inputs(model, side, 2)
    t = torch.tensor([500, 500])
    with torch.no_grad():
        a, b = ours_eps(model, x, t, hint, context), theirs_eps(controlnet, unet, x, t, hint, context)
        error = float((a - b).abs().max() / b.abs().max())
        ours_s, theirs_s = interleaved(
            lambda: ours_eps(model, x, t, hint, context),
            lambda: theirs_eps(controlnet, unet, x, t, hint, context),
            repeats,
        )
    return ours_s, theirs_s, error


def ddim(
    model, controlnet, unet, side: int, steps: int, repeats: int, scale: float = 9.0
) -> tuple[float, float, float]:
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        timestep_spacing="leading",
    )
    x, hint, context = _inputs(model, side, 1)
    uncond = torch.zeros_like(context)
    cond = {"c_concat": [hint], "c_crossattn": [context]}
    uncond_cond = {"c_concat": [hint], "c_crossattn": [uncond]}

    def ours() -> torch.Tensor:
        denoise = guided_denoiser(model.apply_model, cond, uncond_cond, scale)
        return ddim_sample(denoise, x, model.alphas_cumprod, steps=steps)[0]

    def theirs() -> torch.Tensor:
        scheduler.set_timesteps(steps)
        latents = x
        for t in scheduler.timesteps:
            batch = torch.cat([latents] * 2)  # the CFG batch: unconditional, conditional
            eps_u, eps_c = theirs_eps(
                controlnet, unet, batch, t.repeat(2), torch.cat([hint] * 2), torch.cat([uncond, context])
            ).chunk(2)
            latents = scheduler.step(eps_u + scale * (eps_c - eps_u), t, latents).prev_sample
        return latents

    with torch.no_grad():
        a, b = ours(), theirs()
        error = float((a - b).abs().max() / b.abs().max())
        ours_s, theirs_s = interleaved(ours, theirs, repeats)
    return ours_s, theirs_s, error


def train_step(model, controlnet, unet, side: int, repeats: int) -> tuple[float, float]:
    x, hint, context = _inputs(model, side, 1)
    t, noise = torch.tensor([500]), torch.randn_like(x)
    model.train()
    controlnet.train()
    ours_opt = model.configure_optimizers()
    theirs_opt = torch.optim.AdamW(controlnet.parameters(), lr=1e-5)
    acp = model.alphas_cumprod[t].view(-1, 1, 1, 1)
    noisy = acp.sqrt() * x + (1 - acp).sqrt() * noise  # B×C×H×W

    def ours() -> None:
        loss, _ = model.p_losses(x, {"c_concat": [hint], "c_crossattn": [context]}, t, noise)
        loss.backward()
        ours_opt.step()
        ours_opt.zero_grad(set_to_none=True)

    def theirs() -> None:
        loss = F.mse_loss(theirs_eps(controlnet, unet, noisy, t, hint, context), noise)
        loss.backward()
        theirs_opt.step()
        theirs_opt.zero_grad(set_to_none=True)

    return interleaved(ours, theirs, repeats)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--config", default="models/cldm_v15.yaml")
    p.add_argument("--sizes", type=int, nargs="*", default=[256, 512], help="image sides of the denoiser call")
    p.add_argument("--ddim-steps", type=int, default=20, help="DDIM steps (0: skip)")
    p.add_argument("--ddim-size", type=int, default=256)
    p.add_argument("--train-size", type=int, default=128, help="image side of the training step (0: skip)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs of each side (after a warm-up)")
    p.add_argument(
        "--channels-last", action="store_true", help="our UNet and ControlNet in channels-last memory format"
    )
    p.add_argument(
        "--compile",
        choices=["none", "ours", "both"],
        default="none",
        help="torch.compile our ControlNet and UNet (ControlLDM.compile_networks), or both sides'; each figure's "
        "warm-up call compiles, and only the timed calls are compared",
    )
    p.add_argument(
        "--freeze",
        action="store_true",
        help="with --compile: inductor's freezing (weights as constants, convolution and linear weights prepacked "
        "for the CPU; inference only)",
    )
    args = p.parse_args(argv)
    if args.freeze and args.compile == "none":
        p.error("--freeze applies to compiled models: add --compile ours or --compile both")
    model, controlnet, unet, _ = build(args.config)
    if args.channels_last:
        model.model.to(memory_format=torch.channels_last)
        model.control_model.to(memory_format=torch.channels_last)
    options = {"options": {"freezing": True}} if args.freeze else {}
    if args.compile != "none":
        model.compile_networks(**options)
    if args.compile == "both":
        controlnet.compile(**options)
        unet.compile(**options)
    print(
        f"config={args.config} fp32 threads={torch.get_num_threads()} channels_last={args.channels_last} "
        f"compile={args.compile} freeze={args.freeze}, median of {args.repeats}, interleaved"
    )
    print(f"{'what':<40s} {'ours s':>8s} {'diffusers s':>11s} {'ratio':>6s}  max |Δ|/max|ε|")
    for side in args.sizes:
        ours_s, theirs_s, error = denoiser_call(model, controlnet, unet, side, args.repeats)
        print(
            f"{f'denoiser call, CFG batch 2, {side}²':<40s} {ours_s:8.2f} {theirs_s:11.2f} {ours_s / theirs_s:6.2f}"
            f"  {error:.1e}"
        )
    if args.ddim_steps:
        ours_s, theirs_s, error = ddim(model, controlnet, unet, args.ddim_size, args.ddim_steps, args.repeats)
        print(
            f"{f'{args.ddim_steps}-step DDIM, CFG, {args.ddim_size}²':<40s} {ours_s:8.2f} {theirs_s:11.2f} "
            f"{ours_s / theirs_s:6.2f}  {error:.1e} (final latents)"
        )
    if args.train_size:
        ours_s, theirs_s = train_step(model, controlnet, unet, args.train_size, args.repeats)
        print(
            f"{f'training step, batch 1, {args.train_size}²':<40s} {ours_s:8.2f} {theirs_s:11.2f} "
            f"{ours_s / theirs_s:6.2f}"
        )


if __name__ == "__main__":
    main()
