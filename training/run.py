"""One training run of ControlLDM with PyTorch Lightning: generated inputs, input checks, model set-up, data, trainer."""

from __future__ import annotations

import copy
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf
from pytorch_lightning.callbacks import TQDMProgressBar
from pytorch_lightning.loggers import TensorBoardLogger

from cldm.logger import ImageLogger
from cldm.weights import (
    CheckpointMismatchError,
    build_control_init,
    check_state_dict,
    load_state_dict,
    load_weights_from_file,
    save_state,
)
from ldm.util import instantiate_from_config
from training.checkpoint import PeriodicCheckpoint, StreamingCheckpointIO, list_checkpoints
from training.dataset import PairDataset
from training.latent_cache import CachedPairs, build_latent_cache
from training.loader import make_train_loader
from training.prompt_file import PROMPT_FILE, write_text_atomically
from training.settings import TrainSettings
from training.toy_data import write_toy_dataset

logger = logging.getLogger(__name__)

INIT_FILE = "init.safetensors"
CACHE_DIR = "latent_cache"


class RunInputError(ValueError):
    """Bad input found before any model is built; the message says what and where."""


@dataclass
class RunPlan:
    """Everything checked and resolved before the model is built."""

    settings: TrainSettings
    model_config: dict[str, Any]
    output: Path
    dataset: PairDataset
    base: Path | None  # full ControlLDM weights to start from (None: fresh init, saved as init.safetensors)
    resume_from: Path | None  # a training checkpoint to continue
    start_step: int


def _meta_state(model_config: dict[str, Any]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Key/shape plan of the model, and its trainable keys, without allocating weights."""
    with torch.device("meta"):
        model = instantiate_from_config(model_config)
    return model.state_dict(), model.trainable_state_keys()


def _resolve_resume_from(resume_from: str | None, output: Path) -> Path | None:
    if resume_from is None:
        return None
    if resume_from in ("last", "auto"):
        found = list_checkpoints(output / "checkpoints")
        if found:
            return found[-1]
        if resume_from == "auto":  # e.g. a requeued SLURM job that had not saved anything yet
            return None
        raise RunInputError(f"--resume-from last: no checkpoint in {output / 'checkpoints'} yet")
    path = Path(resume_from)
    if not path.is_file():
        raise RunInputError(f"--resume-from {path}: file does not exist")
    return path


def make_missing_inputs(model_config: dict[str, Any], settings: TrainSettings, *, resume_from: str | None) -> None:
    """Write the inputs the config says to generate when missing: the toy data set (`toy_data`), and the initial
    ControlNet checkpoint `resume`, made from `sd_base` as tool_add_control.py does (fresh starts only)."""
    data = Path(settings.data)
    if not (data / PROMPT_FILE).is_file() and settings.toy_data and not data.exists():
        logger.info("generating toy data in %s (%s)", data, settings.toy_data)
        write_toy_dataset(data, **settings.toy_data)
    base = Path(settings.resume) if settings.resume else None
    resuming = _resolve_resume_from(resume_from, Path(settings.output)) is not None
    if base is not None and not resuming and not base.exists() and settings.sd_base:
        make_control_init(model_config, Path(settings.sd_base), base, seed=settings.seed)


def plan_run(
    model_config: dict[str, Any], settings: TrainSettings, *, config_path: str, resume_from: str | None
) -> RunPlan:
    """Check data, checkpoints and config against each other before building anything; writes nothing."""
    settings.validate()
    output = Path(settings.output)
    try:
        dataset = PairDataset(
            settings.data, hflip=settings.hflip, empty_prompt_p=settings.empty_prompt_p, seed=settings.seed
        )
    except (FileNotFoundError, ValueError) as err:
        raise RunInputError(f"data: {err}") from None
    model_state, trainable = _meta_state(model_config)
    ckpt_path = _resolve_resume_from(resume_from, output)
    base = Path(settings.resume) if settings.resume else None
    start_step = 0
    if ckpt_path is not None:
        ckpt = torch.load(
            ckpt_path, map_location="cpu", weights_only=True, mmap=True
        )  # mapped: only what is used is read
        base = Path(ckpt.get("cutenet_config", {}).get("base") or output / INIT_FILE)
        start_step = int(ckpt["global_step"])
        try:
            check_state_dict({k: model_state[k] for k in trainable}, ckpt["state_dict"])
        except CheckpointMismatchError as err:
            raise RunInputError(f"{ckpt_path} was written for another config than {config_path}: {err}") from None
    if base is not None:
        if not base.is_file():
            raise RunInputError(
                f"initial checkpoint {base} does not exist; make it with tool_add_control.py "
                "(see docs/training.md) or set training.resume: null for a fresh start"
            )
        try:
            check_state_dict(model_state, load_state_dict(base, shapes_only=True))
        except CheckpointMismatchError as err:
            raise RunInputError(f"{base} does not fit {config_path}: {err}") from None
    return RunPlan(settings, model_config, output, dataset, base, ckpt_path, start_step)


def make_control_init(model_config: dict[str, Any], sd_base: Path, dst: Path, *, seed: int) -> None:
    """What tool_add_control.py does: SD weights + a ControlNet copied from the UNet encoder, written to dst."""
    if not sd_base.is_file():
        raise RunInputError(
            f"training.sd_base {sd_base} does not exist; it is needed to make the initial checkpoint {dst} (see docs/training.md)"
        )
    try:
        init = build_control_init(model_config, load_state_dict(sd_base), seed=seed)
    except CheckpointMismatchError as err:
        raise RunInputError(f"training.sd_base {sd_base} does not fit the config: {err}") from None
    dst.parent.mkdir(parents=True, exist_ok=True)
    save_state(init.state, dst)
    logger.info(
        "made the initial ControlNet checkpoint %s from %s (%d tensors copied from the UNet encoder)",
        dst,
        sd_base,
        len(init.copied),
    )


class TrainData(pl.LightningDataModule):
    """Builds each rank's loader inside its own process, where rank and world size are known."""

    def __init__(self, plan: RunPlan) -> None:
        super().__init__()
        self.plan = plan

    def train_dataloader(self) -> torch.utils.data.DataLoader:
        s = self.plan.settings
        dataset = CachedPairs(self.plan.dataset, self.plan.output / CACHE_DIR) if s.cache_latents else self.plan.dataset
        return make_train_loader(
            dataset,
            batch_size=s.batch_size,
            seed=s.seed,
            start_sample=self.plan.start_step * s.samples_per_step,
            rank=self.trainer.global_rank,
            world_size=self.trainer.world_size,
            workers=s.workers,
        )


def instantiate_model(model_config: dict[str, Any], base: Path | None = None) -> pl.LightningModule:
    """The ControlLDM of a run's model node (see `ModelOptions.applied_to`), with `base`'s weights if given:
    how training, and the benchmarks that must measure what training runs, build the model."""
    model = instantiate_from_config(model_config)
    if base is not None:
        load_weights_from_file(model, base)
        logger.info("loaded initial weights from %s", base)
    return model


def build_model(plan: RunPlan) -> pl.LightningModule:
    """The ControlLDM with its starting weights; a fresh start saves them so resumes reload the same frozen parts."""
    model = instantiate_model(plan.model_config, plan.base)
    if plan.base is None:
        plan.output.mkdir(parents=True, exist_ok=True)
        init = plan.output / INIT_FILE
        if pl.utilities.rank_zero.rank_zero_only.rank == 0:
            save_state(model.state_dict(), init)
        plan.base = init
        logger.info("no initial checkpoint: fresh weights, saved to %s", init)
    return model


def prepare_latent_cache(plan: RunPlan, model: pl.LightningModule, device: torch.device | str) -> None:
    """Rank 0 encodes the data once before training (the other DDP ranks start later, at fit)."""
    if not plan.settings.cache_latents or pl.utilities.rank_zero.rank_zero_only.rank != 0:
        return
    home = model.device
    build_latent_cache(model.to(device), plan.dataset, plan.output / CACHE_DIR)
    model.to(home)


def resolved_config(plan: RunPlan, config: dict[str, Any]) -> dict[str, Any]:
    resolved = copy.deepcopy(config)
    resolved["training"] = asdict(plan.settings)
    resolved["base"] = str(plan.base) if plan.base else None
    return resolved


class SampleLog(pl.Callback):
    """Appends the dataset indices of every training batch to `folder/rank<R>.txt` (which rank saw what)."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        with (self.folder / f"rank{trainer.global_rank}.txt").open("a") as f:
            f.write("".join(f"{int(i)}\n" for i in batch["index"]))


def make_trainer(plan: RunPlan, resolved: dict[str, Any], *, log_samples: bool = False) -> pl.Trainer:
    s = plan.settings
    callbacks: list[pl.Callback] = [
        PeriodicCheckpoint(plan.output / "checkpoints", every=s.ckpt_every, keep=s.keep_last, config=resolved),
        ImageLogger(
            plan.output / "image_log" / "train", every=s.logger_freq, ddim_steps=s.image_log_ddim_steps, seed=s.seed
        ),
        TQDMProgressBar(refresh_rate=1),
    ]
    if log_samples:
        callbacks.append(SampleLog(plan.output / "samples"))
    return pl.Trainer(
        accelerator=s.accelerator,
        devices=s.devices,
        num_nodes=s.num_nodes,
        strategy=s.resolved_strategy(),
        precision=s.precision,
        max_steps=s.total_steps(len(plan.dataset)),
        accumulate_grad_batches=s.accumulate,
        callbacks=callbacks,
        plugins=[StreamingCheckpointIO()],
        logger=TensorBoardLogger(str(plan.output), name="lightning_logs"),
        enable_checkpointing=False,
        use_distributed_sampler=False,
        num_sanity_val_steps=0,
        log_every_n_steps=min(50, s.logger_freq),
        default_root_dir=str(plan.output),
    )


def write_config(path: Path, resolved: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomically(path, OmegaConf.to_yaml(OmegaConf.create(resolved)))
