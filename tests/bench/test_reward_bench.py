"""bench/reward_stage.py: both arms start from the one ControlNet (the same before-scores), only the reward arm
trains with the reward, and a second call reads the finished runs instead of training them again."""

import json

import pytest
from repo_paths import TINY_CONFIG
from train_args import tiny_args

from bench.reward_stage import main
from tutorial_train import main as train_main


@pytest.mark.slow
def test_both_arms_start_from_the_control_and_only_one_is_rewarded(toy_data, base, tmp_path, capsys):
    assert train_main(tiny_args(toy_data, tmp_path / "start", "--max-steps", "2", "--eval-every", "0", init=base)) == 0
    control = tmp_path / "start/control.safetensors"
    flags = ["--config", str(TINY_CONFIG), "--data", str(toy_data), "--init", str(base), "--batch-size", "2"]
    flags += ["--eval-every", "2", "--eval-n", "1", "--workers", "0", "--ckpt-every", "2", "--reward-max-t", "999"]
    bench = ["--control", str(control), "--steps", "2", "--seeds", "0", "--out", str(tmp_path / "bench")]
    assert main([*bench, *flags]) == 0
    out = capsys.readouterr().out
    summary = {r["arm"]: r for r in json.loads((tmp_path / "bench/summary.json").read_text())}
    assert sorted(summary) == ["plain", "reward"] and {r["steps"] for r in summary.values()} == {2}
    assert summary["plain"]["edge_f1_before"] == summary["reward"]["edge_f1_before"]
    for arm, weight in (("plain", 0.0), ("reward", 1.0)):
        params = json.loads((tmp_path / f"bench/{arm}/seed0/run.json").read_text())["settings"]["model"]["params"]
        assert params["reward_weight"] == weight
        assert any(line.startswith(arm) for line in out.splitlines()), out
    assert "reward / plain" in out
    assert main([*bench, *flags]) == 0
    assert "training" not in capsys.readouterr().out  # finished runs are read, not trained again


def test_a_missing_start_is_named(tmp_path):
    with pytest.raises(SystemExit, match="nothing.safetensors"):
        main(["--control", str(tmp_path / "nothing.safetensors")])
