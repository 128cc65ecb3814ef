"""Resolve once: everything a run needs (settings, the resolved config, initial weights, data and its checks,
thresholds, output, resume point) in one frozen `RunPlan`, made before the model is built; and the run record,
checked before the build and written once after it."""

from __future__ import annotations

import copy
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from annotator.canny import DEFAULT_THRESHOLDS, CannyThresholds
from cldm.loading import load_base
from cldm.weights import CheckpointMismatchError, build_control_init, check_state_dict, load_state_dict, save_state
from ldm.util import instantiate_from_config
from pairs.prompt_file import PROMPT_FILE
from training.checkpoint import list_checkpoints
from training.data.check_pairs import BadPair
from training.data.dataset import PairDataset
from training.data.shard_dataset import ShardPairs
from training.data.toy_data import write_toy_dataset
from training.data_source import open_pairs
from training.input_checks import (
    RunInputError,
    check_data,
    check_held_out,
    check_reward_start,
    check_same_eval,
    check_same_objective,
    run_thresholds,
)
from training.resume import INIT_FILE, branch_point, checkpoint_init, refuse_occupied, resolve_resume_from
from training.run_record import FileRecord, RunRecord, RunRecordError
from training.settings import TrainSettings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunPlan:
    """Everything checked and resolved before the model is built; nothing changes it afterwards."""

    settings: TrainSettings
    config: dict[str, Any]  # the config with the flags applied (its `model` node with the model options)
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

    @property
    def model_config(self) -> dict[str, Any]:
        return self.config["model"]

    @property
    def resolved(self) -> dict[str, Any]:
        """The config as this run runs it: what run.json, checkpoints and OUTPUT/config.yaml record."""
        resolved = copy.deepcopy(self.config)
        resolved["training"] = asdict(self.settings)
        resolved["init"] = str(self.init)
        resolved["canny_thresholds"] = asdict(self.thresholds)
        resolved["fresh_init"] = self.fresh_init
        return resolved


def _meta_state(model_config: dict[str, Any]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Key/shape plan of the model, and its trainable keys, without allocating weights."""
    with torch.device("meta"):
        model = instantiate_from_config(model_config)
    return model.state_dict(), model.trainable_state_keys()


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


def plan_run(config: dict[str, Any], settings: TrainSettings, *, config_path: str, resume_from: str | None) -> RunPlan:
    """Check data, checkpoints and config against each other before building anything; writes nothing."""
    settings.validate()
    model_config = config["model"]
    output = Path(settings.output)
    try:
        dataset = open_pairs(settings)
    except (FileNotFoundError, ValueError) as err:
        raise RunInputError(f"data: {err}") from None
    dataset, skipped = check_data(dataset, model_config, skip_bad=settings.skip_bad)
    if settings.eval_every:
        check_held_out(dataset.root, settings.eval_n, model_config)
    if settings.control_from and not Path(settings.control_from).exists():
        raise RunInputError(f"--control-from {settings.control_from} does not exist")
    thresholds = run_thresholds(dataset.root, settings.control_from)
    model_state, trainable = _meta_state(model_config)
    try:
        record = RunRecord.read(output)
    except RunRecordError as err:
        raise RunInputError(str(err)) from None
    resumed = resolve_resume_from(resume_from, output, record)
    check_reward_start(model_config, settings, resuming=resumed is not None)
    if resumed is None or not resumed.continues:
        refuse_occupied(output, record)
    init = Path(settings.init) if settings.init else None
    start_step, fresh_init = 0, False
    if resumed is not None:
        ckpt = resumed.checkpoint  # mapped: only what is used is read
        init = checkpoint_init(ckpt.get("cutenet_config", {}), resumed.path)
        fresh_init = bool(ckpt.get("cutenet_config", {}).get("fresh_init"))  # its saved fresh SD: no gradient expected
        check_same_eval(ckpt.get("cutenet_config", {}), settings, thresholds, resumed.path)
        if resumed.continues:
            check_same_objective(ckpt.get("cutenet_config", {}), model_config, resumed.path)
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
    if model_config["params"].get("reward_weight", 0.0) > 0:  # the reward's logged F1 uses the data's thresholds
        config = copy.deepcopy(config)
        config["model"]["params"]["reward_thresholds"] = [thresholds.low, thresholds.high]
    return RunPlan(
        settings,
        config,
        output,
        dataset,
        init,
        resumed.path if resumed else None,
        start_step,
        skipped,
        record if resumed is not None and resumed.continues else None,
        branch_point(resumed) if resumed is not None and not resumed.continues else None,
        fresh_init=fresh_init,
        thresholds=thresholds,
    )


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


def write_record(plan: RunPlan) -> RunRecord:
    """After the model is built, so a fresh start's initial weights exist (rank 0): the run record, written once
    for this start: a new one for a fresh start or a branch, or the continued run's, with the checkpoint it goes
    on from."""
    resolved = plan.resolved
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
