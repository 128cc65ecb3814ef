"""One training run of ControlLDM with PyTorch Lightning: generated inputs, input checks, model set-up, data, trainer."""

from __future__ import annotations

import copy
import dataclasses
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf
from pytorch_lightning.callbacks import TQDMProgressBar
from pytorch_lightning.loggers import CSVLogger, Logger, TensorBoardLogger, WandbLogger

from annotator.canny import DEFAULT_THRESHOLDS, CannyThresholds
from cldm.edge_record import recorded_thresholds
from cldm.image_log import ImageLogger
from cldm.loading import load_base, load_control
from cldm.weights import (
    CheckpointMismatchError,
    CorruptCheckpointError,
    build_control_init,
    check_state_dict,
    load_state_dict,
    load_weights_from_file,
    save_state,
)
from evaluation.evaluate_control import EvalSettings, held_out_rows
from ldm.models.diffusion.objectives import Objective
from ldm.util import instantiate_from_config, tsv_text, write_text_atomically
from pairs.manifest import edge_thresholds
from pairs.prompt_file import PROMPT_FILE, VAL_PROMPT_FILE
from training.checkpoint import (
    CONTROL_FILE,
    DIFFUSERS_FOLDER,
    PeriodicCheckpoint,
    StreamingCheckpointIO,
    list_checkpoints,
    open_checkpoint,
)
from training.control_monitor import ControlMonitor
from training.data.check_pairs import BadPair, check_pairs, check_shard_pairs, size_multiple
from training.data.dataset import PairDataset
from training.data.latent_cache import CachedPairs, build_latent_cache
from training.data.loader import make_train_loader
from training.data.shard_dataset import ShardPairs
from training.data.toy_data import write_toy_dataset
from training.data_source import open_pairs
from training.guardrails import LearningCheck
from training.preemption import Preemption
from training.ranks import is_global_zero
from training.run_events import RunEvents
from training.run_record import RUN_FILE, FileRecord, RunRecord, RunRecordError
from training.settings import TrainSettings

logger = logging.getLogger(__name__)

INIT_FILE = "init.safetensors"
SKIPPED_FILE = "skipped_pairs.tsv"
CACHE_DIR = "latent_cache"


class RunInputError(ValueError):
    """Bad input found before any model is built; the message says what and where."""


@dataclass(frozen=True)
class RunPlan:
    """Everything checked and resolved before the model is built; nothing changes it afterwards."""

    settings: TrainSettings
    model_config: dict[str, Any]
    output: Path
    dataset: PairDataset | ShardPairs
    init: Path  # full ControlLDM weights to start from (a fresh start writes its fresh weights here: `writes_init`)
    resume_from: Path | None  # a training checkpoint to continue
    start_step: int
    skipped: list[BadPair]  # pairs that failed the pre-flight check and are left out (settings.skip_bad)
    record: RunRecord | None = None  # the folder's run record, when this run continues it
    branch_of: dict[str, Any] | None = None  # the other run's checkpoint a branch starts from
    fresh_init: bool = False  # no initial checkpoint: SD freshly initialised, its weights saved to OUTPUT/init
    thresholds: CannyThresholds = DEFAULT_THRESHOLDS  # that made the data's edge maps: scored and exported with them

    @property
    def writes_init(self) -> bool:
        """A fresh start without initial weights: build_model saves the fresh ones to `init`."""
        return self.fresh_init and self.resume_from is None


def _meta_state(model_config: dict[str, Any]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Key/shape plan of the model, and its trainable keys, without allocating weights."""
    with torch.device("meta"):
        model = instantiate_from_config(model_config)
    return model.state_dict(), model.trainable_state_keys()


@dataclass
class Resume:
    """The checkpoint a run goes on from: its own newest (`continues`), or another run's (a branch, in a new folder)."""

    path: Path
    checkpoint: dict[str, Any]
    continues: bool


def _open_intact(path: Path) -> dict[str, Any]:
    try:
        return open_checkpoint(path, check_values=True)
    except (FileNotFoundError, CorruptCheckpointError) as err:
        raise RunInputError(f"--resume-from: {err}") from None


def _newest_intact(record: RunRecord, folder: Path, *, after_step: int = -1) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint of the run's lineage (above `after_step`) that opens and holds finite weights; the
    newer ones it passes over are named in the log."""
    skipped = []
    for entry in record.newest_first():
        if entry.step <= after_step:
            break
        path = folder / entry.name
        try:
            ckpt = open_checkpoint(path, check_values=True)
        except (FileNotFoundError, CorruptCheckpointError) as err:
            logger.warning("skipping %s: %s", entry.name, err)
            skipped.append(entry.name)
            continue
        if skipped:
            logger.warning(
                "resuming from %s, the newest intact checkpoint (skipped: %s)", entry.name, ", ".join(skipped)
            )
        return path, ckpt
    return None


def _resolve_resume_from(resume_from: str | None, output: Path, record: RunRecord | None) -> Resume | None:
    """The checkpoint to go on from, opened and checked against the folder's run record. `last` and `auto` take
    the newest intact checkpoint of the recorded run; a path is either that same checkpoint, or one of another
    folder's (a branch). An older checkpoint of this folder's run would branch inside it and is refused."""
    if resume_from is None:
        return None
    folder = output / "checkpoints"
    if record is None and list_checkpoints(folder):
        newest = list_checkpoints(folder)[-1]
        raise RunInputError(
            f"{output} holds checkpoints but no {RUN_FILE} (made before runs were recorded), so which run they belong "
            f"to cannot be told; continue in a new folder: --resume-from {newest} --output {output}-continued"
        )
    if resume_from in ("last", "auto"):
        found = _newest_intact(record, folder) if record is not None else None
        if found is not None:
            return Resume(*found, continues=True)
        if resume_from == "auto":  # e.g. a requeued SLURM job that had not saved anything yet
            logger.warning("--resume-from auto: no intact checkpoint in %s yet; starting from the beginning", folder)
            return None
        raise RunInputError(f"--resume-from last: no intact checkpoint of a run in {folder} yet")
    path = Path(resume_from)
    ckpt = _open_intact(path)
    if not _own_checkpoint(path, output):
        return Resume(path, ckpt, continues=False)
    entry = next((c for c in record.checkpoints if c.name == path.name), None) if record else None
    if entry is None:
        raise RunInputError(f"--resume-from {path} is not a checkpoint of the run recorded in {output / RUN_FILE}")
    newer = _newest_intact(record, folder, after_step=entry.step)
    if newer is not None:
        raise RunInputError(
            f"--resume-from {path}: this run went on to {newer[0].name}; continue it with --resume-from last, or "
            f"branch from {path.name} into a new folder: --resume-from {path} --output {output}-from-{entry.step}"
        )
    return Resume(path, ckpt, continues=True)


def _own_checkpoint(path: Path, output: Path) -> bool:
    """Whether `path` lies in `output`'s checkpoint folder (resuming it continues the run; another is a branch)."""
    return path.resolve().parent == (output / "checkpoints").resolve()


def _refuse_occupied(output: Path, record: RunRecord | None) -> None:
    """A new run (fresh, or a branch) never writes over a folder that holds an earlier run's results."""
    held = list_checkpoints(output / "checkpoints") + [
        p for p in (output / CONTROL_FILE, output / DIFFUSERS_FOLDER) if p.exists()
    ]
    if held:
        which = f"run {record.run_id[:12]}" if record else "a run"
        raise RunInputError(
            f"{output} already holds {which} ({held[-1].name}, ...): continue it with --resume-from last, or start "
            "this run in another --output (nothing in that folder is changed)"
        )


def refuse_occupied_early(settings: TrainSettings, *, resume_from: str | None) -> None:
    """Before anything is written for a run (a dataset imported into OUTPUT/data, shards fetched there): a new run
    (fresh, or a branch) into a folder that holds another run's results is refused, and the folder stays as it was.
    `plan_run` checks the same again with the checkpoint opened."""
    output = Path(settings.output)
    try:
        record = RunRecord.read(output)
    except RunRecordError as err:
        raise RunInputError(str(err)) from None
    continues = resume_from in ("last", "auto") or (
        resume_from is not None and _own_checkpoint(Path(resume_from), output)
    )
    if not continues:
        _refuse_occupied(output, record)


def make_missing_inputs(model_config: dict[str, Any], settings: TrainSettings, *, resume_from: str | None) -> None:
    """Write the inputs the config says to generate when missing: the toy data set (`toy_data`), and the initial
    ControlLDM weights `init`, made from the SD weights `base` as tool_add_control.py does (fresh starts only)."""
    data = Path(settings.data)
    if not (data / PROMPT_FILE).is_file() and settings.toy_data and not data.exists():
        logger.info("generating toy data in %s (%s)", data, settings.toy_data)
        write_toy_dataset(data, **settings.toy_data)
    init = Path(settings.init) if settings.init else None
    resuming = resume_from is not None and (
        resume_from not in ("last", "auto") or bool(list_checkpoints(Path(settings.output) / "checkpoints"))
    )
    if init is not None and not resuming and not init.exists() and settings.base:
        make_control_init(
            model_config, Path(settings.base), init, seed=settings.seed, allow_nonfinite=settings.allow_nonfinite
        )


def plan_run(
    model_config: dict[str, Any], settings: TrainSettings, *, config_path: str, resume_from: str | None
) -> RunPlan:
    """Check data, checkpoints and config against each other before building anything; writes nothing."""
    settings.validate()
    output = Path(settings.output)
    try:
        dataset = open_pairs(settings)
    except (FileNotFoundError, ValueError) as err:
        raise RunInputError(f"data: {err}") from None
    dataset, skipped = _check_data(dataset, model_config, skip_bad=settings.skip_bad)
    if settings.eval_every:
        _check_held_out(dataset.root, settings.eval_n, model_config)
    if settings.control_from and not Path(settings.control_from).exists():
        raise RunInputError(f"--control-from {settings.control_from} does not exist")
    thresholds = _edge_thresholds(dataset.root, settings.control_from)
    model_state, trainable = _meta_state(model_config)
    try:
        record = RunRecord.read(output)
    except RunRecordError as err:
        raise RunInputError(str(err)) from None
    resumed = _resolve_resume_from(resume_from, output, record)
    if resumed is None or not resumed.continues:
        _refuse_occupied(output, record)
    init = Path(settings.init) if settings.init else None
    start_step, fresh_init = 0, False
    if resumed is not None:
        ckpt = resumed.checkpoint  # mapped: only what is used is read
        init = checkpoint_init(ckpt.get("cutenet_config", {}), resumed.path)
        fresh_init = bool(ckpt.get("cutenet_config", {}).get("fresh_init"))  # its saved fresh SD: no gradient expected
        _check_same_eval(ckpt.get("cutenet_config", {}), settings, thresholds, resumed.path)
        if resumed.continues:
            _check_same_objective(ckpt.get("cutenet_config", {}), model_config, resumed.path)
        start_step = int(ckpt["global_step"])
        try:
            check_state_dict({k: model_state[k] for k in trainable}, ckpt["state_dict"])
        except CheckpointMismatchError as err:
            raise RunInputError(f"{resumed.path} was written for another config than {config_path}: {err}") from None
    if init is None:  # a fresh start: its fresh weights are saved here, and its resumes reload them
        init, fresh_init = output / INIT_FILE, True
    elif not (fresh_init and resumed is None):
        if not init.is_file():
            raise RunInputError(
                f"initial checkpoint {init} does not exist; make it with tool_add_control.py "
                "(see docs/training.md) or set training.init: null for a fresh start"
            )
        try:
            check_state_dict(model_state, load_state_dict(init, shapes_only=True))
        except CheckpointMismatchError as err:
            raise RunInputError(f"{init} does not fit {config_path}: {err}") from None
    return RunPlan(
        settings,
        model_config,
        output,
        dataset,
        init,
        resumed.path if resumed else None,
        start_step,
        skipped,
        record if resumed is not None and resumed.continues else None,
        _branch_point(resumed) if resumed is not None and not resumed.continues else None,
        fresh_init=fresh_init,
        thresholds=thresholds,
    )


def _check_same_eval(config: dict[str, Any], settings: TrainSettings, thresholds: CannyThresholds, path: Path) -> None:
    """A resume scores its control curve as the run did before: the curve and best/ compare F1 across evals, which
    other held-out pairs or thresholds would make meaningless. A change is refused with what to do."""
    before = config.get("training", {})
    now = {"eval_n": settings.eval_n, "canny_thresholds": asdict(thresholds)}
    was = {"eval_n": before.get("eval_n", settings.eval_n), "canny_thresholds": config.get("canny_thresholds")}
    changed = [k for k in now if was[k] is not None and was[k] != now[k] and settings.eval_every]
    if changed:
        raise RunInputError(
            f"{path} was scored with {', '.join(f'{k} {was[k]}' for k in changed)}, this resume with "
            f"{', '.join(f'{k} {now[k]}' for k in changed)}: its control curve and best/ would compare unlike "
            "scores; resume with the same settings, or branch into a new --output"
        )


OBJECTIVE_KEYS = dataclasses.asdict(Objective())  # the objective fields and their defaults


def _check_same_objective(config: dict[str, Any], model_config: dict[str, Any], path: Path) -> None:
    """A run trains under one objective: a resume into the same folder with another is refused (its steps and
    control curve would mix two objectives under one run); a branch into a new --output may change it. A
    checkpoint written before the objective was recorded trained with the defaults."""
    before = config.get("model", {}).get("params", {})
    now = model_config.get("params", {})
    changed = [k for k, default in OBJECTIVE_KEYS.items() if before.get(k, default) != now.get(k, default)]
    if changed:
        raise RunInputError(
            f"{path} trained with {', '.join(f'{k} {before.get(k, OBJECTIVE_KEYS[k])}' for k in changed)}, this "
            f"resume asks for {', '.join(f'{k} {now.get(k, OBJECTIVE_KEYS[k])}' for k in changed)}: resume with "
            "the same objective, or branch into a new --output (--resume-from PATH --output NEW)"
        )


def checkpoint_init(config: dict[str, Any], path: Path) -> Path:
    """The initial weights a checkpoint's run started from: its config's `init`, else the run folder's saved fresh
    init. A checkpoint of an older CuteNet, which named them `base`, is refused with what to do."""
    if "init" not in config and config.get("base"):
        raise RunInputError(
            f"{path} was written by an older CuteNet (its config names its initial weights 'base'); resume it with "
            "that release, or start a new run from its ControlNet: --control-from (after tool_export_control.py)"
        )
    recorded = config.get("init")
    return Path(recorded) if recorded else path.parent.parent / INIT_FILE


def _branch_point(resumed: Resume) -> dict[str, Any]:
    """Where a branch starts: the other run's checkpoint, its step, and that run's id when it was recorded."""
    run = resumed.checkpoint.get("cutenet_run") or {}
    return {
        "run_id": run.get("run_id"),
        "checkpoint": str(resumed.path),
        "step": int(resumed.checkpoint["global_step"]),
    }


def check_record(plan: RunPlan) -> None:
    """Before the model is built (rank 0): a continued run's record against its data and initial weights (the
    frozen parts reload from that file, so a changed file would silently train another model)."""
    record = plan.record
    if record is None:
        return
    if record.data != plan.dataset.fingerprint():
        raise RunInputError(
            f"the pairs in {plan.dataset.root} are not those run {record.run_id[:12]} trained on (their list, sizes or "
            f"modification times changed), so the resume would train on other data: restore them (a copy must keep "
            f"modification times: cp -p, rsync -a), or branch into a new folder with --resume-from {plan.resume_from} "
            f"--output NEW"
        )
    if record.init is not None and (not plan.init.is_file() or not record.init.matches(plan.init)):
        raise RunInputError(
            f"the initial weights {plan.init} are not the file run {record.run_id[:12]} started from "
            f"(sha256 {record.init.sha256[:12]}): its frozen parts would reload other weights. Restore that file"
        )


def write_record(plan: RunPlan, resolved: dict[str, Any]) -> RunRecord:
    """After the model is built, so a fresh start's initial weights exist (rank 0): the run record, written once
    for this start: a new one for a fresh start or a branch, or the continued run's, with the checkpoint it goes
    on from."""
    record = plan.record
    if record is None:
        record = RunRecord.new(
            data=plan.dataset.fingerprint(), data_root=str(plan.dataset.root), settings=resolved, parent=plan.branch_of
        )
        record.init = FileRecord.of(plan.init)
        record.write(plan.output)
        logger.info("run %s in %s", record.run_id[:12], plan.output)
        return record
    changed = record.changed_settings(resolved)
    if changed:
        logger.warning("run %s goes on with changed settings: %s", record.run_id[:12], "; ".join(changed))
    record.continue_from(plan.resume_from.name)
    record.write(plan.output)
    return record


def _check_data(
    dataset: PairDataset | ShardPairs, model_config: dict[str, Any], *, skip_bad: bool
) -> tuple[PairDataset | ShardPairs, list[BadPair]]:
    """Every pair checked before the model is built: refused with the first bad pairs, or left out with skip_bad."""
    multiple = size_multiple(model_config)
    if isinstance(dataset, ShardPairs):
        bad, where = check_shard_pairs(dataset, multiple=multiple), f"the shards in {dataset.root}"
    else:
        bad, where = check_pairs(dataset.root, dataset.rows, multiple=multiple), str(dataset.root / PROMPT_FILE)
    if not bad:
        return dataset, []
    where = f"{len(bad)} of {len(dataset)} pairs in {where}"
    first = "; ".join(b.line() for b in bad[:3])
    if not skip_bad:
        raise RunInputError(
            f"{where} cannot be trained on, first: {first}. Fix or remove them, or pass "
            "--skip-bad to train on the others"
        )
    if len(bad) == len(dataset):
        raise RunInputError(f"{where} cannot be trained on (all of them), first: {first}")
    logger.warning("leaving out %s that cannot be trained on, first: %s", where, first)
    dropped = {b.index for b in bad}
    return dataset.subset([i for i in range(len(dataset)) if i not in dropped]), bad


def _edge_thresholds(root: Path, control_from: str | None) -> CannyThresholds:
    """The canny thresholds that made the data's edge maps (its dataset.json), said once; and once more where the
    ControlNet to fine-tune learned others (its edges will have to move)."""
    try:
        thresholds = edge_thresholds(root)
        learned = recorded_thresholds(control_from) if control_from else None
    except ValueError as err:
        raise RunInputError(str(err)) from None
    logger.info("the data's edge maps are canny %s: the monitor scores, and the exports record, these", thresholds)
    if learned is not None and learned != thresholds:
        logger.warning(
            "--control-from %s learned canny %s edges, but %s holds canny %s ones: it trains on and is scored at %s",
            control_from,
            learned,
            root,
            thresholds,
            thresholds,
        )
    return thresholds


def _check_held_out(root: Path, n: int, model_config: dict[str, Any]) -> None:
    """The monitor's held-out pairs, checked before step 1 as the training pairs are: a damaged one would otherwise
    stop the run at its first eval. They are never skipped, so that the scores stay those of the offline tool."""
    try:
        rows = held_out_rows(root, VAL_PROMPT_FILE, n)
    except (FileNotFoundError, ValueError) as err:
        raise RunInputError(
            f"the controllability monitor has no held-out pairs: {err}. Prepare the data with a validation share "
            "(prepare_dogs.py --val-fraction), or train without the monitor: --eval-every 0"
        ) from None
    bad = check_pairs(root, rows, multiple=size_multiple(model_config))
    if bad:
        raise RunInputError(
            f"{len(bad)} of the {len(rows)} held-out pairs the monitor scores in {root / VAL_PROMPT_FILE} cannot be "
            f"read, first: {'; '.join(b.line() for b in bad[:3])}. Fix or remove them, or train without the monitor: "
            "--eval-every 0"
        )


def write_skipped(plan: RunPlan) -> None:
    """OUTPUT/skipped_pairs.tsv: the pairs left out by --skip-bad, with the reason."""
    if plan.skipped:
        rows = [("source", "target", "reason")] + [(b.source, b.target, b.reason) for b in plan.skipped]
        write_text_atomically(plan.output / SKIPPED_FILE, tsv_text(rows))


def make_control_init(
    model_config: dict[str, Any], base: Path, dst: Path, *, seed: int, allow_nonfinite: bool = False
) -> None:
    """What tool_add_control.py does: SD weights (a checkpoint file or a diffusers pipeline folder) + a ControlNet
    copied from the UNet encoder, written to dst."""
    if not base.exists():
        raise RunInputError(
            f"training.base {base} does not exist; it is needed to make the initial checkpoint {dst} (see docs/training.md)"
        )
    try:
        init = build_control_init(
            model_config,
            lambda model: load_base(model, base, allow_nonfinite=allow_nonfinite),
            seed=seed,
        )
    except CheckpointMismatchError as err:
        raise RunInputError(f"training.base {base} does not fit the config: {err}") from None
    dst.parent.mkdir(parents=True, exist_ok=True)
    save_state(init.state, dst)
    logger.info(
        "made the initial ControlNet checkpoint %s from %s (%d tensors copied from the UNet encoder)",
        dst,
        base,
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


def resolved_config(plan: RunPlan, config: dict[str, Any]) -> dict[str, Any]:
    resolved = copy.deepcopy(config)
    resolved["training"] = asdict(plan.settings)
    resolved["init"] = str(plan.init)
    resolved["canny_thresholds"] = asdict(plan.thresholds)
    resolved["fresh_init"] = plan.fresh_init
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


def make_trainer(
    plan: RunPlan, resolved: dict[str, Any], *, record: RunRecord | None, log_samples: bool = False
) -> pl.Trainer:
    """The Lightning trainer of a run; `record` is rank 0's run record (None on the other ranks)."""
    s = plan.settings
    periodic = PeriodicCheckpoint(
        plan.output / "checkpoints",
        every=s.ckpt_every,
        keep=s.keep_last,
        config=resolved,
        record=record,
        thresholds=plan.thresholds,
    )
    monitor = None
    if s.eval_every:
        monitor = ControlMonitor(
            plan.output,
            plan.dataset.root,
            every=s.eval_every,
            settings=EvalSettings(n=s.eval_n, thresholds=plan.thresholds),
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
