"""Preemption-safe training: a signal (SLURM's time limit or preemption, Ctrl-C) ends the run with a resumable
checkpoint at the next optimizer-step boundary and a non-zero exit code, and can requeue a SLURM job."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
from types import FrameType
from typing import Any

import pytorch_lightning as pl
import torch

from training.common.stop_signals import STOP_SIGNALS

logger = logging.getLogger(__name__)


class Preemption:
    """A stop signal (SLURM's time limit or preemption, Ctrl-C), turned into a stop at the next optimizer-step
    boundary: `training.run_events.RunEvents` asks `agreed` at each boundary, saves, and stops.

    Lightning's own SIGTERM handling ends a run without a checkpoint and with exit code 0, so these handlers
    replace it while training runs (`start`; `restore` puts the previous ones back). Under DDP the ranks agree
    at each boundary, so all of them save and stop together even if only one was signalled. A second signal
    before the save exits at once.
    """

    def __init__(self) -> None:
        self.received: signal.Signals | None = None  # the signal that asked this process to stop
        self.stopped_by: signal.Signals | None = None  # set once the run has saved and stopped for a signal
        self._previous: dict[signal.Signals, Any] = {}

    def start(self) -> None:
        for signum in STOP_SIGNALS:
            self._previous[signum] = signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.received is not None:  # asked twice: stop now, without the checkpoint
            raise SystemExit(128 + signum)
        self.received = signal.Signals(signum)
        logger.warning("received %s: saving a checkpoint at the end of this step, then stopping", self.received.name)

    def agreed(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> signal.Signals | None:
        """The stop signal any rank received (collective: every rank calls it at every step boundary)."""
        code = signal.Signals(self.received).value if self.received is not None else 0
        agreed = int(trainer.strategy.reduce(torch.tensor(code, device=pl_module.device), reduce_op="max"))
        if agreed:
            self.stopped_by = signal.Signals(agreed)
        return self.stopped_by

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            if handler is not None:
                signal.signal(signum, handler)
        self._previous = {}


def requeue_slurm_job() -> None:
    """Put this SLURM job back in the queue (`scontrol requeue`), as Lightning's SLURM environment does."""
    job = (
        os.environ.get("SLURM_ARRAY_JOB_ID")
        and f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    )
    job = job or os.environ.get("SLURM_JOB_ID")
    if not job:
        logger.warning("requeue asked for, but this is not a SLURM job (no SLURM_JOB_ID): not requeued")
        return
    try:
        result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as err:
        logger.warning("requeueing SLURM job %s failed: %s", job, err)
        return
    if result.returncode:
        logger.warning("requeueing SLURM job %s failed: %s", job, result.stderr.strip())
    else:
        logger.info("requeued SLURM job %s", job)
