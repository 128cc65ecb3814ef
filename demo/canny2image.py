"""The canny2image demo's logic, as in the original `gradio_canny2image.py`: upload checks, the request and its
result, usable without Gradio. Sampling itself is `cldm.sampling.sample`."""

from __future__ import annotations

import logging
import random
import typing
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from annotator.canny import DEFAULT_THRESHOLDS, CannyDetector, CannyThresholds
from annotator.util import HWC3, UnreadableImage, read_rgb, resize_image, resized_size
from cldm.edge_record import recorded_thresholds
from cldm.loading import load_config, load_model
from cldm.sampling import guess_mode_scales, hint_from_edges, images_to_uint8, sample
from ldm.flags import knob
from pairs.manifest import edge_thresholds

logger = logging.getLogger(__name__)

MAX_INPUT_PIXELS = 64_000_000  # larger uploads are refused rather than resized in memory
MAX_ASPECT = 4  # long side / short side: the resize scales the short side, so a thin strip would become huge
MAX_RESOLUTION = 768
PREVIEW_SIDE = 1024  # the page's preview of an upload: enough for a 256-pixel-high box on any screen
# The numeric controls: (minimum, maximum, label). The page's sliders and `generate`'s checks both read them.
BOUNDS = {
    "num_samples": (1, 12, "Images"),
    "ddim_steps": (1, 100, "Steps"),
    "strength": (0.0, 2.0, "Control strength"),
    "scale": (0.1, 30.0, "Guidance scale"),
    "seed": (-1, 2**31 - 1, "Seed (-1 = random)"),
    "eta": (0.0, 1.0, "eta (DDIM)"),
    "low_threshold": (1, 255, "Canny low threshold"),
    "high_threshold": (1, 255, "Canny high threshold"),
}
PRECISIONS = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}


class GenerationInputError(ValueError):
    """A problem with the user's input, phrased for the person using the demo."""


@dataclass
class GenerationRequest:
    """The controls of the canny2image demo, with the original's defaults: the page's sliders and the batch mode's
    flags (gradio_canny2image.py) both come from these fields."""

    prompt: str = knob("the prompt", default="", cli=False)  # batch mode's --prompt has no config default
    a_prompt: str = knob("added prompt", default="best quality, extremely detailed")
    n_prompt: str = knob(
        "negative prompt",
        default="longbody, lowres, bad anatomy, bad hands, missing fingers, extra digit, fewer digits, cropped, "
        "worst quality, low quality",
    )
    num_samples: int = knob("images to generate", default=1)
    image_resolution: int | None = knob(
        "short side in pixels (none: the model's native size)", default=None, flag="--resolution"
    )
    ddim_steps: int = knob("DDIM steps", default=20, flag="--steps")
    guess_mode: bool = knob("guess mode: the control alone, without the prompt's guidance on it", default=False)
    strength: float = knob("control strength", default=1.0)
    scale: float = knob("guidance scale", default=9.0)
    seed: int = knob("seed (-1: random)", default=-1)
    eta: float = knob("DDIM eta", default=0.0)
    low_threshold: int = knob(
        "canny low threshold (the ControlNet's learned one wins over the config's)", default=DEFAULT_THRESHOLDS.low
    )
    high_threshold: int = knob("canny high threshold (likewise)", default=DEFAULT_THRESHOLDS.high)


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
    defaults: GenerationRequest = field(default_factory=GenerationRequest)  # what the page and batch mode start from

    @property
    def native_resolution(self) -> int:
        return int(self.model.image_size) * self.model.first_stage_model.downsample_factor


def load_demo_model(
    config: str | Path,
    *,
    ckpt: str | Path | None = None,
    base: str | Path | None = None,
    control: str | Path | None = None,
    device: str | None = None,
    precision: str = "fp32",
    low_vram: bool = False,
    allow_nonfinite: bool = False,
    data: str | Path | None = None,
) -> DemoModel:
    """`ckpt` (a full ControlLDM file), or `base` (SD) + `control` (ControlNet only), or nothing (fresh weights).
    The canny thresholds start at those the ControlNet learned: `data`'s (a prepared folder), else the ones its
    `control` file records, else the config's `demo:` node's, else the original's."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if precision == "fp16" and device == "cpu":
        raise ValueError("fp16 inference needs a GPU; use --precision fp32 or bf16 on CPU")
    defaults = request_defaults(load_config(config).get("demo"), config)
    model, description = load_model(config, ckpt=ckpt, base=base, control=control, allow_nonfinite=allow_nonfinite)
    thresholds = learned_thresholds(defaults, control=control, data=data)
    defaults = replace(defaults, low_threshold=thresholds.low, high_threshold=thresholds.high)
    return DemoModel(
        model.to(device).eval(),
        description,
        low_vram=low_vram,
        autocast_dtype=PRECISIONS[precision],
        defaults=defaults,
    )


def request_defaults(node: dict[str, Any] | None, source: str | Path) -> GenerationRequest:
    """The original's request defaults, with a config's optional `demo:` node over them (a model whose text
    encoder never saw SD's added and negative prompts sets them empty)."""
    node = {} if node is None else node
    if not isinstance(node, dict):
        raise ValueError(f"{source}: demo must be a mapping of request fields, got {node!r}")
    known = {f.name for f in fields(GenerationRequest)} - {"prompt"}
    unknown = sorted(set(node) - known)
    if unknown:
        raise ValueError(f"{source}: demo section has unknown keys {unknown}; known: {sorted(known)}")
    values = {}
    for name, value in node.items():
        expected = field_type(name)
        if value is None and name == "image_resolution":  # none: the model's native size
            values[name] = None
            continue
        if not (type(value) is expected or (expected is float and type(value) is int)):  # `scale: 9` is a float
            raise ValueError(f"{source}: demo.{name} must be a {expected.__name__}, got {value!r}")
        values[name] = expected(value)
    return replace(GenerationRequest(), **values)


def field_type(name: str) -> type:
    """The type of a GenerationRequest field (int for `image_resolution: int | None`)."""
    kind = typing.get_type_hints(GenerationRequest)[name]
    return next((a for a in typing.get_args(kind) if a is not type(None)), kind)


def learned_thresholds(
    defaults: GenerationRequest, *, control: str | Path | None, data: str | Path | None
) -> CannyThresholds:
    """The canny thresholds to serve: the data's (dataset.json), else those recorded in the ControlNet file, else
    the configured ones; each source that disagrees with the one used is said once."""
    configured = CannyThresholds(defaults.low_threshold, defaults.high_threshold)
    sources = [
        (f"the data in {data}", edge_thresholds(data) if data is not None else None),
        (f"the weights {control}", recorded_thresholds(control) if control is not None else None),
        ("the config", configured),
    ]
    known = [(where, t) for where, t in sources if t is not None]
    where, used = known[0]
    for other, t in known[1:]:
        if t != used:
            logger.warning("serving canny %s (from %s), not %s (from %s)", used, where, t, other)
    return used


def prepare_input(
    image: np.ndarray | None, resolution: int, *, min_resolution: int = 256
) -> tuple[np.ndarray, list[str]]:
    """Check and convert the upload to uint8 RGB at `resolution`; notes say what was converted."""
    if image is None:
        raise GenerationInputError("Upload an image first: its canny edges steer the generation.")
    if not isinstance(image, np.ndarray) or image.ndim not in (2, 3):
        raise GenerationInputError("The upload is not a picture the demo can read (expected an H×W or H×W×C image).")
    check_pixels(image.shape[1], image.shape[0])
    if not (min_resolution <= resolution <= MAX_RESOLUTION and resolution % 64 == 0):
        raise GenerationInputError(
            f"Resolution must be a multiple of 64 from {min_resolution} to {MAX_RESOLUTION}, got {resolution}."
        )
    h, w = image.shape[:2]
    if max(h, w) > MAX_ASPECT * min(h, w):
        raise GenerationInputError(
            f"The image is {w}×{h} pixels, {max(h, w) / min(h, w):.0f} times longer than wide; the demo takes "
            f"images up to {MAX_ASPECT}:1. Crop it first."
        )
    out_h, out_w = resized_size(h, w, resolution)
    assert out_h * out_w <= MAX_ASPECT * (resolution + 64) ** 2  # what the aspect bound guarantees
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


def check_pixels(width: int, height: int) -> None:
    if width * height > MAX_INPUT_PIXELS or min(width, height) < 16:
        raise GenerationInputError(
            f"The image is {width}×{height} pixels; use one between 16 and {int(MAX_INPUT_PIXELS**0.5)} pixels a side."
        )


def read_upload(path: str | Path, *, preview: bool = False) -> np.ndarray:
    """An uploaded file as H×W×3 uint8 RGB, read by the project's one image reader (annotator.util.read_rgb: EXIF
    turn, 16-bit by range, any mode), so the demo's edge map is made from the pixels training reads;
    GenerationInputError saying why when it is not a picture. The size is checked from the file's header before
    anything is decoded, so a small file that claims a huge picture (a deflate TIFF of 169 megapixels is 1 MB)
    never reaches memory. `preview` gives at most PREVIEW_SIDE pixels a side (a JPEG is decoded at that scale
    directly) for the page to show."""
    try:
        with Image.open(path) as image:
            check_pixels(*image.size)
    except Image.DecompressionBombError:
        raise GenerationInputError(
            f"The upload is too large to open safely (more than {Image.MAX_IMAGE_PIXELS * 2:,} pixels)."
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise GenerationInputError(
            f"The upload is not a picture the demo can read ({type(err).__name__}); use a PNG, JPEG or WebP image."
        ) from None
    try:
        return read_rgb(path, name="the upload", fit=PREVIEW_SIDE if preview else None)
    except UnreadableImage as err:
        raise GenerationInputError(
            f"The upload is not a picture the demo can read ({err.reason}); use a PNG, JPEG or WebP image."
        ) from None


def prompt_notes(model: torch.nn.Module, texts: list[str]) -> list[str]:
    """Say when a prompt is longer than the text encoder reads (it keeps the first tokens, like SD)."""
    encoder = model.cond_stage_model
    notes = []
    for text in texts:
        n = encoder.count_tokens(text)
        if n > encoder.max_length:
            notes.append(
                f"The prompt has {n} tokens; the text encoder reads the first {encoder.max_length} "
                "(the rest is cut off, as in Stable Diffusion)."
            )
    return notes


def sample_from_edges(
    demo: DemoModel,
    edges: np.ndarray,
    prompt: str,
    r: GenerationRequest,
    *,
    seed: int,
    progress: Callable[[int, int], None] | None = None,
) -> list[np.ndarray]:
    """`r.num_samples` uint8 H×W×3 images steered by an edge map (uint8 H×W×3, white edges on black)."""
    model = demo.model
    device = model.betas.device
    hint = hint_from_edges(edges, r.num_samples, device)  # B×3×H×W

    def on_step(i: int) -> None:
        if progress is not None:
            progress(i + 1, r.ddim_steps)

    images = sample(
        model,
        hint,
        [prompt] * r.num_samples,
        [r.n_prompt] * r.num_samples,
        control_scales=guess_mode_scales(r.strength, model.control_model.num_outputs, guess_mode=r.guess_mode),
        steps=r.ddim_steps,
        guidance_scale=r.scale,
        eta=r.eta,
        hint_in_uncond=not r.guess_mode,
        generator=torch.Generator(device=device).manual_seed(seed),
        callback=on_step,
        low_vram=demo.low_vram,
        autocast_dtype=demo.autocast_dtype,
    )  # B×3×H×W
    return images_to_uint8(images)


@torch.no_grad()
def generate(
    demo: DemoModel,
    image: np.ndarray | None,
    request: GenerationRequest,
    progress: Callable[[int, int], None] | None = None,
) -> GenerationResult:
    """Edge map + `num_samples` images for the upload and prompt, reproducible from the returned seed."""
    r = request
    for name, (low, high, label) in BOUNDS.items():
        value = getattr(r, name)
        if not low <= value <= high:  # also refuses NaN
            raise GenerationInputError(f"{label} must be from {low} to {high}, got {value}.")
    if not r.low_threshold <= r.high_threshold:
        raise GenerationInputError(
            f"The canny low threshold ({r.low_threshold}) must not exceed the high one ({r.high_threshold})."
        )
    resolution = r.image_resolution or demo.native_resolution
    img, notes = prepare_input(image, resolution, min_resolution=min(256, demo.native_resolution))
    edges = HWC3(CannyDetector()(img, r.low_threshold, r.high_threshold))  # H×W×3
    seed = random.randint(0, 2**31 - 1) if r.seed == -1 else int(r.seed)
    prompt = f"{r.prompt}, {r.a_prompt}" if r.a_prompt else r.prompt
    notes += prompt_notes(demo.model, [prompt, r.n_prompt])
    images = sample_from_edges(demo, edges, prompt, r, seed=seed, progress=progress)
    return GenerationResult([255 - edges] + images, seed, notes)
