"""Training settings: the `training:` node of a model YAML, overridden by tutorial_train.py's flags."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

PRECISIONS = ("32", "16-mixed", "bf16-mixed")


@dataclass
class TrainSettings:
    """Every knob of a training run; defaults live in the YAML, not here."""

    data: str
    toy_data: dict[str, int] | None
    resume: str | None
    sd_base: str | None  # made into `resume` (as tool_add_control.py does) when that file is missing
    batch_size: int
    accumulate: int
    max_steps: int
    max_epochs: int | None
    accelerator: str
    devices: int
    num_nodes: int
    strategy: str
    precision: str
    empty_prompt_p: float
    hflip: bool
    cache_latents: bool
    logger_freq: int
    image_log_ddim_steps: int
    ckpt_every: int
    keep_last: int
    output: str
    seed: int
    workers: int

    @classmethod
    def from_config(cls, node: dict[str, Any] | None, source: str) -> TrainSettings:
        if not isinstance(node, dict):
            raise ValueError(f"{source} has no 'training:' section; copy one from models/cldm_tiny.yaml")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown, missing = sorted(set(node) - names), sorted(names - set(node))
        if unknown or missing:
            raise ValueError(f"{source} training section: unknown keys {unknown}, missing keys {missing}")
        return cls(**node)

    def override(self, **values: Any) -> None:
        """Set the fields given on the command line (None means: keep the config's value)."""
        for name, value in values.items():
            if value is not None:
                setattr(self, name, value)

    def validate(self) -> None:
        for name in ("batch_size", "accumulate", "devices", "num_nodes", "logger_freq", "ckpt_every", "keep_last",
                     "image_log_ddim_steps"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_steps < 1 and not self.max_epochs:
            raise ValueError("set max_steps >= 1 or max_epochs")
        if str(self.precision) not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if not 0.0 <= self.empty_prompt_p <= 1.0:
            raise ValueError(f"empty_prompt_p must be in [0, 1], got {self.empty_prompt_p}")
        if self.cache_latents and self.hflip:
            raise ValueError("cache_latents needs hflip off: cached latents cannot follow random flips")
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers}")

    @property
    def world_size(self) -> int:
        return self.devices * self.num_nodes

    @property
    def samples_per_step(self) -> int:
        """Samples one optimizer step consumes over all ranks."""
        return self.batch_size * self.accumulate * self.world_size

    def total_steps(self, dataset_size: int) -> int:
        """max_steps, or max_epochs converted to optimizer steps over a dataset of `dataset_size`."""
        if self.max_epochs:
            return math.ceil(self.max_epochs * dataset_size / self.samples_per_step)
        return self.max_steps

    def resolved_strategy(self) -> str:
        return "ddp" if self.strategy == "auto" and self.world_size > 1 else self.strategy
