"""A run knows what it is: an occupied folder is never trained over, `last` and rotation count only the run's own
checkpoints, and a resume refuses data or initial weights other than those the run started from."""

import json
import shutil
from pathlib import Path

import torch
from repo_paths import TINY_CONFIG as TINY

from pairs.prompt_file import read_prompt_file, write_prompt_file
from training.run_record import RUN_FILE
from tutorial_train import main


def _args(data: Path, out: Path, base: Path, *extra: str) -> list[str]:
    common = ["--config", str(TINY), "--data", str(data), "--output", str(out), "--batch-size", "2"]
    return [*common, "--logger-freq", "1000", "--workers", "0", "--init", str(base), "--ckpt-every", "2", *extra]


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and err.count("\n") == 0, err
    return err


def test_a_new_run_in_an_occupied_folder_refuses_and_changes_nothing(toy_data, tmp_path, base, capsys):
    out = tmp_path / "run"
    assert main(_args(toy_data, out, base, "--max-steps", "2")) == 0
    capsys.readouterr()
    before = _snapshot(out)
    assert main(_args(toy_data, out, base, "--max-steps", "2", "--seed", "9")) == 2
    err = _one_error_line(capsys)
    assert "already holds run" in err and "--resume-from last" in err
    assert _snapshot(out) == before
    assert main(_args(toy_data, out, base, "--max-steps", "2", "--init", "none")) == 2  # nor a fresh init
    assert _snapshot(out) == before


def test_last_and_rotation_count_only_the_runs_own_checkpoints(toy_data, tmp_path, base):
    other, out = tmp_path / "other", tmp_path / "run"
    assert main(_args(toy_data, other, base, "--max-steps", "6", "--seed", "1")) == 0
    assert main(_args(toy_data, out, base, "--max-steps", "2")) == 0
    foreign = out / "checkpoints/step-0000006.ckpt"
    shutil.copy(other / "checkpoints/step-0000006.ckpt", foreign)  # another run's newer file, copied in by hand
    foreign_bytes = foreign.read_bytes()
    assert main(_args(toy_data, out, base, "--max-steps", "4", "--keep-last", "1", "--resume-from", "last")) == 0
    record = json.loads((out / RUN_FILE).read_text())
    assert [c["name"] for c in record["checkpoints"]] == ["step-0000004.ckpt"]  # resumed its own step 2, not step 6
    assert record["checkpoints"][0]["parent"] == "step-0000002.ckpt"
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-0000004.ckpt", "step-0000006.ckpt"]
    assert foreign.read_bytes() == foreign_bytes
    ckpt = torch.load(out / "checkpoints/step-0000004.ckpt", weights_only=True, mmap=True)
    assert ckpt["global_step"] == 4 and ckpt["cutenet_run"]["run_id"] == record["run_id"]


def test_an_older_step_branches_only_into_a_new_folder(toy_data, tmp_path, base, capsys):
    out = tmp_path / "run"
    assert main(_args(toy_data, out, base, "--max-steps", "4", "--keep-last", "3")) == 0
    capsys.readouterr()
    before, older = _snapshot(out), out / "checkpoints/step-0000002.ckpt"
    assert main(_args(toy_data, out, base, "--max-steps", "3", "--resume-from", str(older))) == 2
    assert "went on to step-0000004.ckpt" in _one_error_line(capsys)
    assert _snapshot(out) == before
    branch = tmp_path / "branch"
    assert main(_args(toy_data, branch, base, "--max-steps", "3", "--resume-from", str(older))) == 0
    record, parent = json.loads((branch / RUN_FILE).read_text()), json.loads((out / RUN_FILE).read_text())
    assert record["parent"] == {"run_id": parent["run_id"], "checkpoint": str(older), "step": 2}
    assert record["run_id"] != parent["run_id"] and record["checkpoints"][0]["parent"] == str(older)
    assert _snapshot(out) == before


def test_a_resume_refuses_other_initial_weights_or_other_data(toy_data, tmp_path, base, capsys):
    init, data, out = tmp_path / "init.ckpt", tmp_path / "data", tmp_path / "run"
    shutil.copy(base, init)
    shutil.copytree(toy_data, data)
    assert main(_args(data, out, init, "--max-steps", "2")) == 0
    capsys.readouterr()
    state = torch.load(init, weights_only=True)
    state["state_dict"]["model.diffusion_model.out.2.bias"] += 1  # the same name and size, other weights
    torch.save(state, init)
    assert main(_args(data, out, init, "--max-steps", "4", "--resume-from", "last")) == 2
    assert "initial weights" in _one_error_line(capsys)
    shutil.copy(base, init)  # the same bytes again (a fresh copy: new mtime, same hash) are accepted
    rows = read_prompt_file(data / "prompt.json")
    rows[0]["prompt"] = "another caption"
    write_prompt_file(data / "prompt.json", rows)
    assert main(_args(data, out, init, "--max-steps", "4", "--resume-from", "last")) == 2
    assert f"the pairs in {data} are not those" in _one_error_line(capsys)
    shutil.copy(toy_data / "prompt.json", data / "prompt.json")
    assert main(_args(data, out, init, "--max-steps", "4", "--resume-from", "last")) == 0


def test_a_folder_from_before_run_records_is_not_guessed(toy_data, tmp_path, base, capsys):
    out = tmp_path / "run"
    assert main(_args(toy_data, out, base, "--max-steps", "2")) == 0
    (out / RUN_FILE).unlink()
    capsys.readouterr()
    assert main(_args(toy_data, out, base, "--max-steps", "4", "--resume-from", "last")) == 2
    err = _one_error_line(capsys)
    assert f"no {RUN_FILE}" in err and f"--resume-from {out}/checkpoints/step-0000002.ckpt" in err
