import json

import numpy as np
import pytest

import evaluation.evaluate_control as evaluate_control
from evaluation.evaluate_control import EvalSettings, evaluate
from tool_eval_control import main
from training.toy_data import write_toy_dataset


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return write_toy_dataset(tmp_path_factory.mktemp("toy"), n=40, size=64, seed=4)


def test_a_model_that_follows_its_control_scores_far_above_one_that_ignores_it(toy, monkeypatch):
    import cv2

    def oracle(demo, edges, prompt, request, *, seed):
        # Strength 1: the true target (its canny map is the input); strength 0: a plain image.
        row = next(r for r in rows if r["prompt"] == prompt)
        target = cv2.cvtColor(cv2.imread(str(toy / row["target"])), cv2.COLOR_BGR2RGB)
        return [target if request.strength > 0 else np.full_like(target, 128)]

    from training.prompt_file import read_prompt_file

    rows = read_prompt_file(toy / "prompt_val.json")
    monkeypatch.setattr(evaluate_control, "sample_from_edges", oracle)
    results = evaluate(None, toy, (1.0, 0.0), settings=EvalSettings(n=2))
    assert results["1"]["f1"] == pytest.approx(1.0) and results["1"]["ssim"] == pytest.approx(1.0)
    assert results["0"]["f1"] == 0.0 and results["0"]["n"] == 2


def test_cli_prints_a_table_and_writes_json(toy, tmp_path, capsys):
    out = tmp_path / "eval.json"
    grid = tmp_path / "grid.png"
    assert main(["--data", str(toy), "--n", "2", "--steps", "2", "--out", str(out), "--device", "cpu",
                 "--grid", str(grid)]) == 0
    from PIL import Image

    assert Image.open(grid).size == (4 * 64, 2 * 64)  # control | strength 1 | strength 0 | target, 2 rows
    printed = capsys.readouterr().out
    assert "edge F1" in printed and "UNTRAINED" in printed
    data = json.loads(out.read_text())
    assert set(data["results"]) == {"1", "0"} and 0.0 <= data["results"]["1"]["f1"] <= 1.0


def test_missing_held_out_file_is_one_clear_line(tmp_path, capsys):
    assert main(["--data", str(tmp_path), "--n", "1"]) == 2
    assert "prompt_val.json" in capsys.readouterr().err
