"""bench/convergence.py: every arm and seed trains under its own objective from the seed's one init, the table
reads each run's curve, and a second call reads the finished runs again instead of training them."""

import json

import pytest
from repo_paths import TINY_CONFIG

from bench.convergence import main, maucc


def test_maucc_is_the_mean_f1_over_the_run_from_the_baseline_at_step_0():
    assert maucc([100, 200], [0.1, 0.1], baseline=0.1) == pytest.approx(0.1)
    assert maucc([100, 200], [0.3, 0.5], baseline=0.1) == pytest.approx(
        ((0.1 + 0.3) / 2 * 100 + (0.3 + 0.5) / 2 * 100) / 200
    )


@pytest.mark.slow
def test_each_arm_trains_under_its_objective_and_a_second_call_only_reads(toy_data, base, tmp_path, capsys):
    flags = ["--config", str(TINY_CONFIG), "--data", str(toy_data), "--init", str(base), "--batch-size", "2"]
    flags += ["--max-steps", "2", "--eval-every", "1", "--eval-n", "1", "--workers", "0", "--ckpt-every", "2"]
    arms = ["eps-uniform", "x0-cubic"]
    assert main([*flags, "--arms", *arms, "--seeds", "0", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for arm in arms:
        run = json.loads((tmp_path / arm / "seed0" / "run.json").read_text())
        params = json.dumps(run)
        weighting, sampling = arm.split("-")
        assert f'"loss_weighting": "{weighting}"' in params and f'"timestep_sampling": "{sampling}"' in params
        assert any(line.startswith(arm) for line in out.splitlines()), out
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [(r["arm"], r["steps"]) for r in summary] == [("eps-uniform", 2), ("x0-cubic", 2)]
    logs = {arm: (tmp_path / arm / "seed0" / "bench.log").stat().st_mtime for arm in arms}
    assert main([*flags, "--arms", *arms, "--seeds", "0", "--out", str(tmp_path)]) == 0
    assert "training" not in capsys.readouterr().out  # finished runs are read, not trained again
    assert logs == {arm: (tmp_path / arm / "seed0" / "bench.log").stat().st_mtime for arm in arms}
