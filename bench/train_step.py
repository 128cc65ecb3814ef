"""Seconds per training step, samples/s and peak memory of ControlLDM for one set of options.

    .venv/bin/python -m bench.train_step --config models/cldm_v15.yaml --resolution 128 --batch 1
    .venv/bin/python -m bench.train_step --config models/cldm_v15.yaml --resolution 128 --batch 1 \
        --reward-weight 1 --reward-max-t 999          # the same step with the reward on every sample

Random weights (no download needed): the cost of a step does not depend on the values. Run one
configuration per process, so the peak-memory figure belongs to it alone.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from collections.abc import Callable
from contextlib import nullcontext

import torch

from bench.run_memory import GB, status_kb
from cldm.loading import load_config
from cldm.optimizer import OPTIMIZERS
from ldm.flags import HelpFormatter, add_flags, given_flags, preparse
from training.run_build import instantiate_model
from training.settings import ModelOptions, TrainSettings


def peak_rss_gb() -> float:
    """The process's resident-set high-water mark (VmHWM), in GB."""
    return status_kb().get("VmHWM", float("nan")) / GB


def peak_memory_gb(device: str) -> float:
    """Peak CUDA memory allocated on GPU, the peak resident set on CPU, in GB."""
    return torch.cuda.max_memory_allocated() / 1024**3 if device == "cuda" else peak_rss_gb()


def reset_peak_memory(device: str) -> bool:
    """Restart the high-water mark from current use (CPU: Linux `clear_refs` 5); False where that is not allowed."""
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        return True
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


class StageTimer:
    """Seconds each part of the model spends in its forward during the forward pass, from forward hooks. Calls
    during backward (gradient checkpointing recomputes blocks there) are not counted."""

    def __init__(self, parts: dict[str, torch.nn.Module], clock: Callable[[], float]) -> None:
        self.clock = clock
        self.counting = False
        self.seconds = dict.fromkeys(parts, 0.0)
        self._started: dict[str, float] = {}
        for name, module in parts.items():
            module.register_forward_pre_hook(lambda *_, name=name: self._start(name))
            module.register_forward_hook(lambda *_, name=name: self._stop(name))

    def _start(self, name: str) -> None:
        if self.counting:
            self._started[name] = self.clock()

    def _stop(self, name: str) -> None:
        if self.counting and name in self._started:
            self.seconds[name] += self.clock() - self._started.pop(name)

    def take(self) -> dict[str, float]:
        """The seconds counted since the last take."""
        seconds, self.seconds = self.seconds, dict.fromkeys(self.seconds, 0.0)
        return seconds


def make_optimizer(name: str, model: torch.nn.Module) -> torch.optim.Optimizer:
    params = model.trainable_parameters()
    if name in OPTIMIZERS:
        return model.configure_optimizers()  # what training uses (the model was built with this optimizer)
    if name == "adamw-foreach":
        return torch.optim.AdamW(params, lr=model.learning_rate, foreach=True)
    raise SystemExit(f"unknown optimizer {name!r}")


SETTINGS = ("precision", "cache_latents")  # the training settings a step's cost depends on
OPTIONS = (
    "frozen_dtype",
    "optimizer_state_dtype",
    "gradient_release",
    "checkpointing",
    "optimizer",
    "reward_weight",  # the reward stage decodes (and backpropagates through) the VAE for its rewarded samples
    "reward_max_t",  # 999 rewards every sample: the cost of a rewarded one
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Training's own flags for what a step's cost depends on, with the config's values as defaults."""
    config_path = preparse(argv, "--config", "models/cldm_v15.yaml")
    config = load_config(config_path)
    settings = TrainSettings.from_config(config.get("training"), config_path)
    options = ModelOptions.from_model_config(config["model"], config_path)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--config", default="models/cldm_v15.yaml", help="model + training YAML (its values: the defaults)")
    p.add_argument("--resolution", type=int, default=128, help="image side (latents are side/8)")
    p.add_argument("--batch", type=int, default=1, help="samples per step")
    add_flags(p, TrainSettings, only=SETTINGS, defaults=settings)
    add_flags(p, ModelOptions, only=OPTIONS, defaults=options)
    p.add_argument("--foreach", action="store_true", help="torch's default (foreach) AdamW kernel, for comparison")
    p.add_argument("--steps", type=int, default=4, help="timed steps (after one warm-up step)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cuda or cpu")
    args = p.parse_args(argv)
    for name in SETTINGS:
        setattr(args, name, getattr(args, name, getattr(settings, name)))
    args.options = dataclasses.replace(options, **given_flags(args, ModelOptions))
    if args.foreach and args.options.optimizer != "adamw":
        p.error("--foreach is a kernel of --optimizer adamw")
    return args


def run_benchmark(args: argparse.Namespace) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """Build the model as training does, time the steps, print the figures; returns the trained model and optimizer."""
    config = load_config(args.config)["model"]
    # A schedule only scales the rate (and a cosine one needs the trainer's max_steps): the step costs the same.
    options = dataclasses.replace(args.options, lr_schedule="constant")
    torch.manual_seed(0)
    model = instantiate_model(options.applied_to(config, seed=0)).to(args.device).train()
    optimizer = make_optimizer("adamw-foreach" if args.foreach else options.optimizer, model)
    build_peak = peak_memory_gb(args.device)
    split = reset_peak_memory(args.device)  # from here on the high-water mark is the training steps'
    dtype = {"32": None, "bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}[args.precision]
    # As Lightning's MixedPrecision: no autocast cache, so low-precision weight copies die with their op
    # (or, under checkpointing, with their block) instead of living until the end of the forward.
    autocast = (
        torch.autocast(torch.device(args.device).type, dtype=dtype, cache_enabled=False) if dtype else nullcontext()
    )
    b, side = args.batch, args.resolution
    batch = {
        "jpg": torch.rand(b, side, side, 3) * 2 - 1,
        "hint": torch.rand(b, side, side, 3),
        "txt": ["a photography of a corgi on the grass"] * b,
    }
    if args.cache_latents:  # the latent cache's batch format: the VAE posterior and the text context
        with autocast, torch.no_grad():
            images = batch["jpg"].permute(0, 3, 1, 2).to(args.device)  # B×3×H×W
            posterior = model.encode_first_stage(images.to(next(model.first_stage_model.parameters()).dtype))
            batch = {
                "moments": posterior.parameters.float(),
                "context": model.get_learned_conditioning(batch["txt"]),
                "hint": batch["hint"],
            }

    def clock() -> float:
        if args.device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter()

    stages = StageTimer(
        {
            "VAE encode": model.first_stage_model.encoder,
            "text encode": model.cond_stage_model,
            "ControlNet": model.control_model,
            "UNet": model.model.diffusion_model,
            "VAE decode": model.first_stage_model.decoder,
        },
        clock,
    )

    def step() -> tuple[float, float, float]:
        start = clock()
        stages.counting = True
        with autocast:
            loss, _ = model.training_loss(batch, 0)  # what training_step computes
        stages.counting = False
        forward = clock()
        loss.backward()
        backward = clock()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return forward - start, backward - forward, clock() - backward

    step()  # warm-up: allocator, optimizer state
    stages.take()
    parts, stage_times = [], []
    for _ in range(args.steps):
        parts.append(step())
        stage_times.append(stages.take())
    times = [sum(p) for p in parts]
    median = statistics.median(times)
    fwd, bwd, opt = (statistics.median(p[i] for p in parts) for i in range(3))
    steps_peak = peak_memory_gb(args.device)
    memory = max(build_peak, steps_peak) if split else steps_peak
    detail = f" (build {build_peak:.1f} GB, steps {steps_peak:.1f} GB)" if split else ""
    kind = "peak CUDA allocated" if args.device == "cuda" else "peak RSS"
    print(
        f"config={args.config} resolution={side} batch={b} precision={args.precision} "
        f"frozen_dtype={options.frozen_dtype} checkpointing={options.checkpointing} optimizer={options.optimizer}"
        f"{' (foreach)' if args.foreach else ''} optimizer_states={options.optimizer_state_dtype} "
        f"gradient_release={options.gradient_release} reward_weight={options.reward_weight} "
        f"reward_max_t={options.reward_max_t} cache_latents={args.cache_latents} device={args.device} "
        f"threads={torch.get_num_threads()}"
    )
    per_stage = ", ".join(f"{name} {statistics.median(t[name] for t in stage_times):.3f}" for name in stage_times[0])
    print(
        f"step {median:.2f} s (median of {len(times)}: forward {fwd:.2f} [{per_stage}], backward {bwd:.2f}, "
        f"optimizer {opt:.2f}), "
        f"{b / median:.2f} samples/s, {kind} {memory:.1f} GB{detail}"
    )
    return model, optimizer


def main(argv: list[str] | None = None) -> None:
    run_benchmark(parse_args(argv))


if __name__ == "__main__":
    main()
