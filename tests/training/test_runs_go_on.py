"""Runs go on: a fresh-init run resumes, a run extended with more steps (or another --lr) trains each new step at
the new schedule, a resume that would score its curve otherwise is refused, and a refused run or export writes
nothing."""

import math

import pytest
import torch
from fill50k import write_fill50k_like
from repo_paths import ROOT
from train_args import tiny_args

import tool_export_control
from tutorial_train import main


def _args(data, out, *extra, init):
    return tiny_args(data, out, "--eval-every", "0", *extra, init=init)


def _ckpt(out, step):
    return torch.load(out / f"checkpoints/step-{step:07d}.ckpt", weights_only=True)


def test_a_fresh_init_run_resumes(toy_data, tmp_path):
    out = tmp_path / "run"
    assert main(_args(toy_data, out, "--max-steps", "2", "--ckpt-every", "2", init="none")) == 0
    assert (
        main(_args(toy_data, out, "--max-steps", "3", "--ckpt-every", "3", "--resume-from", "last", init="none")) == 0
    )
    assert _ckpt(out, 3)["global_step"] == 3


def test_an_extended_cosine_run_trains_its_new_steps_at_the_new_schedule(toy_data, tmp_path, base):
    out, lr = tmp_path / "run", 1e-3
    common = ["--ckpt-every", "1", "--lr", str(lr), "--lr-schedule", "cosine"]
    assert main(_args(toy_data, out, "--max-steps", "4", *common, init=base)) == 0
    assert _ckpt(out, 4)["optimizer_states"][0]["param_groups"][0]["lr"] == pytest.approx(0.0, abs=1e-12)
    assert main(_args(toy_data, out, "--max-steps", "6", *common, "--resume-from", "last", init=base)) == 0
    factor = 0.5 * (1 + math.cos(math.pi * 5 / 6))  # the new schedule's rate after step 5 of 6
    assert _ckpt(out, 5)["optimizer_states"][0]["param_groups"][0]["lr"] == pytest.approx(lr * factor)
    before, after = _ckpt(out, 4)["state_dict"], _ckpt(out, 5)["state_dict"]
    assert any(not torch.equal(before[k], after[k]) for k in before)  # step 5 trained: its rate was not 0


def test_a_resume_with_another_lr_trains_at_it(toy_data, tmp_path, base):
    out = tmp_path / "run"
    assert main(_args(toy_data, out, "--max-steps", "2", "--ckpt-every", "2", "--lr", "1e-3", init=base)) == 0
    resumed = ["--max-steps", "3", "--ckpt-every", "3", "--lr", "2e-3", "--resume-from", "last"]
    assert main(_args(toy_data, out, *resumed, init=base)) == 0
    assert _ckpt(out, 3)["optimizer_states"][0]["param_groups"][0]["lr"] == pytest.approx(2e-3)


@pytest.mark.parametrize(("flag", "before", "after"), [("--eval-n", "1", "2"), ("--eval-steps", "4", "3")])
def test_a_resume_scored_otherwise_is_refused(toy_data, tmp_path, base, capsys, flag, before, after):
    out = tmp_path / "run"
    scored = ["--eval-every", "2", "--ckpt-every", "2", "--eval-n", "1"]
    assert main(_args(toy_data, out, "--max-steps", "2", *scored, flag, before, init=base)) == 0
    capsys.readouterr()
    resumed = ["--max-steps", "3", *scored, flag, after, "--resume-from", "last"]
    assert main(_args(toy_data, out, *resumed, init=base)) == 2
    assert f"{flag[2:].replace('-', '_')} {before}" in capsys.readouterr().err


def test_a_refused_run_and_a_refused_export_write_nothing(toy_data, tmp_path, base, capsys):
    out = tmp_path / "run"
    assert main(_args(toy_data, out, "--max-steps", "1", "--ckpt-every", "1", init=base)) == 0
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    fill, _ = write_fill50k_like(tmp_path / "fill50k", n=4)
    assert main(_args(fill, out, "--max-steps", "1", init=base)) == 2  # a new run into a held folder
    assert "already holds" in capsys.readouterr().err
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before  # the import never started
    export = tmp_path / "exported"
    wrong = ROOT / "models/cldm_toy.yaml"
    assert tool_export_control.main([str(out), str(export), "--format", "diffusers", "--config", str(wrong)]) == 2
    assert not export.exists()


def test_the_objective_is_a_setting_recorded_by_the_run_and_kept_by_its_resumes(toy_data, tmp_path, base, capsys):
    out = tmp_path / "run"
    objective = ["--loss-weighting", "x0", "--timestep-sampling", "cubic"]
    assert main(_args(toy_data, out, "--max-steps", "2", "--ckpt-every", "2", *objective, init=base)) == 0
    params = _ckpt(out, 2)["cutenet_config"]["model"]["params"]
    assert (params["loss_weighting"], params["timestep_sampling"]) == ("x0", "cubic")
    capsys.readouterr()
    resumed = ["--max-steps", "3", "--ckpt-every", "3", "--resume-from", "last"]
    assert main(_args(toy_data, out, *resumed, "--loss-weighting", "min-snr", init=base)) == 2
    err = capsys.readouterr().err
    assert "loss_weighting x0" in err and "loss_weighting min-snr" in err and "\n" not in err.strip()
    assert not (out / "checkpoints/step-0000003.ckpt").exists()
    assert main(_args(toy_data, out, *resumed, *objective, init=base)) == 0  # the same objective goes on
    branch = ["--resume-from", str(out / "checkpoints/step-0000002.ckpt"), "--loss-weighting", "min-snr"]
    assert main(_args(toy_data, tmp_path / "branch", "--max-steps", "3", "--ckpt-every", "3", *branch, init=base)) == 0
