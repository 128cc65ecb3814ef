"""One run per output folder: a live holder is named, a dead one's lock is taken over, and the lock goes at exit."""

import json
import os
import socket
import subprocess
import sys

import pytest

from training.run_lock import LOCK_FILE, RunFolderLocked, run_lock


def _lock_of(folder, pid, host=None, job=None):
    folder.mkdir(parents=True, exist_ok=True)
    held = {"pid": pid, "host": host or socket.gethostname(), "slurm_job": job, "since": "earlier"}
    (folder / LOCK_FILE).write_text(json.dumps(held))


def test_a_live_run_keeps_its_folder_and_is_named(tmp_path):
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        _lock_of(tmp_path / "run", other.pid)
        with (
            pytest.raises(RunFolderLocked, match=f"pid {other.pid} on {socket.gethostname()}"),
            run_lock(tmp_path / "run"),
        ):
            pass
    finally:
        other.kill()
        other.wait()
    _lock_of(tmp_path / "remote", 1, host="another-node")  # cannot be checked from here: refused too
    with pytest.raises(RunFolderLocked, match="another-node"), run_lock(tmp_path / "remote"):
        pass


def test_a_dead_runs_lock_is_taken_over_with_a_message_and_released_at_exit(tmp_path, caplog):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    _lock_of(tmp_path, gone.pid)
    with caplog.at_level("WARNING"), run_lock(tmp_path):
        held = json.loads((tmp_path / LOCK_FILE).read_text())
        assert (held["pid"], held["host"]) == (os.getpid(), socket.gethostname())  # this process holds it now
        with pytest.raises(RunFolderLocked, match=f"pid {os.getpid()}"), run_lock(tmp_path):
            pass
    assert f"process {gone.pid} on this host is no longer running" in caplog.text
    assert not (tmp_path / LOCK_FILE).exists()


def test_a_requeued_slurm_job_takes_over_its_own_lock(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    _lock_of(tmp_path, 1, host="node-that-died", job="77")
    with run_lock(tmp_path):
        held = json.loads((tmp_path / LOCK_FILE).read_text())
        assert (held["pid"], held["host"], held["slurm_job"]) == (os.getpid(), socket.gethostname(), "77")
    assert not (tmp_path / LOCK_FILE).exists()


def test_an_empty_lock_left_by_a_failed_start_is_taken_over(tmp_path, caplog):
    (tmp_path / LOCK_FILE).write_text("")  # what a start on a full disk left before the lock was written whole
    with caplog.at_level("WARNING"), run_lock(tmp_path):
        assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
    assert "empty or damaged" in caplog.text
