"""tutorial_train.py when things go wrong: bad settings and prompt files, full and read-only disks, a signal during
start-up, temporary files of a killed run, a diverged checkpoint. Each is one line and exit code 2 (or 128+N for a
signal), and nothing already written is lost."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from repo_paths import ROOT
from repo_paths import TINY_CONFIG as TINY

from pairs.prompt_file import read_prompt_file
from training.common.run_lock import LOCK_FILE
from training.data.toy_data import write_toy_dataset
from tutorial_train import main


def _args(data: Path, out: Path, base: Path, *extra: str) -> list[str]:
    common = ["--config", str(TINY), "--data", str(data), "--output", str(out), "--batch-size", "2"]
    return [*common, "--logger-freq", "1000", "--workers", "0", "--init", str(base), "--max-steps", "2", *extra]


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and err.count("\n") == 0, err
    return err


@contextmanager
def _tmpfs(path: Path, *, size: str = "1m", read_only: bool = False):
    """A tmpfs of `size` at `path` (read-only if asked); skips the test where this process cannot mount."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    path.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if read_only else "")
    if subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True).returncode:
        pytest.skip("this sandbox does not allow mounting a tmpfs")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


def test_bad_settings_are_one_line(toy_data, tmp_path, base, capsys):
    for extra, message in [
        (["--lr", "nan"], "learning rate"),
        (["--lr", "0"], "learning rate"),
        (["--max-epochs", "0"], "max_epochs must be >= 1"),
    ]:
        assert main(_args(toy_data, tmp_path / "out", base, *extra)) == 2
        assert message in _one_error_line(capsys)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"source": "source/0000.png", "target": "target/0000.jpg", "prompt": 3}, "'prompt' must be text, got 3"),
        ({"source": "source/0000.png", "target": "target/0000.jpg", "prompt": None}, "'prompt' must be text"),
        ({"source": 7, "target": "target/0000.jpg", "prompt": "x"}, "'source' must be a relative file path"),
    ],
    ids=["number-prompt", "null-prompt", "number-path"],
)
def test_a_wrongly_typed_prompt_row_stops_the_run_before_step_one(toy_data, tmp_path, base, capsys, row, message):
    data = tmp_path / "data"
    shutil.copytree(toy_data, data)
    with (data / "prompt.json").open("a") as f:
        f.write(json.dumps(row) + "\n")
    lines = len((data / "prompt.json").read_text().splitlines())
    assert main(_args(data, tmp_path / "out", base)) == 2
    err = _one_error_line(capsys)
    assert f"prompt.json:{lines}:" in err and message in err


def test_a_prompt_file_that_is_not_utf8_is_named(toy_data, tmp_path, base, capsys):
    data = tmp_path / "data"
    shutil.copytree(toy_data, data)
    (data / "prompt.json").write_bytes((data / "prompt.json").read_bytes() + b'{"prompt": "caf\xe9"}\n')
    assert main(_args(data, tmp_path / "out", base)) == 2
    assert f"{data / 'prompt.json'}: not UTF-8" in _one_error_line(capsys)


def test_pairs_of_another_size_are_refused_before_step_one(tmp_path, base, capsys):
    data = write_toy_dataset(tmp_path / "data", n=12, size=64, seed=0)
    rows = read_prompt_file(data / "prompt.json")
    write_toy_dataset(tmp_path / "other", n=12, size=128, seed=0)  # as a re-prepare at another --size leaves
    for key in ("source", "target"):
        shutil.copy(tmp_path / "other" / rows[3][key], data / rows[3][key])
    assert main(_args(data, tmp_path / "out", base)) == 2
    err = _one_error_line(capsys)
    assert rows[3]["target"] in err and "128×128, but" in err and "a batch holds one size" in err


def test_a_full_disk_leaves_no_lock_and_a_later_run_starts(toy_data, tmp_path, base, capsys):
    with _tmpfs(tmp_path / "disk", size="64m") as disk:
        out = disk / "run"
        out.mkdir()
        filler = disk / "filler"
        with open(filler, "wb", buffering=0) as f:
            for block in (1 << 20, 4096, 1):  # to the last byte
                with pytest.raises(OSError, match="No space"):
                    while f.write(b"\0" * block):
                        pass
        assert main(_args(toy_data, out, base)) == 2
        assert "No space left on device" in _one_error_line(capsys)
        assert not (out / LOCK_FILE).exists()
        filler.unlink()
        # Space again: the same command runs, blocked by nothing the failed start left.
        assert main(_args(toy_data, out, base)) == 0
        assert (out / "control.safetensors").is_file() and not (out / LOCK_FILE).exists()


def test_a_read_only_output_is_one_line(toy_data, tmp_path, base, capsys):
    with _tmpfs(tmp_path / "ro", read_only=True) as disk:
        assert main(_args(toy_data, disk / "run", base)) == 2
        assert "Read-only file system" in _one_error_line(capsys)


def test_temporary_files_of_a_killed_writer_are_removed_at_the_next_start(toy_data, tmp_path, base):
    out = tmp_path / "run"
    assert main(_args(toy_data, out, base)) == 0
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    stale = out / "checkpoints" / f".step-0000004.ckpt.{gone.pid}.tmp"  # as a SIGKILL inside a save leaves it
    stale.write_bytes(b"\0" * 10_000)
    live = out / "checkpoints" / f".notes.txt.{os.getpid()}.tmp"  # a writer still alive is left alone
    live.write_bytes(b"")
    assert main(_args(toy_data, out, base, "--max-steps", "4", "--resume-from", "last")) == 0
    assert not stale.exists() and live.exists()


def test_a_checkpoint_holding_nan_is_never_taken_as_last(toy_data, tmp_path, base, caplog):
    out = tmp_path / "run"
    assert main(_args(toy_data, out, base, "--max-steps", "4", "--ckpt-every", "2", "--keep-last", "2")) == 0
    newest = out / "checkpoints/step-0000004.ckpt"
    ckpt = torch.load(newest, weights_only=True)
    next(iter(ckpt["state_dict"].values())).fill_(float("nan"))
    torch.save(ckpt, newest)
    with caplog.at_level("WARNING"):
        assert main(_args(toy_data, out, base, "--max-steps", "5", "--ckpt-every", "2", "--resume-from", "last")) == 0
    assert "skipping step-0000004.ckpt" in caplog.text and "NaN or inf" in caplog.text
    assert "resuming from step-0000002.ckpt" in caplog.text


@pytest.mark.slow
def test_a_signal_while_the_latent_cache_is_built_unwinds_says_so_and_requeues(tmp_path, base):
    data = write_toy_dataset(tmp_path / "data", n=1500, size=64, seed=0)
    out = tmp_path / "run"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text(f'#!/bin/sh\necho "$@" > {tmp_path / "scontrol.log"}\n')
    (bin_dir / "scontrol").chmod(0o755)
    env = {**os.environ, "SLURM_JOB_ID": "42", "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    args = _args(data, out, base, "--cache-latents", "--no-hflip", "--slurm-requeue")
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "tutorial_train.py"), *args], cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True
    )
    deadline = time.time() + 300
    while not list((out / "latent_cache").glob(".*.tmp")):
        assert proc.poll() is None and time.time() < deadline, "the run ended before its latent cache was built"
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "SIGTERM" in err and "latent cache" in err
    assert "Traceback" not in err
    assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", "42"]
    assert not list(out.rglob("*.tmp")) and not (out / LOCK_FILE).exists()
    assert not (out / "latent_cache" / "cache.json").exists()  # no partial cache passes for a complete one


def test_a_disk_that_fills_up_during_training_is_one_line_and_keeps_the_saved_checkpoints(
    toy_data, tmp_path, base, capsys
):
    with _tmpfs(tmp_path / "disk", size="24m") as disk:  # room for the start and one checkpoint, not for more
        out = disk / "run"
        assert main(_args(toy_data, out, base, "--max-steps", "40", "--ckpt-every", "2", "--keep-last", "5")) == 2
        err = _one_error_line(capsys)
        assert "No space left on device" in err and "--resume-from auto" in err
        assert not list(out.rglob("*.tmp")) and not (out / LOCK_FILE).exists()
        saved = json.loads((out / "run.json").read_text())["checkpoints"]
        assert saved and all(torch.load(out / "checkpoints" / c["name"], weights_only=True) for c in saved)


def test_tool_add_control_refuses_a_read_only_folder_before_building(base, tmp_path, capsys):
    from tool_add_control import main as add_control

    with _tmpfs(tmp_path / "ro", read_only=True) as disk:
        assert add_control([str(base), str(disk / "init.ckpt"), "--config", str(TINY)]) == 2
        assert "Read-only file system" in _one_error_line(capsys)
