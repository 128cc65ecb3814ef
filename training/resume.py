"""Where a run goes on from: its own newest intact checkpoint, a named one, or another run's (a branch), checked
against the folder's run record; and the refusal to start a new run over an earlier one's results."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cldm.weights import CorruptCheckpointError
from training.checkpoint import CONTROL_FILE, DIFFUSERS_FOLDER, list_checkpoints, open_checkpoint
from training.input_checks import RunInputError
from training.run_record import RUN_FILE, RunRecord, RunRecordError
from training.settings import TrainSettings

logger = logging.getLogger(__name__)

INIT_FILE = "init.safetensors"  # a fresh start's initial weights, in its run folder


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


def resolve_resume_from(resume_from: str | None, output: Path, record: RunRecord | None) -> Resume | None:
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


def refuse_occupied(output: Path, record: RunRecord | None) -> None:
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
        refuse_occupied(output, record)


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


def branch_point(resumed: Resume) -> dict[str, Any]:
    """Where a branch starts: the other run's checkpoint, its step, and that run's id when it was recorded."""
    run = resumed.checkpoint.get("cutenet_run") or {}
    return {
        "run_id": run.get("run_id"),
        "checkpoint": str(resumed.path),
        "step": int(resumed.checkpoint["global_step"]),
    }
