"""Canny-to-image generation as in the original `gradio_canny2image.py`, usable without Gradio."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from einops import rearrange

from annotator.canny import CannyDetector
from annotator.util import HWC3, resize_image
from cldm.checkpoint_keys import load_weights_from_file
from cldm.model import create_model
from ldm.models.diffusion.ddim import DDIMSampler

logger = logging.getLogger(__name__)

MAX_INPUT_PIXELS = 64_000_000  # larger uploads are refused rather than resized in memory
PRECISIONS = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}


class GenerationInputError(ValueError):
    """A problem with the user's input, phrased for the person using the demo."""


@dataclass
class GenerationRequest:
    """The controls of the canny2image demo, with the original's defaults."""

    prompt: str = ""
    a_prompt: str = "best quality, extremely detailed"
    n_prompt: str = "longbody, lowres, bad anatomy, bad hands, missing fingers, extra digit, fewer digits, cropped, worst quality, low quality"
    num_samples: int = 1
    image_resolution: int = 512
    ddim_steps: int = 20
    guess_mode: bool = False
    strength: float = 1.0
    scale: float = 9.0
    seed: int = -1
    eta: float = 0.0
    low_threshold: int = 100
    high_threshold: int = 200


@dataclass
class GenerationResult:
    """The inverted edge map first (as the original shows it), then the samples; the seed actually used."""

    images: list[np.ndarray]
    seed: int
    notes: list[str] = field(default_factory=list)


@dataclass
class DemoModel:
    """A loaded ControlLDM with where its weights came from and how to run it."""

    model: torch.nn.Module
    description: str
    low_vram: bool = False
    autocast_dtype: torch.dtype | None = None

    @property
    def native_resolution(self) -> int:
        return int(self.model.image_size) * self.model.first_stage_model.downsample_factor


def load_demo_model(config: str | Path, *, ckpt: str | Path | None = None, base: str | Path | None = None,
                    control: str | Path | None = None, device: str | None = None, precision: str = "fp32",
                    low_vram: bool = False) -> DemoModel:
    """`ckpt` (a full ControlLDM file), or `base` (SD) + `control` (ControlNet only), or nothing (fresh weights)."""
    if ckpt is not None and (base is not None or control is not None):
        raise ValueError("give either --ckpt, or --base with --control, not both")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if precision == "fp16" and device == "cpu":
        raise ValueError("fp16 inference needs a GPU; use --precision fp32 or bf16 on CPU")
    model = create_model(config)
    parts = [str(config)]
    if ckpt is not None:
        load_weights_from_file(model, ckpt)
        parts.append(f"weights {ckpt}")
    if base is not None:
        load_weights_from_file(model, base, exclude=("control_model.",), ignore=("control_model.",))
        parts.append(f"base {base}")
    if control is not None:
        load_weights_from_file(model, control, prefixes=("control_model.",))
        parts.append(f"ControlNet {control}")
    if len(parts) == 1:
        parts.append("UNTRAINED random weights (train first, or pass --ckpt / --base + --control)")
    model = model.to(device).eval()
    return DemoModel(model, "; ".join(parts), low_vram=low_vram, autocast_dtype=PRECISIONS[precision])


def prepare_input(image: np.ndarray | None, resolution: int, *, min_resolution: int = 256) -> tuple[np.ndarray, list[str]]:
    """Check and convert the upload to uint8 RGB at `resolution`; notes say what was converted."""
    if image is None:
        raise GenerationInputError("Upload an image first: its canny edges steer the generation.")
    if not isinstance(image, np.ndarray) or image.ndim not in (2, 3):
        raise GenerationInputError("The upload is not a picture the demo can read (expected an H×W or H×W×C image).")
    if image.shape[0] * image.shape[1] > MAX_INPUT_PIXELS or min(image.shape[:2]) < 16:
        raise GenerationInputError(f"The image is {image.shape[1]}×{image.shape[0]} pixels; use one between 16 and "
                                   f"{int(MAX_INPUT_PIXELS ** 0.5)} pixels a side.")
    if not (min_resolution <= resolution <= 768 and resolution % 64 == 0):
        raise GenerationInputError(f"Resolution must be a multiple of 64 from {min_resolution} to 768, got {resolution}.")
    notes = []
    if image.dtype == np.uint16:
        notes.append("16-bit image converted to 8 bits.")
    if image.ndim == 2 or image.shape[2] in (1, 2):
        notes.append("Grayscale image converted to RGB.")
    elif image.shape[2] == 4:
        notes.append("Transparency flattened onto white.")
    try:
        rgb = HWC3(image)
    except (TypeError, ValueError) as err:
        raise GenerationInputError(f"Cannot use this image: {err}") from None
    return resize_image(rgb, resolution), notes


def prompt_notes(model: torch.nn.Module, texts: list[str]) -> list[str]:
    """Say when a prompt is longer than the text encoder reads (it keeps the first tokens, like SD)."""
    encoder = model.cond_stage_model
    notes = []
    for text in texts:
        n = encoder.count_tokens(text)
        if n > encoder.max_length:
            notes.append(f"The prompt has {n} tokens; the text encoder reads the first {encoder.max_length} "
                         "(the rest is cut off, as in Stable Diffusion).")
    return notes


def guess_mode_scales(strength: float, n: int, *, guess_mode: bool) -> list[float]:
    """Guess mode: strength × 0.825^(n−1−i), deep residuals strongest; else strength everywhere."""
    return [strength * 0.825 ** float(n - 1 - i) for i in range(n)] if guess_mode else [strength] * n


@torch.no_grad()
def sample_from_edges(demo: DemoModel, edges: np.ndarray, prompt: str, r: GenerationRequest, *, seed: int,
                      progress: Callable[[int, int], None] | None = None) -> list[np.ndarray]:
    """`r.num_samples` uint8 H×W×3 images steered by an edge map (uint8 H×W×3, white edges on black)."""
    model = demo.model
    h, w = edges.shape[:2]
    device = model.betas.device
    control = torch.from_numpy(edges.copy()).float().to(device) / 255.0  # H×W×3
    control = rearrange(torch.stack([control] * r.num_samples), "b h w c -> b c h w")  # B×3×H×W
    generator = torch.Generator(device=device).manual_seed(seed)
    if demo.low_vram:
        model.low_vram_shift(is_diffusing=False)
    cond = {"c_concat": [control], "c_crossattn": [model.get_learned_conditioning([prompt] * r.num_samples)]}
    un_cond = {"c_concat": None if r.guess_mode else [control],
               "c_crossattn": [model.get_learned_conditioning([r.n_prompt] * r.num_samples)]}
    f = model.first_stage_model.downsample_factor
    shape = (model.channels, h // f, w // f)
    if demo.low_vram:
        model.low_vram_shift(is_diffusing=True)
    model.control_scales = guess_mode_scales(r.strength, model.control_model.num_outputs, guess_mode=r.guess_mode)

    def on_step(i: int) -> None:
        if progress is not None:
            progress(i + 1, r.ddim_steps)

    with torch.autocast(device.type, dtype=demo.autocast_dtype, enabled=demo.autocast_dtype is not None):
        samples, _ = DDIMSampler(model).sample(r.ddim_steps, r.num_samples, shape, cond, eta=r.eta,
                                               unconditional_guidance_scale=r.scale, unconditional_conditioning=un_cond,
                                               callback=on_step, generator=generator)
        if demo.low_vram:
            model.low_vram_shift(is_diffusing=False)
        x = model.decode_first_stage(samples).float()  # B×3×H×W
    x = (rearrange(x, "b c h w -> b h w c") * 127.5 + 127.5).cpu().numpy().clip(0, 255).astype(np.uint8)
    return list(x)


@torch.no_grad()
def generate(demo: DemoModel, image: np.ndarray | None, request: GenerationRequest,
             progress: Callable[[int, int], None] | None = None) -> GenerationResult:
    """Edge map + `num_samples` images for the upload and prompt, reproducible from the returned seed."""
    r = request
    if not 1 <= r.num_samples <= 12:
        raise GenerationInputError(f"Number of images must be 1 to 12, got {r.num_samples}.")
    if not 1 <= r.ddim_steps <= 100:
        raise GenerationInputError(f"Steps must be 1 to 100, got {r.ddim_steps}.")
    if not 0 <= r.low_threshold <= r.high_threshold <= 255:
        raise GenerationInputError("Canny thresholds need 0 ≤ low ≤ high ≤ 255.")
    img, notes = prepare_input(image, r.image_resolution, min_resolution=min(256, demo.native_resolution))
    edges = HWC3(CannyDetector()(img, r.low_threshold, r.high_threshold))  # H×W×3
    seed = random.randint(0, 2**31 - 1) if r.seed == -1 else int(r.seed)
    prompt = f"{r.prompt}, {r.a_prompt}" if r.a_prompt else r.prompt
    notes += prompt_notes(demo.model, [prompt, r.n_prompt])
    images = sample_from_edges(demo, edges, prompt, r, seed=seed, progress=progress)
    return GenerationResult([255 - edges] + images, seed, notes)
