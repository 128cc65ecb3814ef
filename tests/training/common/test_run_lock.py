"""One run per output folder: a live holder is named, a dead one's lock is taken over, and the lock goes at exit."""

import json
import os
import socket
import subprocess
import sys

import pytest
from repo_paths import ROOT

from training.common.run_lock import LOCK_FILE, RunFolderLocked, run_lock


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


def test_a_takeover_never_deletes_a_lock_other_than_the_stale_one_it_judged(tmp_path):
    from training.common.run_lock import _take_over

    _lock_of(tmp_path, os.getpid())  # another run's fresh lock, there since the stale one was read
    fresh = (tmp_path / LOCK_FILE).read_bytes()
    _take_over(tmp_path, tmp_path / LOCK_FILE, judged=b'{"pid": 1}')
    assert (tmp_path / LOCK_FILE).read_bytes() == fresh


def test_of_runs_starting_together_on_a_stale_lock_exactly_one_holds_the_folder(tmp_path):
    """Six starts at one instant, on a lock left by a dead process: one holds the folder, the others are refused
    (a start never reads another's lock half-written, and a takeover never deletes a fresh lock)."""
    import time

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()

    def script(start_at: float) -> str:
        return (
            "import sys, time\n"
            "from training.common.run_lock import RunFolderLocked, run_lock\n"
            f"time.sleep(max(0, {start_at} - time.time()))\n"
            "try:\n"
            "    with run_lock(sys.argv[1]):\n"
            "        print('held', flush=True); time.sleep(4)\n"
            "except RunFolderLocked:\n"
            "    print('refused')\n"
        )

    for round_ in range(2):
        folder = tmp_path / f"run{round_}"
        _lock_of(folder, gone.pid)
        start = script(time.time() + 3)
        starts = [
            subprocess.Popen([sys.executable, "-c", start, str(folder)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
            for _ in range(6)
        ]
        said = sorted(p.communicate(timeout=60)[0].strip() for p in starts)
        assert said == ["held"] + ["refused"] * 5, said
