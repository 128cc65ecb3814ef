"""One training run, top to bottom: resolve the settings and plan the run (nothing built, nothing written), hold
the folder, check the record and build the model, write the record once, make the trainer, build the latent cache,
train, and report. What happens around each step, in order, is `training.run_events.RunEvents`; the pieces are
`run_plan` (resolve once), `run_build` (model, cache, trainer), `resume` and `input_checks`.

The run never prints: it returns a `RunOutcome` with its exit code and the lines to show, and the script prints
them (`tutorial_train.py`)."""

from __future__ import annotations

import dataclasses
import logging
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytorch_lightning as pl

from cldm.loading import load_config
from cldm.weights import CheckpointMismatchError
from evaluation.onset import onset_threshold
from ldm.util import remove_stale_temp_files
from training.common.run_lock import RunFolderLocked, run_lock
from training.common.stop_signals import StopSignal, StopSignalsRaise
from training.control_monitor import ControlMonitor
from training.data_source import import_data
from training.guardrails import TrainingStalled
from training.input_checks import RunInputError
from training.preemption import requeue_slurm_job
from training.ranks import is_global_zero
from training.resume import refuse_occupied_early
from training.run_build import TrainData, build_model, make_trainer, prepare_latent_cache, write_config, write_skipped
from training.run_events import RunEvents
from training.run_plan import RunPlan, check_record, make_missing_inputs, plan_run, write_record
from training.settings import ModelOptions, TrainSettings

logger = logging.getLogger(__name__)

FINISHING = "finishing"  # the phase after training ended and saved


@dataclass(frozen=True)
class RunRequest:
    """What a command line asks for: a config, the fields its flags set, and where to start from."""

    config_path: str
    training: dict[str, Any] = field(default_factory=dict)  # TrainSettings fields given as flags
    model: dict[str, Any] = field(default_factory=dict)  # ModelOptions fields given as flags
    resume_from: str | None = None  # a step-N.ckpt, 'last' or 'auto'
    log_samples: bool = False  # OUTPUT/samples/rank<R>.txt: the sample indices each rank trained on


@dataclass(frozen=True)
class RunOutcome:
    """How a run ended: the process's exit code (0 trained, 1 training failed, 2 bad input or a folder that cannot
    be written, 128+N stopped by signal N), a one-line reason for stderr, and the report for stdout."""

    code: int
    message: str | None = None
    lines: list[str] = field(default_factory=list)


def resolve_settings(request: RunRequest) -> tuple[dict[str, Any], TrainSettings]:
    """The config with the flags applied and checked: the model node with its options, and the training settings."""
    config = load_config(request.config_path)
    training = dict(request.training)
    if "data" in training:
        training["toy_data"] = None  # only the config's own data folder is generated when missing
    settings = dataclasses.replace(TrainSettings.from_config(config.get("training"), request.config_path), **training)
    options = dataclasses.replace(ModelOptions.from_model_config(config["model"], request.config_path), **request.model)
    settings.validate()
    options.check(settings)
    config["model"] = options.applied_to(config["model"], seed=settings.seed)
    return config, settings


def run(request: RunRequest) -> RunOutcome:
    """The whole run, a stop signal held from its first second (not only inside the training loop)."""
    with StopSignalsRaise() as signals:
        requeue = bool(request.training.get("slurm_requeue"))
        try:
            signals.phase = "checking the inputs"
            try:
                plan = plan_request(request)
            except (RunInputError, FileNotFoundError, ValueError) as err:
                return RunOutcome(2, f"error: {err}")
            requeue = plan.settings.slurm_requeue
            with ExitStack() as stack:
                if is_global_zero():  # one lock per run: DDP ranks > 0 share rank 0's
                    try:
                        stack.enter_context(run_lock(plan.output))
                    except RunFolderLocked as err:
                        return RunOutcome(2, f"error: {err}")
                try:
                    return train(plan, signals, log_samples=request.log_samples)
                except OSError as err:  # a disk that filled up or went read-only on the way: saved checkpoints stay
                    return RunOutcome(
                        2,
                        f"error: cannot write {err.filename or plan.output} ({err.strerror}) while {signals.phase}; "
                        "the checkpoints already saved are intact: free space (or fix the folder) and go on with "
                        "--resume-from auto",
                    )
        except StopSignal as stop:
            return stopped_outside_training(stop, signals.phase, requeue=requeue)


def plan_request(request: RunRequest) -> RunPlan:
    """Resolve once: the settings, the data (imported into OUTPUT/data when it is a Hugging Face dataset), the
    inputs the config generates when missing, then the checked, frozen plan."""
    config, settings = resolve_settings(request)
    refuse_occupied_early(settings, resume_from=request.resume_from)  # before the import below writes into OUTPUT
    settings = import_data(settings, rank_zero=is_global_zero())
    make_missing_inputs(config["model"], settings, resume_from=request.resume_from)
    return plan_run(config, settings, config_path=request.config_path, resume_from=request.resume_from)


def train(plan: RunPlan, signals: StopSignalsRaise, *, log_samples: bool) -> RunOutcome:
    """Build, train and report, in this order; `signals.phase` names each step for a stop signal's message."""
    if plan.writes_init:
        logger.warning(
            "no initial checkpoint (training.init is null): the SD part is freshly initialised, so its "
            "zero-initialised output layer passes no gradient to the ControlNet and nothing is learned. "
            "This run only exercises the pipeline; pass --init with a tool_add_control.py checkpoint."
        )
    pl.seed_everything(plan.settings.seed, workers=True)
    rank_zero = is_global_zero()
    if rank_zero:
        remove_stale_temp_files(plan.output)  # left by a run killed while it wrote (we hold the folder's lock)
    signals.phase = "checking the run record"
    try:
        if rank_zero:
            check_record(plan)
        signals.phase = "loading the weights"
        model = build_model(plan)
        record = write_record(plan) if rank_zero else None
    except ValueError as err:  # a resume that does not match its run, a damaged file, or NaN/inf weights
        return RunOutcome(2, f"error: {err}")
    signals.phase = "making the trainer"
    trainer = make_trainer(plan, record=record, log_samples=log_samples)
    if is_global_zero(trainer):
        write_config(plan.output / "config.yaml", plan.resolved)
        write_skipped(plan)
    signals.phase = "building the latent cache"
    prepare_latent_cache(plan, model, trainer.strategy.root_device)
    signals.phase = "starting the trainer"  # until the first step, when RunEvents takes the signals over
    try:
        trainer.fit(model, datamodule=TrainData(plan), ckpt_path=str(plan.resume_from) if plan.resume_from else None)
    except (FloatingPointError, CheckpointMismatchError, TrainingStalled) as err:
        return RunOutcome(1, f"error: {err}")
    events = next(c for c in trainer.callbacks if isinstance(c, RunEvents))
    if events.stopped_by_signal is not None:
        message = None
        if is_global_zero(trainer):
            message = (
                f"stopped by {events.stopped_by_signal.name} at step {trainer.global_step}: saved "
                f"{plan.output}/checkpoints/step-{trainer.global_step:07d}.ckpt; continue with --resume-from last"
            )
        return RunOutcome(128 + events.stopped_by_signal.value, message)
    signals.phase = FINISHING
    return RunOutcome(0, lines=report(plan, model, trainer, events.monitor))


def report(plan: RunPlan, model: pl.LightningModule, trainer: pl.Trainer, monitor: ControlMonitor | None) -> list[str]:
    """What the run wrote, and what the monitor saw. Every rank reports its checksum of the ControlNet: equal lines
    show that the DDP replicas stayed in sync."""
    checksum = sum(float(v.double().sum()) for v in model.control_model.state_dict().values())
    lines = [f"control checksum rank {trainer.global_rank}: {checksum:.12e}"]
    if not is_global_zero(trainer):
        return lines
    out = plan.output
    lines += [
        f"trained to step {trainer.global_step}; outputs in {out}/:",
        f"  ControlNet weights: {out}/control.safetensors (initial weights: {plan.init})",
        f"  resumable checkpoints: {out}/checkpoints/ (continue with --resume-from last)",
        f"  image grids: {out}/image_log/train/   {plan.settings.logger} logs: {out}/lightning_logs/",
    ]
    if monitor is not None and monitor.rows:
        lines += control_report(monitor, out)
    return lines


def control_report(monitor: ControlMonitor, output: Path) -> list[str]:
    """What the controllability monitor saw, in a few lines."""
    p, base = monitor.progress, monitor.baseline["edge_f1"]
    onset = (
        f"the control took hold at step {p.onset}"
        if p.onset is not None
        else f"no onset of control yet (exact edge F1 has not stayed above {onset_threshold(base):.3f})"
    )
    early = f", stopped early after {monitor.patience} evals without a gain" if monitor.stopped_early else ""
    return [
        f"  control: {onset}; exact edge F1 {monitor.rows[-1]['edge_f1']:.3f} at the last eval vs {base:.3f} at "
        f"strength 0{early}",
        f"  control curve: {output}/control_curve.csv and {output}/control_curve.png",
        f"  best ControlNet by exact edge F1: {output}/best/ (step {p.best_step}, F1 {p.best_f1:.3f})",
    ]


def stopped_outside_training(stop: StopSignal, phase: str, *, requeue: bool) -> RunOutcome:
    """A stop signal before the first step (or after the last): say what was saved, requeue if asked, exit 128+N."""
    saved = (
        "training had ended and everything was saved"
        if phase == FINISHING
        else "no training step was taken, so no new checkpoint was saved (those already in the folder are kept); "
        "run the same command again, with --resume-from auto to go on from the newest"
    )
    if requeue and is_global_zero():
        requeue_slurm_job()
    return RunOutcome(128 + stop.signal.value, f"stopped by {stop.signal.name} while {phase}: {saved}")
