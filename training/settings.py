"""Settings of a training run, one source each: a dataclass field with its help text, its default in the YAML,
and a `tutorial_train.py` flag generated from the field (ldm/flags.py).

`TrainSettings` is the config's `training:` node. `ModelOptions` are the knobs of the `model:` node that a
run may override (learning rate, locking, memory savers); each maps onto one or more `params` paths.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
import logging
import math
import typing
from dataclasses import dataclass
from typing import Any

from cldm.cldm import FROZEN_DTYPES
from cldm.edge_reward import REWARD_MAX_T
from cldm.optimizer import LR_SCHEDULES, OPTIMIZERS, STATE_DTYPES
from ldm.flags import knob, typed_fields
from ldm.models.diffusion.objectives import LOSS_WEIGHTINGS, TIMESTEP_SAMPLINGS, Objective

logger = logging.getLogger(__name__)

PRECISIONS = ("32", "16-mixed", "bf16-mixed")
LOGGERS = ("tensorboard", "wandb", "csv")


def _optional_text(value: str) -> str | None:
    """'none' (or 'null') on the command line clears a path setting."""
    return None if value.lower() in ("none", "null") else value


@dataclass
class TrainSettings:
    """Every knob of a training run (the `training:` node); defaults live in the YAML, not here."""

    data: str = knob(
        "prepared folder with prompt.json, source/, target/; WebDataset shards (a folder of *.tar, or "
        "pairs-{000000..000099}.tar); shards by URL (http(s)://, s3://, gs://), fetched once into OUTPUT/data; or a "
        "Hugging Face dataset (save_to_disk folder, parquet or arrow files, imagefolder with metadata.jsonl, or "
        "hf:HUB_ID), imported once into OUTPUT/data"
    )
    image_column: str = knob("a Hugging Face dataset's column of target images (diffusers' --image_column)")
    conditioning_image_column: str = knob(
        "its column of edge maps (diffusers' --conditioning_image_column); without one, canny maps are made"
    )
    caption_column: str = knob("its column of prompts (diffusers' --caption_column)")
    toy_data: dict[str, int] | None = knob("toy set generated into `data` when that folder is missing", cli=False)
    init: str | None = knob(
        "initial ControlLDM weights, SD + a ControlNet copied from its encoder, from tool_add_control.py ('none': "
        "fresh init); --resume is the original tutorial's name for it",
        aliases=("--resume",),
        parse=_optional_text,
    )
    base: str | None = knob(
        "Stable Diffusion weights (file or diffusers folder) that --init is made from, as tool_add_control.py does, "
        "when that file is missing",
        parse=_optional_text,
    )
    batch_size: int = knob("samples per device per step")
    accumulate: int = knob("gradient accumulation steps")
    max_steps: int = knob("optimizer steps to train")
    max_epochs: int | None = knob("passes over the data (converted to steps; overrides --max-steps)")
    accelerator: str = knob("cpu, gpu or auto")
    devices: int = knob("devices per node")
    num_nodes: int = knob("nodes")
    strategy: str = knob("Lightning strategy (auto = ddp on more than one device)")
    precision: str = knob("32, 16-mixed or bf16-mixed", choices=PRECISIONS)
    empty_prompt_p: float = knob("probability of training with an empty prompt")
    hflip: bool = knob("random horizontal flips")
    control_from: str | None = knob(
        "start the ControlNet from this one (control_model.* file or diffusers ControlNet) instead of the UNet encoder",
        parse=_optional_text,
    )
    allow_nonfinite: bool = knob("load initial weights even if they hold NaN or inf (refused by default)")
    skip_bad: bool = knob(
        "train on the usable pairs when some fail the pre-flight check (listed in OUTPUT/skipped_pairs.tsv)"
    )
    cache_latents: bool = knob("encode images and prompts once before training (needs --no-hflip)")
    logger: str = knob("Lightning logger: tensorboard, wandb (pip install wandb) or csv", choices=LOGGERS)
    logger_freq: int = knob("steps between image grids")
    eval_every: int = knob("steps between controllability evals on prompt_val.json (0: no monitor)")
    eval_n: int = knob("held-out pairs each controllability eval scores")
    eval_steps: int = knob("DDIM steps of each controllability eval's samples (tool_eval_control.py --steps)")
    early_stop_patience: int = knob("stop after this many evals without a gain in exact edge F1 (0: never)")
    ema_decay: float = knob(
        "EMA of the ControlNet's weights, updated every step (0: off; 0.999 is usual); the monitor, best/ and the "
        "exports then hold the EMA weights, checkpoints both"
    )
    image_log_ddim_steps: int = knob("DDIM steps of the image grids' samples")
    ckpt_every: int = knob("steps between resumable checkpoints")
    keep_last: int = knob("resumable checkpoints to keep")
    output: str = knob("run folder")
    seed: int = knob("random seed (also the model's noise seed)")
    slurm_requeue: bool = knob("after a stop signal's checkpoint, requeue this SLURM job (scontrol requeue)")
    workers: int = knob("DataLoader worker processes")
    compile: bool = knob("torch.compile the ControlNet and the UNet (the first steps wait for the compiler)")

    @classmethod
    def from_config(cls, node: dict[str, Any] | None, source: str) -> TrainSettings:
        if not isinstance(node, dict):
            raise ValueError(f"{source} has no 'training:' section; copy one from models/cldm_tiny.yaml")
        node = _refuse_old_keys(node, source)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown, missing = sorted(set(node) - names), sorted(names - set(node))
        if unknown or missing:
            raise ValueError(f"{source} training section: unknown keys {unknown}, missing keys {missing}")
        return cls(**typed_fields(cls, node, f"{source} training"))

    def validate(self) -> None:
        for name in (
            "batch_size",
            "accumulate",
            "devices",
            "num_nodes",
            "logger_freq",
            "ckpt_every",
            "keep_last",
            "image_log_ddim_steps",
        ):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_epochs is not None and self.max_epochs < 1:
            raise ValueError(f"max_epochs must be >= 1 (or null to train max_steps), got {self.max_epochs}")
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
        if self.eval_every < 0 or self.eval_n < 1 or self.eval_steps < 1 or self.early_stop_patience < 0:
            raise ValueError(
                f"need eval_every >= 0, eval_n >= 1, eval_steps >= 1 and early_stop_patience >= 0; got "
                f"{self.eval_every}, {self.eval_n}, {self.eval_steps} and {self.early_stop_patience}"
            )
        if not (self.ema_decay == 0.0 or 0.0 < self.ema_decay < 1.0):
            raise ValueError(f"--ema-decay must be 0 (off) or lie in (0, 1), got {self.ema_decay}")
        if self.early_stop_patience and not self.eval_every:
            raise ValueError("early_stop_patience needs the monitor: set eval_every >= 1")
        if self.logger not in LOGGERS:
            raise ValueError(f"logger must be one of {LOGGERS}, got {self.logger!r}")
        if self.logger == "wandb" and importlib.util.find_spec("wandb") is None:
            raise ValueError("--logger wandb needs the wandb package: pip install wandb (or use tensorboard or csv)")

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


# Key names this project used before (not the original repository's): a config that has them is refused with
# the rename to make, rather than read under two names (decided: docs/training.md, "Names").
OLD_KEYS = {"resume": "init", "sd_base": "base"}


def _refuse_old_keys(node: dict[str, Any], source: str) -> dict[str, Any]:
    old = sorted(k for k in OLD_KEYS if k in node)
    if old:
        raise ValueError(
            f"{source}: training.{old[0]} is the older name of training.{OLD_KEYS[old[0]]}; rename the key "
            f"({', '.join(f'{k} → {OLD_KEYS[k]}' for k in old)})"
        )
    return node


@dataclass
class ModelOptions:
    """The knobs of the `model:` node a run may override; `PATHS` says where each lives under `params`."""

    learning_rate: float = knob("learning rate", flag="--lr")
    lr_schedule: str = knob(
        "constant, or cosine: from the learning rate down to 0 at the run's last step", choices=LR_SCHEDULES
    )
    sd_locked: bool = knob("lock the whole SD UNet (--no-sd-locked also trains its decoder)")
    only_mid_control: bool = knob("feed the ControlNet into the middle block only")
    checkpointing: bool = knob("gradient checkpointing in the UNet and ControlNet (use_checkpoint)")
    frozen_dtype: str = knob(
        "store the locked UNet, VAE and text encoder in this dtype (with --precision *-mixed)",
        choices=tuple(FROZEN_DTYPES),
    )
    optimizer_state_dtype: str = knob(
        "dtype of AdamW's two moments (bfloat16 halves the optimizer state)",
        flag="--optimizer-states",
        choices=tuple(STATE_DTYPES),
    )
    gradient_release: bool = knob(
        "update each tensor inside backward and free its gradient (one device, --accumulate 1)"
    )
    optimizer: str = knob(
        "adamw (torch's fused AdamW) or adamw8bit (torchao's 8-bit AdamW: a quarter of the optimizer state)",
        choices=OPTIMIZERS,
    )
    # The training objective (ldm/models/diffusion/objectives.py, docs/training.md). A config written before
    # these existed trains with their defaults, the objective it trained with then.
    loss_weighting: str = knob(
        "weight of each sample's ε-MSE: eps (1), x0 (the MSE of the implied x0: 1/SNR), min-snr (min(SNR, γ)/SNR)",
        choices=LOSS_WEIGHTINGS,
        default=Objective.loss_weighting,
    )
    timestep_sampling: str = knob(
        "how training timesteps are drawn: uniform, or cubic (t = (1 − u³)·T, towards high noise)",
        choices=TIMESTEP_SAMPLINGS,
        default=Objective.timestep_sampling,
    )
    min_snr_gamma: float = knob("γ of --loss-weighting min-snr", default=Objective.min_snr_gamma)
    # ControlNet++'s reward stage (cldm/edge_reward.py, docs/training.md): off unless a weight is given.
    reward_weight: float = knob(
        "weight λ of the edge reward added to the diffusion loss (0: off); it fine-tunes a trained ControlNet "
        "(--control-from, or a resume)",
        default=0.0,
    )
    reward_max_t: int = knob("the reward is applied to the samples noised to t <= this", default=REWARD_MAX_T)

    PATHS: typing.ClassVar[dict[str, tuple[tuple[str, ...], ...]]] = {
        "checkpointing": (
            ("unet_config", "params", "use_checkpoint"),
            ("control_stage_config", "params", "use_checkpoint"),
        ),
    }

    @classmethod
    def paths(cls, name: str) -> tuple[tuple[str, ...], ...]:
        return cls.PATHS.get(name, ((name,),))

    @classmethod
    def from_model_config(cls, node: dict[str, Any], source: str) -> ModelOptions:
        """Read the options from `node['params']`; every path of one option must agree."""
        values = {}
        for f in dataclasses.fields(cls):
            found = []
            for path in cls.paths(f.name):
                value: Any = node["params"]
                for key in path:
                    if isinstance(value, dict) and key not in value and f.default is not dataclasses.MISSING:
                        value = f.default  # an option newer than the config: its default
                        break
                    if not isinstance(value, dict) or key not in value:
                        raise ValueError(
                            f"{source}: model.params.{'.'.join(path)} is missing; copy it from models/cldm_tiny.yaml"
                        )
                    value = value[key]
                found.append(value)
            if any(v != found[0] for v in found):
                raise ValueError(f"{source}: {' and '.join('.'.join(p) for p in cls.paths(f.name))} disagree")
            values[f.name] = found[0]
        return cls(**typed_fields(cls, values, f"{source} model.params"))

    def applied_to(self, node: dict[str, Any], *, seed: int) -> dict[str, Any]:
        """A copy of the model node with these options and the run's seed written into its params."""
        node = copy.deepcopy(node)
        for f in dataclasses.fields(self):
            for *parents, key in self.paths(f.name):
                target = node["params"]
                for parent in parents:
                    target = target[parent]
                target[key] = getattr(self, f.name)
        node["params"]["seed"] = seed
        return node

    def check(self, settings: TrainSettings) -> None:
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise ValueError(f"the learning rate (--lr) must be a positive number, got {self.learning_rate}")
        if not (math.isfinite(self.min_snr_gamma) and self.min_snr_gamma > 0):
            raise ValueError(f"--min-snr-gamma must be a positive number, got {self.min_snr_gamma}")
        if not (math.isfinite(self.reward_weight) and self.reward_weight >= 0):
            raise ValueError(f"--reward-weight must be a number >= 0 (0: off), got {self.reward_weight}")
        if self.reward_max_t < 0:
            raise ValueError(f"--reward-max-t must be >= 0, got {self.reward_max_t}")
        if self.frozen_dtype != "float32" and settings.precision == "32":
            raise ValueError(
                "--frozen-dtype below float32 needs mixed precision: add --precision bf16-mixed (or 16-mixed)"
            )
        if self.gradient_release and (
            settings.accumulate > 1 or settings.world_size > 1 or settings.precision == "16-mixed"
        ):
            raise ValueError(
                "--gradient-release steps inside backward, so it needs --accumulate 1, one device on "
                "one node, and no fp16 loss scaling (use --precision 32 or bf16-mixed)"
            )
