"""The learning proof, smaller: a ControlNet trained briefly on the committed toy base follows its edges."""

from __future__ import annotations

import json

import pytest
from repo_paths import TOY_BASE as BASE
from repo_paths import TOY_CONFIG as TOY

from cldm.loading import load_model
from evaluation.evaluate_control import EvalSettings, evaluate
from evaluation.onset import onset_threshold
from tool_add_control import main as add_control_main
from training.control_curve import read_curve
from training.data.toy_data import write_toy_dataset
from tutorial_train import main as train_main


@pytest.mark.slow
def test_controlnet_learns_to_follow_the_edges(tmp_path):
    data = write_toy_dataset(tmp_path / "toy", n=600, size=64, seed=1)
    init = tmp_path / "init.safetensors"
    assert add_control_main([str(BASE), str(init), "--config", str(TOY)]) == 0
    run = tmp_path / "run"
    args = ["--config", str(TOY), "--data", str(data), "--init", str(init), "--output", str(run)]
    # The demo's learning rate held constant, and empty prompts only: the edge map is then the only cue. The
    # config's Min-SNR weighting takes control within a few hundred steps (docs/training.md, 'The training objective').
    quick = ["--max-steps", "450", "--lr", "2e-3", "--lr-schedule", "constant", "--empty-prompt-p", "1.0"]
    assert train_main([*args, *quick, "--logger-freq", "10000", "--ckpt-every", "10000", "--eval-every", "150"]) == 0
    # The monitor saw the control take hold during training: the curve rises above its strength-0 baseline, and
    # the onset is found (and lies on the curve, before its end).
    curve, summary = read_curve(run), json.loads((run / "summary.json").read_text())["control"]
    assert [r["step"] for r in curve] == list(range(0, 451, 150)), curve
    assert curve[0]["edge_f1"] == summary["baseline_edge_f1"]
    assert max(r["edge_f1"] for r in curve) > onset_threshold(summary["baseline_edge_f1"]), curve
    assert summary["onset_step"] in [r["step"] for r in curve[1:-1]], (summary, curve)
    model, _ = load_model(TOY, base=BASE, control=run / "control.safetensors")
    scores = evaluate(model.eval(), data, (1.0, 0.0), settings=EvalSettings(n=12, steps=10, seed=0))
    on, off = scores["1"], scores["0"]
    # Strength 0 is the same model with the control switched off: the circles land anywhere.
    assert on["edge_f1"] > 1.5 * off["edge_f1"] and on["edge_f1"] - off["edge_f1"] > 0.02, scores
    assert on["edge_f1_tolerant"] > 2.0 * off["edge_f1_tolerant"], scores
    assert on["position_error_median"] < 0.5 * off["position_error_median"], scores
    # The fill is the prompt's colour inside the edge map's circle: off, only where a circle lands by chance.
    assert on["colour_accuracy"] >= 0.6 and on["colour_accuracy"] > off["colour_accuracy"] + 0.25, scores
