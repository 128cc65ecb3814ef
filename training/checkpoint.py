"""Training checkpoints: trainable weights + optimizer + step + config, written atomically; ControlNet export."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.plugins import TorchCheckpointIO

from annotator.canny import CannyThresholds
from cldm.diffusers_io import save_diffusers_controlnet
from cldm.weights import CorruptCheckpointError, export_control, nonfinite_keys, reading_weights
from ldm.util import atomic_write
from training.ema import ControlEMA, ema_applied
from training.ranks import is_global_zero
from training.run_record import RunRecord

logger = logging.getLogger(__name__)

STEP_FILE = re.compile(r"^step-(\d+)\.ckpt$")
CONTROL_FILE = "control.safetensors"
DIFFUSERS_FOLDER = "control_diffusers"


REQUIRED_KEYS = ("global_step", "state_dict")


def open_checkpoint(path: str | Path, *, check_values: bool = False) -> dict[str, Any]:
    """A training checkpoint, memory-mapped and checked: CorruptCheckpointError if it is damaged or incomplete
    (for example cut short by a crash while it was written), or, with `check_values`, if its weights hold NaN or
    inf (a run that diverged: resuming it would go on from there)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    with reading_weights(path):
        # Our checkpoints hold only tensors and plain data, so the safe unpickler suffices.
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    missing = [k for k in REQUIRED_KEYS if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise CorruptCheckpointError(f"{path} is not a resumable training checkpoint: it lacks {', '.join(missing)}")
    bad = nonfinite_keys(ckpt["state_dict"]) if check_values else []
    if bad:
        raise CorruptCheckpointError(
            f"{path} holds NaN or inf in {len(bad)} weights (first: {bad[0]}): the run diverged"
        )
    return ckpt


def checkpoint_step(path: Path) -> int:
    """The step in a checkpoint's name (`step-0000042.ckpt` → 42)."""
    match = STEP_FILE.match(Path(path).name)
    if match is None:
        raise ValueError(f"{path} is not named step-N.ckpt")
    return int(match.group(1))


def list_checkpoints(folder: Path) -> list[Path]:
    """Resumable checkpoints in `folder`, oldest first."""
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := STEP_FILE.match(p.name))]
    return [p for _, p in sorted(found)]


class StreamingCheckpointIO(TorchCheckpointIO):
    """Write a checkpoint by streaming `torch.save` into a temp file beside it, then renaming it.

    Lightning's `TorchCheckpointIO` serialises the whole checkpoint into an in-memory buffer first, which
    adds the checkpoint's size to peak memory at every save (2.9 GB at SD1.5 with bf16 moments). This one
    adds none and is just as atomic. Lightning calls it on global rank 0 only. Loading maps the file
    instead of reading it whole, so a resume does not hold the checkpoint and the restored state at once.
    `before_rename(path)` runs once the file is written whole and before it takes its name (the run record
    enters it there, so a kill just after the rename never leaves a checkpoint that `last` does not know).
    """

    def __init__(self, *, before_rename: Callable[[Path], None] | None = None) -> None:
        super().__init__()
        self.before_rename = before_rename

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path) as tmp:
            torch.save(checkpoint, tmp)
            if self.before_rename is not None:
                self.before_rename(path)

    def load_checkpoint(
        self, path: str | Path, map_location: Any = "cpu", weights_only: bool | None = None
    ) -> dict[str, Any]:
        if weights_only is False or map_location not in ("cpu", None):
            raise TypeError(f"{type(self).__name__} loads with weights_only=True onto the CPU")
        return open_checkpoint(path)


class PeriodicCheckpoint:
    """Every `every` optimizer steps (and at the end): `step-N.ckpt` (keep the last `keep`) and the ControlNet export.
    `training.run_events.RunEvents` decides when (`due`, `save`, `finish`) and adds the run's fields (`annotate`).

    Each checkpoint is entered in the run's record (`record`, rank 0's) with its parent, and only the record's
    checkpoints are ever rotated out: files of another run in the folder are never counted or deleted.
    """

    def __init__(
        self,
        folder: Path,
        *,
        every: int,
        keep: int,
        config: dict[str, Any],
        record: RunRecord | None,
        thresholds: CannyThresholds | None = None,
    ) -> None:
        if every < 1 or keep < 1:
            raise ValueError(f"checkpoint interval and count must be >= 1, got every={every}, keep={keep}")
        self.folder = Path(folder)
        self.every, self.keep, self.config, self.record = every, keep, config, record
        self.thresholds = thresholds  # of the training data's edge maps: the exports record them
        self.ema: ControlEMA | None = None  # set by RunEvents when EMA is on: the exports hold its weights
        self._last_saved = -1

    def annotate(self, trainer: pl.Trainer, checkpoint: dict[str, Any]) -> None:
        """The run's fields of a checkpoint being written: its resolved config, and its place in the run's lineage."""
        checkpoint["cutenet_config"] = self.config
        if self.record is not None:
            name = f"step-{trainer.global_step:07d}.ckpt"
            checkpoint["cutenet_run"] = {"run_id": self.record.run_id, "parent": self.record.parent_of(name)}

    def due(self, step: int) -> bool:
        return step > 0 and step % self.every == 0 and step != self._last_saved

    def finish(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """The last step's checkpoint (unless already saved) and the final ControlNet in diffusers' layout."""
        self.save_once(trainer, pl_module)
        if is_global_zero(trainer):
            self._export_diffusers(pl_module)

    def _export_diffusers(self, pl_module: pl.LightningModule) -> None:
        """The final ControlNet as a diffusers folder beside control.safetensors."""
        with ema_applied(self.ema, pl_module):
            folder = save_diffusers_controlnet(
                pl_module, self.folder.parent / DIFFUSERS_FOLDER, thresholds=self.thresholds
            )
        logger.info("saved the diffusers ControlNet %s", folder)

    def save_once(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Save unless this step is already saved."""
        if trainer.global_step != self._last_saved:
            self.save(trainer, pl_module)

    def save(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        step = trainer.global_step
        self._last_saved = step
        path = self.folder / f"step-{step:07d}.ckpt"
        # Every rank holds the same weights, so every rank refuses alike (the save is collective).
        bad = nonfinite_keys({n: p for n, p in pl_module.named_parameters() if p.requires_grad})
        if bad:
            raise FloatingPointError(
                f"the trainable weights hold NaN or inf at step {step} (first: {bad[0]}), so {path.name} is not "
                "written; the checkpoints already saved are intact: lower the learning rate and go on from the "
                "newest with --resume-from last"
            )
        trainer.save_checkpoint(path, weights_only=False)  # collective: all ranks call it, rank 0 writes (atomically)
        if is_global_zero(trainer):
            self._finish(path, pl_module)

    def enter(self, path: Path) -> None:
        """StreamingCheckpointIO's `before_rename` (rank 0): the record lists the checkpoint before it has its name.
        An entry whose rename never happened is skipped by `last`, as a damaged file is."""
        if self.record is not None:
            self.record.add(path.name, checkpoint_step(path))
            self.record.write(self.folder.parent)

    def _finish(self, path: Path, pl_module: pl.LightningModule) -> None:
        with ema_applied(self.ema, pl_module):
            export_control(pl_module, self.folder.parent / CONTROL_FILE, thresholds=self.thresholds)
        if self.record is not None:
            old = sorted(self.record.checkpoints, key=lambda c: c.step)[: -self.keep]
            self.record.checkpoints = [c for c in self.record.checkpoints if c not in old]
            self.record.write(self.folder.parent)  # before the unlinks: a crash between leaves a file, not a gap
            for entry in old:
                (self.folder / entry.name).unlink(missing_ok=True)
        logger.info("saved %s and %s", path, self.folder.parent / CONTROL_FILE)
