"""EMA of the ControlNet's weights: the update is ema ← d·ema + (1 − d)·θ; a run with --ema-decay exports and
scores the EMA weights and checkpoints them; a resume restores them bit for bit."""

import json

import torch
from safetensors.torch import load_file
from train_args import tiny_args

from training.ema import CHECKPOINT_KEY, ControlEMA
from tutorial_train import main


def test_the_update_is_the_exponential_average(tiny_model):
    ema = ControlEMA(tiny_model, 0.9)
    params = list(tiny_model.control_model.parameters())
    theta0 = [p.detach().clone() for p in params]
    ema.update(tiny_model)  # the first update copies
    with torch.no_grad():
        for p in params:
            p.add_(torch.randn_like(p))
    theta1 = [p.detach().clone() for p in params]
    ema.update(tiny_model)
    for average, a, b in zip(ema.average.module.parameters(), theta0, theta1, strict=True):
        torch.testing.assert_close(average, 0.9 * a + 0.1 * b)
    with ema.applied(tiny_model):
        assert all(p is q for p, q in zip(tiny_model.control_model.parameters(), ema.average.module.parameters()))
    assert all(p is q for p, q in zip(tiny_model.control_model.parameters(), params))  # put back
    assert ema.steps == 2


def _ckpt(out, step):
    return torch.load(out / f"checkpoints/step-{step:07d}.ckpt", weights_only=True)


def test_a_run_with_ema_exports_scores_and_resumes_the_average(toy_data, tmp_path, base):
    flags = ["--ema-decay", "0.5", "--ckpt-every", "2", "--eval-every", "2", "--eval-n", "1", "--seed", "1"]
    straight, parts = tmp_path / "straight", tmp_path / "parts"
    assert main(tiny_args(toy_data, straight, *flags, "--max-steps", "4", init=base)) == 0
    assert main(tiny_args(toy_data, parts, *flags, "--max-steps", "2", init=base)) == 0
    assert main(tiny_args(toy_data, parts, *flags, "--max-steps", "4", "--resume-from", "last", init=base)) == 0
    final = _ckpt(straight, 4)
    average = {k.removeprefix("module."): v for k, v in final[CHECKPOINT_KEY].items() if k.startswith("module.")}
    exported = load_file(str(straight / "control.safetensors"))
    assert exported.keys() == {f"control_model.{k}" for k in average}
    assert all(torch.equal(exported[f"control_model.{k}"], v.float()) for k, v in average.items())
    trained = {k: v for k, v in final["state_dict"].items() if k.startswith("control_model.")}
    assert any(not torch.equal(trained[k], exported[k]) for k in trained)  # the export is the average, not θ
    resumed = _ckpt(parts, 4)[CHECKPOINT_KEY]
    assert resumed.keys() == final[CHECKPOINT_KEY].keys()
    assert all(torch.equal(resumed[k], v) for k, v in final[CHECKPOINT_KEY].items())
    summary = json.loads((straight / "summary.json").read_text())["control"]
    assert summary["scored_weights"] == "ema (decay 0.5)"
