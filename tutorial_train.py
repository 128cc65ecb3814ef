r"""Train a ControlNet with PyTorch Lightning, from one CPU to multi-node DDP.

With no flags it runs the embedded default, the CPU quickstart: a ControlNet on the committed toy base
(models/cldm_toy.yaml, models/toy_base.safetensors) learns to fill generated circles from their edges.
For SD1.5 on Stanford Dogs:

    python tutorial_train.py --config models/cldm_v15.yaml --init models/control_sd15_ini.ckpt \
        --data training/dogs --devices 2

Defaults come from the config (its `training:` section and `model.params`); each flag overrides one field.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from contextlib import ExitStack
from pathlib import Path

import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf

from cldm.loading import load_config
from cldm.weights import CheckpointMismatchError
from evaluation.onset import onset_threshold
from ldm.flags import HelpFormatter, add_flags, given_flags, preparse
from ldm.util import remove_stale_temp_files
from training.common.run_lock import RunFolderLocked, run_lock
from training.common.stop_signals import StopSignal, StopSignalsRaise
from training.control_monitor import ControlMonitor
from training.data_source import import_data
from training.guardrails import TrainingStalled
from training.preemption import requeue_slurm_job
from training.ranks import is_global_zero
from training.run import (
    RunInputError,
    RunPlan,
    TrainData,
    build_model,
    check_record,
    make_missing_inputs,
    make_trainer,
    plan_run,
    prepare_latent_cache,
    refuse_occupied_early,
    resolved_config,
    write_config,
    write_record,
    write_skipped,
)
from training.run_events import RunEvents
from training.settings import ModelOptions, TrainSettings

FINISHING = "finishing"  # the phase after training ended and saved


DEFAULT_CONFIG = "models/cldm_toy.yaml"


def config_defaults(config_path: str) -> tuple[TrainSettings | None, ModelOptions | None]:
    """The settings a config resolves to before any flag, for --help to show; none when it cannot be read (the
    run itself then says why)."""
    try:
        config = load_config(config_path)
        return (
            TrainSettings.from_config(config.get("training"), config_path),
            ModelOptions.from_model_config(config["model"], config_path),
        )
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return None, None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    config_path = preparse(argv, "--config", DEFAULT_CONFIG)
    train_defaults, model_defaults = config_defaults(config_path)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument(
        "--config",
        default=DEFAULT_CONFIG,
        help="model + training YAML (the toy quickstart model by default); the defaults below are its values",
    )
    p.add_argument(
        "--print-config",
        action="store_true",
        help="print the resolved config (the YAML with every flag applied) and exit, writing nothing",
    )
    p.add_argument(
        "--resume-from",
        help="continue a run: a step-N.ckpt, 'last' (newest in OUTPUT/checkpoints) or 'auto' (last if any)",
    )
    p.add_argument(
        "--log-samples",
        action="store_true",
        help="write the sample indices each rank trained on to OUTPUT/samples/rank<R>.txt (audit)",
    )
    add_flags(p.add_argument_group("training (the config's training: section)"), TrainSettings, defaults=train_defaults)
    add_flags(p.add_argument_group("model (the config's model.params)"), ModelOptions, defaults=model_defaults)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with StopSignalsRaise() as signals:  # preemption holds from the first second, not only inside the loop
        try:
            return plan_and_train(args, signals)
        except StopSignal as stop:
            return stopped_outside_training(stop, signals, requeue=bool(getattr(args, "slurm_requeue", False)))


def plan_and_train(args: argparse.Namespace, signals: StopSignalsRaise) -> int:
    signals.phase = "checking the inputs"
    if args.print_config:
        return print_config(args)
    try:
        config, plan = plan_from_args(args)
    except (RunInputError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    with ExitStack() as stack:
        if is_global_zero():  # one lock per run: DDP ranks > 0 share rank 0's
            try:
                stack.enter_context(run_lock(plan.output))
            except RunFolderLocked as err:
                print(f"error: {err}", file=sys.stderr)
                return 2
        try:
            return train(args, config, plan, signals)
        except StopSignal as stop:
            return stopped_outside_training(stop, signals, requeue=plan.settings.slurm_requeue)
        except OSError as err:  # a disk that filled up or went read-only on the way: the checkpoints saved stay
            print(
                f"error: cannot write {err.filename or plan.output} ({err.strerror}) while {signals.phase}; the "
                "checkpoints already saved are intact: free space (or fix the folder) and go on with --resume-from auto",
                file=sys.stderr,
            )
            return 2


def plan_from_args(args: argparse.Namespace) -> tuple[dict, RunPlan]:
    """The resolved config and the checked run plan: settings from the YAML and the flags, inputs made or found."""
    config, settings = resolve_settings(args)
    refuse_occupied_early(settings, resume_from=args.resume_from)  # before the import below writes into OUTPUT
    settings = import_data(settings, rank_zero=is_global_zero())
    make_missing_inputs(config["model"], settings, resume_from=args.resume_from)
    return config, plan_run(config["model"], settings, config_path=args.config, resume_from=args.resume_from)


def resolve_settings(args: argparse.Namespace) -> tuple[dict, TrainSettings]:
    """The config with the flags applied and checked: the model node with its options, and the training settings."""
    config = load_config(args.config)
    training = given_flags(args, TrainSettings)
    if "data" in training:
        training["toy_data"] = None  # only the config's own data folder is generated when missing
    settings = dataclasses.replace(TrainSettings.from_config(config.get("training"), args.config), **training)
    options = dataclasses.replace(
        ModelOptions.from_model_config(config["model"], args.config), **given_flags(args, ModelOptions)
    )
    settings.validate()
    options.check(settings)
    config["model"] = options.applied_to(config["model"], seed=settings.seed)
    return config, settings


def print_config(args: argparse.Namespace) -> int:
    """--print-config: the config as this command would run it (the YAML, its `extends`, every flag), as YAML."""
    try:
        config, settings = resolve_settings(args)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(OmegaConf.to_yaml(OmegaConf.create({**config, "training": dataclasses.asdict(settings)})), end="")
    return 0


def stopped_outside_training(stop: StopSignal, signals: StopSignalsRaise, *, requeue: bool) -> int:
    """A stop signal before the first step (or after the last): say what was saved, requeue if asked, exit 128+N."""
    saved = (
        "training had ended and everything was saved"
        if signals.phase == FINISHING
        else "no training step was taken, so no new checkpoint was saved (those already in the folder are kept); "
        "run the same command again, with --resume-from auto to go on from the newest"
    )
    print(f"stopped by {stop.signal.name} while {signals.phase}: {saved}", file=sys.stderr)
    if requeue and is_global_zero():
        requeue_slurm_job()
    return 128 + stop.signal.value


def train(args: argparse.Namespace, config: dict, plan: RunPlan, signals: StopSignalsRaise) -> int:
    settings = plan.settings
    if plan.writes_init:
        print(
            "note: no initial checkpoint (training.init is null): the SD part is freshly initialised, so its "
            "zero-initialised output layer passes no gradient to the ControlNet and nothing is learned. "
            "This run only exercises the pipeline; pass --init with a tool_add_control.py checkpoint."
        )
    pl.seed_everything(settings.seed, workers=True)
    rank_zero = is_global_zero()
    resolved = resolved_config(plan, config)
    if rank_zero:
        remove_stale_temp_files(plan.output)  # left by a run killed while it wrote (we hold the folder's lock)
    signals.phase = "checking the run record"
    try:
        if rank_zero:
            check_record(plan)
        signals.phase = "loading the weights"
        model = build_model(plan)
        record = write_record(plan, resolved) if rank_zero else None
    except ValueError as err:  # a resume that does not match its run, a damaged file, or NaN/inf weights
        print(f"error: {err}", file=sys.stderr)
        return 2
    cuda = torch.cuda.is_available() and settings.accelerator != "cpu"
    signals.phase = "building the latent cache"
    prepare_latent_cache(plan, model, "cuda" if cuda else "cpu")
    signals.phase = "starting the trainer"
    trainer = make_trainer(plan, resolved, record=record, log_samples=args.log_samples)
    if is_global_zero(trainer):
        write_config(plan.output / "config.yaml", resolved)
        write_skipped(plan)
    try:
        trainer.fit(model, datamodule=TrainData(plan), ckpt_path=str(plan.resume_from) if plan.resume_from else None)
    except (FloatingPointError, CheckpointMismatchError, TrainingStalled) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    events = next(c for c in trainer.callbacks if isinstance(c, RunEvents))
    if events.stopped_by_signal is not None:
        if is_global_zero(trainer):
            print(
                f"stopped by {events.stopped_by_signal.name} at step {trainer.global_step}: saved "
                f"{plan.output}/checkpoints/step-{trainer.global_step:07d}.ckpt; continue with --resume-from last",
                file=sys.stderr,
            )
        return 128 + events.stopped_by_signal.value
    signals.phase = FINISHING
    # Every rank prints its own checksum: equal lines show the DDP replicas stayed in sync.
    checksum = sum(float(v.double().sum()) for v in model.control_model.state_dict().values())
    print(f"control checksum rank {trainer.global_rank}: {checksum:.12e}")
    if is_global_zero(trainer):
        print(f"trained to step {trainer.global_step}; outputs in {plan.output}/:")
        print(f"  ControlNet weights: {plan.output}/control.safetensors (initial weights: {plan.init})")
        print(f"  resumable checkpoints: {plan.output}/checkpoints/ (continue with --resume-from last)")
        print(f"  image grids: {plan.output}/image_log/train/   {settings.logger} logs: {plan.output}/lightning_logs/")
        if events.monitor is not None and events.monitor.rows:
            print(control_report(events.monitor, plan.output))
    return 0


def control_report(monitor: ControlMonitor, output: Path) -> str:
    """What the controllability monitor saw, in a few lines."""
    p, base = monitor.progress, monitor.baseline["edge_f1"]
    onset = (
        f"the control took hold at step {p.onset}"
        if p.onset is not None
        else f"no onset of control yet (exact edge F1 has not stayed above {onset_threshold(base):.3f})"
    )
    early = f", stopped early after {monitor.patience} evals without a gain" if monitor.stopped_early else ""
    return "\n".join(
        [
            f"  control: {onset}; exact edge F1 {monitor.rows[-1]['edge_f1']:.3f} at the last eval vs {base:.3f} at "
            f"strength 0{early}",
            f"  control curve: {output}/control_curve.csv and {output}/control_curve.png",
            f"  best ControlNet by exact edge F1: {output}/best/ (step {p.best_step}, F1 {p.best_f1:.3f})",
        ]
    )


if __name__ == "__main__":
    sys.exit(main())
