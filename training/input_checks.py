"""The checks of a run's inputs before anything is built: every pair and held-out pair, the canny thresholds of the
data, and that a resume scores and trains as its run did. Each failure is a `RunInputError` that says what and where."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

from annotator.canny import CannyThresholds
from cldm.edge_record import recorded_thresholds
from cldm.edge_reward import REWARD_MAX_T
from evaluation.evaluate_control import EvalSettings, held_out_rows
from ldm.models.diffusion.objectives import Objective
from pairs.manifest import edge_thresholds
from pairs.prompt_file import PROMPT_FILE, VAL_PROMPT_FILE
from training.data.check_pairs import BadPair, check_pairs, check_shard_pairs, size_multiple
from training.data.dataset import PairDataset
from training.data.shard_dataset import ShardPairs
from training.settings import TrainSettings

logger = logging.getLogger(__name__)


class RunInputError(ValueError):
    """Bad input found before any model is built; the message says what and where."""


def check_data(
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


def run_thresholds(root: Path, control_from: str | None) -> CannyThresholds:
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


def check_held_out(root: Path, n: int, model_config: dict[str, Any]) -> None:
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


def check_same_eval(config: dict[str, Any], settings: TrainSettings, thresholds: CannyThresholds, path: Path) -> None:
    """A resume scores its control curve as the run did before: the curve and best/ compare F1 across evals, which
    other held-out pairs or thresholds would make meaningless. A change is refused with what to do."""
    before = config.get("training", {})
    now = {"eval_n": settings.eval_n, "eval_steps": settings.eval_steps, "canny_thresholds": asdict(thresholds)}
    was = {
        "eval_n": before.get("eval_n", settings.eval_n),
        "eval_steps": before.get("eval_steps", EvalSettings.steps),  # before it was a setting: the tool's default
        "canny_thresholds": config.get("canny_thresholds"),
    }
    changed = [k for k in now if was[k] is not None and was[k] != now[k] and settings.eval_every]
    if changed:
        raise RunInputError(
            f"{path} was scored with {', '.join(f'{k} {was[k]}' for k in changed)}, this resume with "
            f"{', '.join(f'{k} {now[k]}' for k in changed)}: its control curve and best/ would compare unlike "
            "scores; resume with the same settings, or branch into a new --output"
        )


# the objective's fields, the reward stage's, and their defaults (what a run trained with before they existed)
OBJECTIVE_KEYS = {**dataclasses.asdict(Objective()), "reward_weight": 0.0, "reward_max_t": REWARD_MAX_T}


def check_same_objective(config: dict[str, Any], model_config: dict[str, Any], path: Path) -> None:
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


def check_reward_start(model_config: dict[str, Any], settings: TrainSettings, *, resuming: bool) -> None:
    """The reward stage fine-tunes a ControlNet that has taken control (ControlNet++ starts from a trained one): a
    fresh start with it and without --control-from is refused."""
    if model_config["params"].get("reward_weight", 0.0) > 0 and not settings.control_from and not resuming:
        raise RunInputError(
            "--reward-weight fine-tunes a trained ControlNet: start from one with --control-from "
            "(OUTPUT/control.safetensors of a run), or go on from a checkpoint with --resume-from"
        )
