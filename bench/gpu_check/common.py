"""The shared pieces of the GPU check: its plan and table rows, model building, inputs and the small helpers."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cldm.loading import load_config
from training.run_build import instantiate_model
from training.settings import ModelOptions

ROOT = Path(__file__).resolve().parents[2]


PROMPT = "a photograph of a corgi on the grass"


@dataclass
class Row:
    """One line of the table: a figure, and for checks whether it passed."""

    section: str
    name: str
    value: str
    passed: bool | None = None
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Plan:
    config: str
    device: str
    resolution: int
    batch: int
    max_batch: int
    steps: int
    sample_batch: int
    sample_steps: int
    script_steps: int
    peak_tflops: float | None
    compile: bool


def default_plan(args: argparse.Namespace) -> Plan:
    """Full-size figures on CUDA; on CPU, sizes that finish in about a minute on the tiny config."""
    cuda = args.device == "cuda"
    return Plan(
        config=args.config,
        device=args.device,
        resolution=args.resolution or (512 if cuda else 64),
        batch=args.batch or (8 if cuda else 2),
        max_batch=args.max_batch or (512 if cuda else 4),
        steps=args.steps or (3 if cuda else 2),
        sample_batch=args.sample_batch or (4 if cuda else 1),
        sample_steps=args.sample_steps,
        script_steps=args.script_steps or (20 if cuda else 2),
        peak_tflops=args.peak_tflops,
        compile=args.compile,
    )


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def build(plan: Plan, **options: Any) -> torch.nn.Module:
    """The config's ControlLDM with random weights, with `options` (ModelOptions fields) applied, on the CPU."""
    config = load_config(plan.config)["model"]
    model_options = dataclasses.replace(ModelOptions.from_model_config(config, plan.config), **options)
    torch.manual_seed(0)
    return instantiate_model(model_options.applied_to(config, seed=0))


def wake_zero_inits(module: torch.nn.Module, seed: int = 1) -> None:
    """Give every zero-initialised convolution and linear layer (SD's output layers, the ControlNet's zero
    convolutions) torch's default random init, as in a trained model: with them at zero a fresh UNet predicts
    eps = 0 and no gradient reaches the ControlNet, and the checks would compare zeros."""
    torch.manual_seed(seed)
    for layer in module.modules():
        if isinstance(layer, torch.nn.Conv2d | torch.nn.Linear) and not layer.weight.any():
            layer.reset_parameters()


def random_hint(n: int, side: int, generator: torch.Generator) -> torch.Tensor:
    """A sparse random edge map in [0, 1], B×3×H×W."""
    return (torch.rand(n, 3, side, side, generator=generator) > 0.9).float()


def toy_batch(n: int, side: int) -> dict[str, Any]:
    """A training batch in the dataset's format: images in [−1, 1] and hints in [0, 1], B×H×W×3, and prompts."""
    generator = torch.Generator().manual_seed(0)
    return {
        "jpg": torch.rand(n, side, side, 3, generator=generator) * 2 - 1,
        "hint": random_hint(n, side, generator).permute(0, 2, 3, 1),
        "txt": [PROMPT] * n,
    }


def denoiser_inputs(model: torch.nn.Module, n: int, side: int, device: str) -> tuple[torch.Tensor, ...]:
    """Noisy latents B×4×h×w, timesteps B, hint B×3×H×W and context B×L×D for one denoiser call."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(n, model.channels, side // 8, side // 8, generator=generator)
    t = torch.linspace(50, 950, n).long()
    hint = random_hint(n, side, generator)
    with torch.no_grad():
        context = model.get_learned_conditioning([PROMPT] * n)
    return tuple(v.to(device) for v in (x, t, hint, context))


def eps(model: torch.nn.Module, inputs: tuple[torch.Tensor, ...], autocast: torch.dtype | None = None) -> torch.Tensor:
    x, t, hint, context = inputs
    device = x.device.type
    with torch.no_grad(), torch.autocast(device, dtype=autocast, enabled=autocast is not None):
        return model.apply_model(x, t, {"c_concat": [hint], "c_crossattn": [context]}).float()  # B×4×h×w


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.cpu() - want.cpu()).abs().max() / want.abs().max().clamp_min(1e-12))


@contextmanager
def tf32(enabled: bool) -> Iterator[None]:
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


def peak_memory_gib(device: str) -> float | None:
    return torch.cuda.max_memory_allocated() / 1024**3 if device == "cuda" else None


def is_out_of_memory(err: BaseException) -> bool:
    return isinstance(err, torch.OutOfMemoryError) or "out of memory" in str(err).lower()
