"""Outputs are checked before the long work: the evaluation, the demo's batch mode and the export tool refuse a path
they cannot write at once (each given weights that do not exist, to show that nothing was loaded first), and the
export tool never overwrites."""

import pytest
from repo_paths import TINY_CONFIG

from gradio_canny2image import main as demo_main
from tool_eval_control import main as eval_main
from tool_export_control import main as export_main


@pytest.fixture
def blocker(tmp_path):
    path = tmp_path / "a-file"
    path.write_text("")  # an output under a file cannot be written, as on a read-only disk
    return path


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and err.count("\n") == 0, err
    return err


def test_the_evaluation_checks_its_outputs_before_loading_and_sampling(toy_data, tmp_path, blocker, capsys):
    common = ["--config", str(TINY_CONFIG), "--ckpt", str(tmp_path / "missing.ckpt"), "--data", str(toy_data)]
    for flag in ("--out", "--grid"):
        assert eval_main([*common, flag, str(blocker / "result")]) == 2
        assert f"cannot write {blocker / 'result'}" in _one_error_line(capsys)


def test_batch_mode_checks_its_output_folder_before_loading(tmp_path, blocker, capsys):
    common = ["--config", str(TINY_CONFIG), "--ckpt", str(tmp_path / "missing.ckpt"), "--input", str(blocker)]
    assert demo_main([*common, "--out", str(blocker)]) == 2
    assert "is a file, not a folder" in _one_error_line(capsys)
    assert demo_main([*common, "--out", str(blocker / "out")]) == 2
    assert f"cannot write {blocker / 'out'}" in _one_error_line(capsys)
    assert demo_main(common) == 2
    assert "--input needs --out" in _one_error_line(capsys)


def test_the_export_tool_never_overwrites(tiny_model, tmp_path, capsys):
    from cldm.weights import export_control

    export_control(tiny_model, tmp_path / "control.safetensors")
    taken = tmp_path / "taken.safetensors"
    taken.write_bytes(b"keep me")
    args = [str(tmp_path / "control.safetensors"), str(taken), "--format", "ldm", "--config", str(TINY_CONFIG)]
    assert export_main(args) == 2
    assert "already exists" in _one_error_line(capsys) and taken.read_bytes() == b"keep me"
