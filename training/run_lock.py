"""One run per output folder: a lock file naming the process, host and SLURM job that holds the folder."""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil

logger = logging.getLogger(__name__)

LOCK_FILE = ".lock"


class RunFolderLocked(RuntimeError):
    """Another live run holds the output folder, or the folder cannot be written; the message says which and what
    to do."""


def _holder() -> dict[str, object]:
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "slurm_job": os.environ.get("SLURM_JOB_ID"),
        "since": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def _stale(held: dict[str, object]) -> str | None:
    """Why a lock can be taken over (its run is gone), or None while it may be alive."""
    me = _holder()
    if not held:
        return "its lock file is empty or damaged (a start that could not write it, e.g. on a full disk)"
    if held.get("slurm_job") and held.get("slurm_job") == me["slurm_job"]:
        return f"SLURM job {held['slurm_job']} was requeued"
    if held.get("host") == me["host"] and not psutil.pid_exists(int(held.get("pid", -1))):
        return f"process {held.get('pid')} on this host is no longer running"
    return None


@contextmanager
def run_lock(folder: Path) -> Iterator[None]:
    """Hold `folder` for this run; RunFolderLocked if another live run holds it. A lock left by a dead process on
    this host, or by an earlier attempt of this SLURM job, is taken over with a message that says so."""
    folder, lock = Path(folder), Path(folder) / LOCK_FILE
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:  # read-only, no permission, or a file where the folder should be
        raise RunFolderLocked(
            f"cannot make the folder {folder} ({err.strerror}); choose a writable place for it"
        ) from None
    while True:
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                held = json.loads(lock.read_text() or "{}")
            except (OSError, ValueError):
                held = {}
            reason = _stale(held)
            if reason is None:
                raise RunFolderLocked(
                    f"{folder} is in use by another run (pid {held.get('pid', '?')} on {held.get('host', '?')}, "
                    f"since {held.get('since', '?')}); wait for it to end or choose another --output. If that run "
                    f"is gone (its machine went down), delete {lock}"
                ) from None
            logger.warning("taking over the lock of %s: %s", folder, reason)
            lock.unlink(missing_ok=True)
            continue
        except OSError as err:  # read-only, no permission, or a file where the folder should be
            raise RunFolderLocked(f"cannot write in {folder} ({err.strerror}); choose a writable folder") from None
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(_holder(), f)
                f.flush()
                os.fsync(f.fileno())
        except OSError as err:  # e.g. a full disk: leave no empty lock behind to block every later run
            lock.unlink(missing_ok=True)
            raise RunFolderLocked(
                f"cannot write in {folder} ({err.strerror}); free some space or choose another folder"
            ) from None
        break
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)
