"""One run per output folder: a lock file naming the process, host and SLURM job that holds the folder.

The lock is a file that names its holder rather than a kernel lock (filelock): a refusal can then say who holds
the folder, and a requeued SLURM job on another node can take its own lock over. A kernel lock guards only the
takeover of a stale lock."""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import filelock
import psutil

logger = logging.getLogger(__name__)

LOCK_FILE = ".lock"
TAKEOVER_FILE = ".lock.takeover"  # the kernel lock held while a stale .lock is checked and deleted


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


def _publish(folder: Path, lock: Path) -> bool:
    """Write this run's holder to a private file, then link it to `lock`, so a lock appears whole or not at all
    (a run starting beside it never reads it empty); False when a lock is already there."""
    tmp = folder / f".lock.{os.getpid()}.{time.monotonic_ns()}.tmp"
    try:
        with open(tmp, "w") as f:
            json.dump(_holder(), f)
            f.flush()
            os.fsync(f.fileno())
        os.link(tmp, lock)
        return True
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)


def _take_over(folder: Path, lock: Path, judged: bytes) -> None:
    """Delete `lock` if it still holds what was judged stale. A kernel lock (filelock) makes the check and the
    delete one step, so of two runs taking over one stale lock, the second finds the first's fresh lock and
    leaves it."""
    with filelock.FileLock(str(folder / TAKEOVER_FILE)):
        try:
            if lock.read_bytes() == judged:
                lock.unlink()
        except FileNotFoundError:
            pass


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
            if _publish(folder, lock):
                break
            judged = lock.read_bytes()
        except FileNotFoundError:  # the lock went between the two steps: try again
            continue
        except OSError as err:  # read-only, no permission, a full disk, or a file where the folder should be
            raise RunFolderLocked(
                f"cannot write in {folder} ({err.strerror}); free some space or choose a writable folder"
            ) from None
        try:
            held = json.loads(judged or b"{}")
        except ValueError:
            held = {}
        held = held if isinstance(held, dict) else {}
        reason = _stale(held)
        if reason is None:
            raise RunFolderLocked(
                f"{folder} is in use by another run (pid {held.get('pid', '?')} on {held.get('host', '?')}, "
                f"since {held.get('since', '?')}); wait for it to end or choose another --output. If that run "
                f"is gone (its machine went down), delete {lock}"
            ) from None
        logger.warning("taking over the lock of %s: %s", folder, reason)
        _take_over(folder, lock, judged)
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)
