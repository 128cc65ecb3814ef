"""The controllability monitor: every `every` steps, the ControlNet is scored on the held-out pairs as
tool_eval_control.py scores it (same code, settings and fixed noise), so a run shows whether its control is being
learned while it trains.

Each eval appends a row to OUTPUT/control_curve.csv and redraws control_curve.png, logs the scores and an image grid
(edge map | sample) to the run's Lightning logger and control_monitor/, keeps the ControlNet of the best exact F1
in OUTPUT/best/ (ours and diffusers' layouts), reports the onset of control once it is confirmed, and with
`patience` stops the run after that many evals without a gain. The strength-0 baseline is measured once per run.

Under DDP each rank samples its share of the pairs and the scores are gathered, so every rank holds the same
figures (and agrees on an early stop); rank 0 writes. The eval runs inside a forked RNG, so training draws exactly
what it would without the monitor, and a resumed run goes on bit-equal.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import random
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from PIL import Image

from cldm.diffusers_io import save_diffusers_controlnet
from cldm.image_log import log_image
from cldm.weights import export_control
from evaluation.evaluate_control import EvalSettings, PairScore, evaluate, held_out_rows
from evaluation.onset import CONFIRM, find_onset, onset_threshold
from ldm.util import write_bytes_atomically, write_text_atomically
from pairs.prompt_file import VAL_PROMPT_FILE
from training.control_curve import (
    CURVE_PLOT,
    Row,
    plot_curve,
    read_baseline,
    read_curve,
    row_of,
    write_baseline,
    write_curve,
)
from training.data.dataset import pairs_fingerprint
from training.ranks import is_global_zero

logger = logging.getLogger(__name__)

BEST_FOLDER = "best"
BEST_FILE = "best.json"
GRID_FOLDER = "control_monitor"
SUMMARY_FILE = "summary.json"
GRID_PAIRS = 4  # rows of each eval's image grid


def gather_scores(scores: list[PairScore]) -> list[PairScore]:
    """Every rank's pair scores, on every rank (one process: its own)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return scores
    parts: list[list[PairScore] | None] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(parts, scores)
    return [s for part in parts for s in part]


def controls_nothing(pl_module: pl.LightningModule) -> bool:
    """Whether the ControlNet's output layers (its zero convolutions) are all exactly zero, as at a fresh start."""
    return all(not bool(p.any()) for p in pl_module.control_model.zero_conv_parameters())


@contextmanager
def rng_untouched(device: torch.device) -> Any:
    """Whatever runs inside leaves torch's (CPU and this CUDA device's), NumPy's and Python's RNG states as they were."""
    devices = (
        [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    )
    numpy_state, python_state = np.random.get_state(), random.getstate()
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            np.random.set_state(numpy_state)
            random.setstate(python_state)


@dataclass
class Progress:
    """What the evals so far say: the best exact F1 and its step, evals since it, and the onset."""

    best_step: int | None = None
    best_f1: float = -1.0
    since_best: int = 0
    onset: int | None = None

    @classmethod
    def of(cls, rows: list[Row], baseline: float) -> Progress:
        progress = cls()
        for row in rows:
            progress.add(row)
        progress.onset = find_onset([r["step"] for r in rows], [r["edge_f1"] for r in rows], baseline)
        return progress

    def add(self, row: Row) -> bool:
        """Count one eval; True when it is the best so far."""
        if row["edge_f1"] > self.best_f1:
            self.best_step, self.best_f1, self.since_best = row["step"], row["edge_f1"], 0
            return True
        self.since_best += 1
        return False


class ControlMonitor:
    """The monitor's state and evals; `training.run_events.RunEvents` calls `start`, `due`/`evaluate` at step
    boundaries, and `finish`, and stops the run when `stopped_early` is set."""

    def __init__(
        self,
        output: Path,
        data: Path,
        *,
        every: int,
        settings: EvalSettings,
        patience: int = 0,
        init_digest: str | None = None,
        prompt_file: str = VAL_PROMPT_FILE,
    ) -> None:
        if every < 1 or patience < 0:
            raise ValueError(f"need eval interval >= 1 and patience >= 0, got every={every}, patience={patience}")
        self.output, self.data, self.every, self.settings = Path(output), Path(data), every, settings
        self.patience, self.init_digest, self.prompt_file = patience, init_digest, prompt_file
        self.rows: list[Row] = []
        self.baseline: dict[str, Any] | None = None
        self.progress = Progress()
        self.stopped_early = False
        self.scored_weights = "trained"  # or "ema (decay D)": what the evals, best/ and the summary hold

    # -- the run's events (called by RunEvents) -------------------------------------------------------------
    def start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        step = trainer.global_step
        rows, baseline = self._read_state(step) if is_global_zero(trainer) else (None, None)
        self.rows, self.baseline = trainer.strategy.broadcast((rows, baseline), src=0)
        first_row = None  # this step's eval, when the baseline's samples are that eval's
        if self.baseline is None:
            start, grid_rows = time.perf_counter(), []
            self.baseline = self._score(trainer, pl_module, (0.0,), step, grid_rows=grid_rows)["0"]
            if controls_nothing(pl_module):
                # Zero convolutions add exactly zero: strength 1 samples what strength 0 did, so it is not sampled again.
                first_row = (row_of(step, self.baseline, time.perf_counter() - start), grid_rows)
            if is_global_zero(trainer):
                write_baseline(self.output, self._baseline_key(), self.baseline)
                logger.info(
                    "control monitor: strength 0 (control off) scores exact edge F1 %.4f on %d held-out pairs; "
                    "the onset threshold is %.4f",
                    self.baseline["edge_f1"],
                    self.baseline["n"],
                    onset_threshold(self.baseline["edge_f1"]),
                )
        self.progress = Progress.of(self.rows, self.baseline["edge_f1"])
        if self._patience_spent():
            logger.info("control monitor: the run had already stopped early at step %d", self.rows[-1]["step"])
            self.stopped_early = True
            return
        if step % self.every == 0 and not self._has_row(step):
            if first_row is not None:
                self._record(trainer, pl_module, *first_row)
            else:
                self.evaluate(trainer, pl_module)

    def due(self, step: int) -> bool:
        return step % self.every == 0 and not self._has_row(step)

    def finish(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.global_step >= trainer.max_steps and not self._has_row(trainer.global_step):
            self.evaluate(trainer, pl_module)  # the curve ends at the weights the run ends with
        if is_global_zero(trainer) and self.rows:
            self._write_summary(trainer.global_step)

    # -- one eval --------------------------------------------------------------------------------------------
    def evaluate(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> Row:
        step = trainer.global_step
        start = time.perf_counter()
        grid_rows: list[list[np.ndarray]] = []
        scores = self._score(trainer, pl_module, (1.0,), step, grid_rows=grid_rows)["1"]
        return self._record(trainer, pl_module, row_of(step, scores, time.perf_counter() - start), grid_rows)

    def _record(self, trainer: pl.Trainer, pl_module: pl.LightningModule, row: Row, grid_rows: list) -> Row:
        """Enter one eval: the curve, the best, the onset, rank 0's files and logs, and early stopping."""
        step = row["step"]
        self.rows = [r for r in self.rows if r["step"] < step] + [row]
        is_best = self.progress.add(row)
        onset = find_onset([r["step"] for r in self.rows], [r["edge_f1"] for r in self.rows], self.baseline["edge_f1"])
        if is_global_zero(trainer):
            self._report_onset(onset, row)  # against the onset before this eval
        self.progress.onset = onset
        if is_global_zero(trainer):  # the summary written here holds this eval's onset
            self._publish(trainer, pl_module, row, grid_rows, is_best=is_best)
        if self._patience_spent():
            logger.info(
                "control monitor: stopping early at step %d: exact edge F1 has not gained for %d evals since step %d "
                "(%.4f, kept in %s)",
                step,
                self.patience,
                self.progress.best_step,
                self.progress.best_f1,
                self.output / BEST_FOLDER,
            )
            self.stopped_early = True
        return row

    def _score(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        strengths: tuple[float, ...],
        step: int,
        *,
        grid_rows: list | None = None,
    ) -> dict[str, dict[str, Any]]:
        was_training = pl_module.training
        pl_module.eval()
        try:
            with torch.no_grad(), rng_untouched(pl_module.device):
                return evaluate(
                    pl_module,
                    self.data,
                    strengths,
                    settings=self.settings,
                    prompt_file=self.prompt_file,
                    grid_rows=grid_rows if is_global_zero(trainer) else None,
                    rank=trainer.global_rank,
                    world_size=trainer.world_size,
                    gather=gather_scores,
                    progress=False,
                )
        finally:
            pl_module.train(was_training)

    # -- rank 0's outputs ------------------------------------------------------------------------------------
    def _publish(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        row: Row,
        grid_rows: list,
        *,
        is_best: bool,
    ) -> None:
        write_curve(self.output, self.rows)
        step = row["step"]
        if trainer.logger is not None:
            metrics = {f"control/{k}": float(v) for k, v in row.items() if k not in ("step", "n") and v is not None}
            trainer.logger.log_metrics(metrics | {"control/baseline_edge_f1": self.baseline["edge_f1"]}, step=step)
        if grid_rows:
            grid = np.concatenate([np.concatenate(r[:2], axis=1) for r in grid_rows[:GRID_PAIRS]], axis=0)
            buffer = io.BytesIO()
            Image.fromarray(grid).save(buffer, format="PNG")
            (self.output / GRID_FOLDER).mkdir(parents=True, exist_ok=True)
            write_bytes_atomically(self.output / GRID_FOLDER / f"step-{step:07d}.png", buffer.getvalue())
            log_image(trainer.logger, "control/edges_and_samples", grid, step)
        if is_best:
            self._save_best(pl_module, row)
        logger.info(
            "control monitor, step %d: exact edge F1 %.4f (strength 0: %.4f), 1-px F1 %.4f, SSIM %.3f%s [%.1f s]",
            step,
            row["edge_f1"],
            self.baseline["edge_f1"],
            row["edge_f1_tolerant"],
            row["ssim"],
            "" if row["colour_accuracy"] is None else f", colour {row['colour_accuracy']:.0%}",
            row["seconds"],
        )
        plot_curve(
            self.output / CURVE_PLOT,
            self.rows,
            self.baseline["edge_f1"],
            onset=self.progress.onset,
            best=self.progress.best_step,
        )
        self._write_summary(step)

    def _save_best(self, pl_module: pl.LightningModule, row: Row) -> None:
        folder = self.output / BEST_FOLDER
        folder.mkdir(parents=True, exist_ok=True)
        (folder / BEST_FILE).unlink(missing_ok=True)  # the files below are the new best's only once it is back
        thresholds = self.settings.thresholds
        export_control(pl_module, folder / "control.safetensors", thresholds=thresholds)
        save_diffusers_controlnet(pl_module, folder / "control_diffusers", thresholds=thresholds)
        write_text_atomically(folder / BEST_FILE, json.dumps({"step": row["step"], "edge_f1": row["edge_f1"]}) + "\n")

    def _report_onset(self, onset: int | None, row: Row) -> None:
        if onset is not None and self.progress.onset is None:
            logger.info(
                "control monitor: the control took hold at step %d (exact edge F1 above %.4f, twice strength 0's, "
                "for %d evals in a row)",
                onset,
                onset_threshold(self.baseline["edge_f1"]),
                CONFIRM,
            )
        elif onset is None and self.progress.onset is not None:
            logger.warning(
                "control monitor: the control has been lost by step %d (exact edge F1 %.4f, back below %.4f)",
                row["step"],
                row["edge_f1"],
                onset_threshold(self.baseline["edge_f1"]),
            )

    def _write_summary(self, step: int) -> None:
        """OUTPUT/summary.json: the run's figures so far, under "control"."""
        path = self.output / SUMMARY_FILE
        try:
            summary = json.loads(path.read_text()) if path.is_file() else {}
        except ValueError:
            summary = {}
        summary["control"] = {
            "step": step,
            "onset_step": self.progress.onset,
            "baseline_edge_f1": self.baseline["edge_f1"],
            "onset_threshold": onset_threshold(self.baseline["edge_f1"]),
            "best_step": self.progress.best_step,
            "best_edge_f1": self.progress.best_f1,
            "last_edge_f1": self.rows[-1]["edge_f1"],
            "evals": len(self.rows),
            "stopped_early": self.stopped_early,
            "scored_weights": self.scored_weights,
        }
        write_text_atomically(path, json.dumps(summary, indent=2) + "\n")

    # -- state across a resume -------------------------------------------------------------------------------
    def _baseline_key(self) -> dict[str, Any]:
        rows = held_out_rows(self.data, self.prompt_file, self.settings.n)
        return {
            "eval": dataclasses.asdict(self.settings),
            "pairs": pairs_fingerprint(self.data, rows),
            "init": self.init_digest,
        }

    def _read_state(self, step: int) -> tuple[list[Row], dict[str, Any] | None]:
        """Rank 0: the curve up to this run's starting step (rows after it belong to a stretch that is being
        trained again), the baseline when it still matches, and best/ when it is one of the kept evals."""
        rows = read_curve(self.output)
        kept = [r for r in rows if r["step"] <= step]
        if len(kept) < len(rows):
            logger.info(
                "control monitor: %d eval rows after step %d are dropped; the run evaluates those steps again",
                len(rows) - len(kept),
                step,
            )
            write_curve(self.output, kept)
        best = self.output / BEST_FOLDER
        try:
            best_step = json.loads((best / BEST_FILE).read_text())["step"] if (best / BEST_FILE).is_file() else None
        except (ValueError, KeyError):
            best_step = None
        if best.exists() and (best_step is None or best_step > step):
            logger.info(
                "control monitor: %s held weights from after step %d; it is refilled by the next best eval", best, step
            )
            shutil.rmtree(best)
        return kept, read_baseline(self.output, self._baseline_key())

    def _has_row(self, step: int) -> bool:
        return any(r["step"] == step for r in self.rows)

    def _patience_spent(self) -> bool:
        return self.patience > 0 and self.progress.since_best >= self.patience
