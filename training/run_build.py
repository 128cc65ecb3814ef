"""Build what a plan describes: the model with its starting weights, the latent cache, the loader and the Lightning
trainer with the run's one callback (`RunEvents`), its logger and its checkpoint I/O."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf
from pytorch_lightning.callbacks import TQDMProgressBar
from pytorch_lightning.loggers import CSVLogger, Logger, TensorBoardLogger, WandbLogger

from cldm.image_log import ImageLogger
from cldm.loading import load_control
from cldm.weights import load_weights_from_file, save_state
from evaluation.evaluate_control import EvalSettings
from ldm.util import instantiate_from_config, tsv_text, write_text_atomically
from training.checkpoint import PeriodicCheckpoint, StreamingCheckpointIO
from training.control_monitor import ControlMonitor
from training.data.latent_cache import CachedPairs, build_latent_cache
from training.data.loader import make_train_loader
from training.guardrails import LearningCheck
from training.preemption import Preemption
from training.ranks import is_global_zero
from training.run_events import RunEvents
from training.run_plan import RunPlan
from training.run_record import RunRecord

logger = logging.getLogger(__name__)

SKIPPED_FILE = "skipped_pairs.tsv"
CACHE_DIR = "latent_cache"


def write_skipped(plan: RunPlan) -> None:
    """OUTPUT/skipped_pairs.tsv: the pairs left out by --skip-bad, with the reason."""
    if plan.skipped:
        rows = [("source", "target", "reason")] + [(b.source, b.target, b.reason) for b in plan.skipped]
        write_text_atomically(plan.output / SKIPPED_FILE, tsv_text(rows))


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


def instantiate_model(
    model_config: dict[str, Any], init: Path | None = None, *, allow_nonfinite: bool = False
) -> pl.LightningModule:
    """The ControlLDM of a run's model node (see `ModelOptions.applied_to`), with `init`'s weights if given:
    how training, and the benchmarks that must measure what training runs, build the model."""
    model = instantiate_from_config(model_config)
    if init is not None:
        load_weights_from_file(model, init, allow_nonfinite=allow_nonfinite)
        logger.info("loaded initial weights from %s", init)
    return model


def build_model(plan: RunPlan) -> pl.LightningModule:
    """The ControlLDM with its starting weights; a fresh start saves them to `plan.init` (rank 0), so resumes reload
    the same frozen parts. `control_from` replaces the initial ControlNet at a fresh start (a resume takes it from
    the checkpoint)."""
    init = None if plan.writes_init else plan.init
    model = instantiate_model(plan.model_config, init, allow_nonfinite=plan.settings.allow_nonfinite)
    if plan.settings.control_from and plan.resume_from is None:
        load_control(model, plan.settings.control_from, allow_nonfinite=plan.settings.allow_nonfinite)
        logger.info("the ControlNet starts from %s", plan.settings.control_from)
    if plan.writes_init:
        plan.output.mkdir(parents=True, exist_ok=True)
        if is_global_zero():
            save_state(model.state_dict(), plan.init)
        logger.info("no initial checkpoint: fresh weights, saved to %s", plan.init)
    if plan.settings.compile:
        model.compile_networks()
        logger.info("torch.compile: the ControlNet and the UNet compile on their first steps")
    return model


def prepare_latent_cache(plan: RunPlan, model: pl.LightningModule, device: torch.device | str) -> None:
    """Rank 0 encodes the data once before training (the other DDP ranks start later, at fit)."""
    if not plan.settings.cache_latents or not is_global_zero():
        return
    home = model.device
    build_latent_cache(model.to(device), plan.dataset, plan.output / CACHE_DIR)
    model.to(home)


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


def make_trainer(plan: RunPlan, *, record: RunRecord | None, log_samples: bool = False) -> pl.Trainer:
    """The Lightning trainer of a run; `record` is rank 0's run record (None on the other ranks)."""
    s = plan.settings
    periodic = PeriodicCheckpoint(
        plan.output / "checkpoints",
        every=s.ckpt_every,
        keep=s.keep_last,
        config=plan.resolved,
        record=record,
        thresholds=plan.thresholds,
    )
    monitor = None
    if s.eval_every:
        monitor = ControlMonitor(
            plan.output,
            plan.dataset.root,
            every=s.eval_every,
            settings=EvalSettings(n=s.eval_n, steps=s.eval_steps, thresholds=plan.thresholds),
            patience=s.early_stop_patience,
            init_digest=record.init.sha256 if record is not None and record.init is not None else None,
        )
    events = RunEvents(  # the one callback that decides what happens around the steps, and in what order
        learning=LearningCheck(
            expect_gradient=not plan.fresh_init, log_every=min(50, s.logger_freq), fp16=s.precision == "16-mixed"
        ),
        checkpoint=periodic,
        preemption=Preemption(),
        monitor=monitor,
        requeue=s.slurm_requeue,
        ema_decay=s.ema_decay,
    )
    callbacks: list[pl.Callback] = [
        events,
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
        plugins=[StreamingCheckpointIO(before_rename=periodic.enter)],
        logger=make_logger(s.logger, plan.output, run_id=record.run_id if record is not None else None),
        enable_checkpointing=False,
        use_distributed_sampler=False,
        num_sanity_val_steps=0,
        log_every_n_steps=min(50, s.logger_freq),
        default_root_dir=str(plan.output),
    )


def make_logger(kind: str, output: Path, *, run_id: str | None) -> Logger:
    """The run's Lightning logger. Weights & Biases logs offline where WANDB_MODE=offline (or no login) says so;
    its run is named after the run record's id, so a resumed run appends to the same W&B run."""
    if kind == "tensorboard":
        return TensorBoardLogger(str(output), name="lightning_logs")
    if kind == "csv":
        return CSVLogger(str(output), name="lightning_logs")
    if kind == "wandb":
        short = run_id[:12] if run_id else None
        return WandbLogger(save_dir=str(output), project="cutenet", name=short, id=short, resume="allow")
    raise ValueError(f"unknown logger {kind!r}")


def write_config(path: Path, resolved: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomically(path, OmegaConf.to_yaml(OmegaConf.create(resolved)))
