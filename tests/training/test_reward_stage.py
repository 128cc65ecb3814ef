"""The reward stage in a run: it starts from a trained ControlNet, is recorded, trains otherwise than the plain
loss, and resumes bit for bit; a fresh start with it is refused, and so is a resume that changes it."""

import json

import pytest
import torch
from safetensors.torch import load_file
from train_args import tiny_args

from tutorial_train import main


@pytest.mark.slow
def test_the_reward_stage_is_recorded_moves_the_weights_and_resumes_bit_exactly(toy_data, tmp_path, base, capsys):
    assert main(tiny_args(toy_data, tmp_path / "first", "--max-steps", "2", "--eval-every", "0", init=base)) == 0
    start = str(tmp_path / "first/control.safetensors")
    common = ["--control-from", start, "--eval-every", "0", "--ckpt-every", "2", "--seed", "5"]
    reward = ["--reward-weight", "1", "--reward-max-t", "999"]  # every sample rewarded
    runs = {name: tmp_path / name for name in ("straight", "parts", "plain")}
    assert main(tiny_args(toy_data, runs["straight"], *common, *reward, "--max-steps", "4", init=base)) == 0
    assert main(tiny_args(toy_data, runs["parts"], *common, *reward, "--max-steps", "2", init=base)) == 0
    resume = ["--max-steps", "4", "--resume-from", "last"]
    assert main(tiny_args(toy_data, runs["parts"], *common, *reward, *resume, init=base)) == 0
    assert main(tiny_args(toy_data, runs["plain"], *common, "--max-steps", "4", init=base)) == 0
    straight, parts, plain = (load_file(str(runs[n] / "control.safetensors")) for n in ("straight", "parts", "plain"))
    assert all(torch.equal(parts[k], v) for k, v in straight.items())
    assert any(not torch.equal(plain[k], v) for k, v in straight.items())
    params = json.loads((runs["straight"] / "run.json").read_text())["settings"]["model"]["params"]
    assert params["reward_weight"] == 1.0 and params["reward_max_t"] == 999
    assert params["reward_thresholds"] == [100, 200]  # the toy data's dataset.json
    # a resume into the same folder that changes the reward is refused, and names what changed
    capsys.readouterr()
    changed = [*common, "--reward-weight", "2", "--reward-max-t", "999", "--max-steps", "6", "--resume-from", "last"]
    assert main(tiny_args(toy_data, runs["parts"], *changed, init=base)) == 2
    assert "reward_weight" in capsys.readouterr().err


def test_a_fresh_start_with_the_reward_and_no_controlnet_is_refused(toy_data, tmp_path, base, capsys):
    out = tmp_path / "run"
    assert main(tiny_args(toy_data, out, "--reward-weight", "1", "--max-steps", "2", init=base)) == 2
    err = capsys.readouterr().err
    assert "--control-from" in err and err.count("\n") == 1
    assert not (out / "checkpoints").exists()
