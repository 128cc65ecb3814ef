"""bench/edges_by_timestep.py: the round trip bounds what an estimate scores, the estimate loses the edges as the noise
grows, zero convolutions make the control's strength irrelevant, and the command line names what it refuses."""

import copy
import json

import pytest
import torch
from repo_paths import TOY_BASE, TOY_CONFIG

from annotator.canny import DEFAULT_THRESHOLDS
from bench.edges_by_timestep import ROUND_TRIP, edges_by_timestep, main
from cldm.loading import create_model, load_base
from evaluation.evaluate_control import held_out_rows, read_pairs
from pairs.prompt_file import VAL_PROMPT_FILE


@pytest.fixture(scope="module")
def toy_model():
    """The toy quickstart's model: its trained SD stand-in, a fresh ControlNet (zero convolutions)."""
    torch.manual_seed(0)
    model = create_model(TOY_CONFIG)
    load_base(model, TOY_BASE)
    return model.eval()


def f1(scored, key):
    return scored[key][0].score().f1


def test_estimates_lose_the_edges_as_noise_grows_and_zero_convs_ignore_the_strength(toy_model, toy_data):
    pairs = read_pairs(toy_data, held_out_rows(toy_data, VAL_PROMPT_FILE, 2), range(2))
    scored = edges_by_timestep(toy_model, pairs, (0, 999), (1.0, 0.0), DEFAULT_THRESHOLDS)
    assert f1(scored, ROUND_TRIP) > 0.5  # the toy's autoencoder keeps most edge pixels where they were
    assert f1(scored, "t=0 s=1") > 0.5 > f1(scored, "t=999 s=1")
    for t in (0, 999):  # zero convolutions add nothing at any strength
        assert scored[f"t={t} s=1"] == scored[f"t={t} s=0"]
    assert edges_by_timestep(toy_model, pairs, (999,), (1.0,), DEFAULT_THRESHOLDS)["t=999 s=1"] == scored["t=999 s=1"]

    trained = copy.deepcopy(toy_model)
    with torch.no_grad():  # a control that adds something: strength now matters
        for p in trained.control_model.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    changed = edges_by_timestep(trained, pairs, (999,), (1.0, 0.0), DEFAULT_THRESHOLDS)
    assert changed["t=999 s=1"] != changed["t=999 s=0"]
    assert changed["t=999 s=0"] == scored["t=999 s=0"]  # the control off is the base model, whatever the ControlNet


def test_the_command_writes_every_row_and_names_a_timestep_out_of_range(toy_data, tmp_path, capsys):
    flags = ["--config", str(TOY_CONFIG), "--base", str(TOY_BASE), "--data", str(toy_data)]
    assert main([*flags, "--timesteps", "1000"]) == 2
    assert "1000" in capsys.readouterr().err
    out = tmp_path / "edges.json"
    assert main([*flags, "--timesteps", "10", "500", "--strengths", "1", "--n", "2", "--out", str(out)]) == 0
    results = json.loads(out.read_text())["results"]
    assert sorted(results) == sorted([ROUND_TRIP, "t=10 s=1", "t=500 s=1"])
    assert all(r["n"] == 2 and 0 <= r["edge_f1"] <= 1 for r in results.values())
    assert "round trip" in capsys.readouterr().out
