"""What a run does while it trains, and in what order: the one Lightning callback of the run. Lightning drives the
steps (devices, DDP, precision, loggers); this decides what happens around them, top to bottom:

- setup: the EMA of the ControlNet's weights (`--ema-decay`), which a resume then restores;
- start: the stop-signal handlers, the learning check's snapshot, the control monitor's state and baseline (and
  its first eval);
- before each optimizer step: the learning check reads the gradient;
- at each optimizer-step boundary (not between accumulated micro-batches), in this order:
  1. the learning check (a run that learns nothing stops before anything of it is saved),
  2. the EMA update,
  3. the periodic checkpoint, entered in the run record (the export holds the EMA weights when EMA is on),
  4. a stop signal any rank received: its checkpoint, then the stop (and a SLURM requeue if asked),
  5. the control eval, when due (of the EMA weights when EMA is on),
  6. the early stop, when the eval's F1 has not gained for `patience` evals;
- end: the last checkpoint and the diffusers export, then the monitor's last eval and summary;
- teardown: the previous signal handlers.
No other callback of the run changes what it saves, scores or when it stops (the image log and the progress bar
only show)."""

from __future__ import annotations

import logging
from typing import Any

import pytorch_lightning as pl
import torch

from training.checkpoint import PeriodicCheckpoint
from training.control_monitor import ControlMonitor
from training.ema import CHECKPOINT_KEY as EMA_KEY
from training.ema import ControlEMA, ema_applied
from training.guardrails import LearningCheck
from training.preemption import Preemption, requeue_slurm_job
from training.ranks import is_global_zero

logger = logging.getLogger(__name__)


class RunEvents(pl.Callback):
    def __init__(
        self,
        *,
        learning: LearningCheck | None = None,
        checkpoint: PeriodicCheckpoint | None = None,
        preemption: Preemption | None = None,
        monitor: ControlMonitor | None = None,
        requeue: bool = False,
        ema_decay: float = 0.0,
    ) -> None:
        if preemption is not None and checkpoint is None:
            raise ValueError("a stop signal's checkpoint needs the periodic checkpoint")
        self.learning, self.checkpoint, self.preemption, self.monitor = learning, checkpoint, preemption, monitor
        self.requeue, self.ema_decay = requeue, ema_decay
        self.ema: ControlEMA | None = None
        self._last_step = -1

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.ema_decay and self.ema is None:
            self.ema = ControlEMA(pl_module, self.ema_decay)
            if self.checkpoint is not None:
                self.checkpoint.ema = self.ema
            if self.monitor is not None:
                self.monitor.scored_weights = f"ema (decay {self.ema_decay})"

    @property
    def stopped_by_signal(self) -> Any:
        return self.preemption.stopped_by if self.preemption is not None else None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._last_step = trainer.global_step
        if self.preemption is not None:
            self.preemption.start()
        if self.learning is not None:
            self.learning.start(trainer, pl_module)
        if self.monitor is not None:
            with ema_applied(self.ema, pl_module):
                self.monitor.start(trainer, pl_module)
            trainer.should_stop = trainer.should_stop or self.monitor.stopped_early

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        if self.learning is not None:
            self.learning.before_optimizer_step(trainer, pl_module, optimizer)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        if step == self._last_step:
            return  # inside gradient accumulation: not a step boundary
        self._last_step = step
        if self.learning is not None:
            self.learning.check(trainer, pl_module)
        if self.ema is not None:
            self.ema.update(pl_module)
        if self.checkpoint is not None and self.checkpoint.due(step):
            self.checkpoint.save(trainer, pl_module)
        if self.preemption is not None and self.preemption.agreed(trainer, pl_module):
            # The job has seconds left, not an eval's worth: save and stop.
            self.checkpoint.save_once(trainer, pl_module)
            trainer.should_stop = True
            if self.requeue and is_global_zero(trainer):
                requeue_slurm_job()
            return
        if self.monitor is not None and self.monitor.due(step):
            with ema_applied(self.ema, pl_module):
                self.monitor.evaluate(trainer, pl_module)
            trainer.should_stop = trainer.should_stop or self.monitor.stopped_early

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.checkpoint is not None:
            self.checkpoint.finish(trainer, pl_module)
        if self.monitor is not None:
            with ema_applied(self.ema, pl_module):
                self.monitor.finish(trainer, pl_module)

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if self.checkpoint is not None:
            self.checkpoint.annotate(trainer, checkpoint)
        if self.ema is not None:
            checkpoint[EMA_KEY] = self.ema.state_dict()

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if self.ema is None:
            return
        if EMA_KEY in checkpoint:
            self.ema.load_state_dict(checkpoint[EMA_KEY])
        else:  # EMA turned on at this resume: the average starts from the restored weights
            logger.warning("the checkpoint holds no EMA: the average starts from its weights")

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.preemption is not None:
            self.preemption.restore()
