import json
import shutil

import cv2
import numpy as np
import pytest
import torch
from photo_pairs import write_photo_pairs

import evaluation.evaluate_control as evaluate_control
from annotator.canny import DEFAULT_THRESHOLDS, CannyDetector, CannyThresholds
from annotator.util import read_rgb
from cldm.weights import export_control
from evaluation.evaluate_control import ControlScores, EvalSettings, evaluate
from pairs.prompt_file import read_prompt_file
from pairs.toy_palette import COLOURS
from tool_eval_control import main


def test_a_model_that_follows_its_control_scores_far_above_one_that_ignores_it(toy_data, tiny_model, monkeypatch):
    rows = read_prompt_file(toy_data / "prompt_val.json")

    def oracle(model, hint, prompts, negative_prompts, *, control_scales, **kwargs):
        # Control on: the true targets (their canny maps are the inputs); control off: plain grey images.
        targets = []
        for prompt in prompts:
            row = next(r for r in rows if r["prompt"] == prompt)
            targets.append(torch.from_numpy(read_rgb(toy_data / row["target"])).permute(2, 0, 1).float() / 127.5 - 1)
        target = torch.stack(targets)  # B×3×H×W
        return target if control_scales[0] > 0 else torch.zeros_like(target)

    monkeypatch.setattr(evaluate_control, "sample", oracle)
    results = evaluate(tiny_model, toy_data, (1.0, 0.0), settings=EvalSettings(n=2))
    on, off = results["1"], results["0"]
    assert on["edge_f1"] == pytest.approx(1.0) and on["edge_f1_tolerant"] == pytest.approx(1.0)
    assert on["ssim"] == pytest.approx(1.0)
    assert on["colour_accuracy"] == 1.0 and on["position_error_median"] < 1.0 and on["n_toy"] == 2
    # A plain grey image has no edges, and its "circle" (the whole image or nothing) is not the target's.
    assert off["edge_f1"] == 0.0 and off["edge_f1_tolerant"] == 0.0 and off["n"] == 2
    assert off["position_error_median"] > 3.0


def test_prompts_that_are_not_toy_prompts_get_no_toy_scores(toy_data, tiny_model, monkeypatch):
    def grey(model, hint, prompts, negative_prompts, **kwargs):
        return torch.zeros(len(prompts), 3, 64, 64)

    monkeypatch.setattr(evaluate_control, "sample", grey)
    results = evaluate(tiny_model, toy_data, (1.0,), settings=EvalSettings(n=2), palette={"mauve": (200, 150, 200)})
    assert results["1"]["colour_accuracy"] is None and results["1"]["position_error_median"] is None


def test_cli_prints_a_table_and_writes_json(toy_data, repo_root, tmp_path, capsys):
    out = tmp_path / "eval.json"
    grid = tmp_path / "grid.png"
    assert (
        main(
            [
                "--config",
                str(repo_root / "models/cldm_tiny.yaml"),
                "--data",
                str(toy_data),
                "--n",
                "2",
                "--steps",
                "2",
                "--out",
                str(out),
                "--device",
                "cpu",
                "--grid",
                str(grid),
            ]
        )
        == 0
    )
    from PIL import Image

    assert Image.open(grid).size == (4 * 64, 2 * 64)  # control | strength 1 | strength 0 | target, 2 rows
    printed = capsys.readouterr().out
    assert "edge F1" in printed and "F1 ±1px" in printed and "colour" in printed and "UNTRAINED" in printed
    data = json.loads(out.read_text())
    # Untrained: the zero convolutions add nothing, so control on and off must score exactly the same.
    assert set(data["results"]) == {"1", "0"} and data["results"]["1"] == data["results"]["0"]


def _sample_the_targets(folder, monkeypatch):
    """Sampling replaced by an oracle: every sample is its pair's target, whose canny at the data's thresholds is
    exactly the input edge map."""
    rows = {r["prompt"]: r for r in read_prompt_file(folder / "prompt_val.json")}

    def oracle(model, hint, prompts, negative_prompts, **kwargs):
        targets = [torch.from_numpy(read_rgb(folder / rows[p]["target"])).permute(2, 0, 1) for p in prompts]
        return torch.stack(targets).float() / 127.5 - 1  # B×3×H×W

    monkeypatch.setattr(evaluate_control, "sample", oracle)


def test_the_cli_scores_at_the_thresholds_that_made_the_data(repo_root, tmp_path, capsys, monkeypatch, tiny_model):
    data = write_photo_pairs(tmp_path / "data", CannyThresholds(50, 150))
    _sample_the_targets(data, monkeypatch)
    out = tmp_path / "eval.json"
    tiny = str(repo_root / "models/cldm_tiny.yaml")
    args = ["--config", tiny, "--data", str(data), "--n", "2", "--steps", "1", "--strengths", "1", "--out", str(out)]
    assert main(args) == 0
    written = json.loads(out.read_text())
    assert written["canny_thresholds"] == {"low": 50, "high": 150}
    assert written["results"]["1"]["edge_f1"] == pytest.approx(1.0)
    assert "canny 50/150" in capsys.readouterr().out
    # At the default thresholds the same samples miss part of the inputs' edges: the 1.0 above is the data's doing.
    at_default = evaluate(tiny_model, data, (1.0,), settings=EvalSettings(n=2, thresholds=DEFAULT_THRESHOLDS))
    assert at_default["1"]["edge_f1"] < 0.95


def test_the_cli_warns_when_the_controlnet_learned_other_thresholds(repo_root, tmp_path, capsys, tiny_model, base):
    data = write_photo_pairs(tmp_path / "data", CannyThresholds(50, 150))
    export_control(tiny_model, tmp_path / "control.safetensors", thresholds=CannyThresholds(100, 200))
    args = ["--config", str(repo_root / "models/cldm_tiny.yaml"), "--data", str(data), "--n", "1", "--steps", "1"]
    assert main([*args, "--base", str(base), "--control", str(tmp_path / "control.safetensors")]) == 0
    err = capsys.readouterr().err
    assert "trained on canny 100/200" in err and "canny 50/150" in err


def test_missing_held_out_file_is_one_clear_line(repo_root, tmp_path, capsys):
    assert main(["--config", str(repo_root / "models/cldm_tiny.yaml"), "--data", str(tmp_path), "--n", "1"]) == 2
    assert "prompt_val.json" in capsys.readouterr().err


def test_colour_hits_are_counted_per_fill_and_per_background():
    def circle(fill: str, background: str) -> np.ndarray:
        image = np.empty((64, 64, 3), np.uint8)
        image[:] = COLOURS[background]
        cv2.circle(image, (32, 32), 12, COLOURS[fill], thickness=-1)
        return image

    scores = ControlScores(tolerance=1, palette=COLOURS)
    # (image, prompt): right on black, wrong (blue painted) on black, right on white.
    for image_fill, named_fill, background in (
        ("red", "red", "black"),
        ("blue", "green", "black"),
        ("red", "red", "white"),
    ):
        target = circle(named_fill, background)
        edges = CannyDetector()(target)
        image = circle(image_fill, background)
        scores.add(edges, edges, image, target, f"a {named_fill} circle on a {background} background")
    assert scores.colour_hits_by("background") == {"black": (1, 2), "white": (1, 1)}
    assert scores.colour_hits_by("fill") == {"green": (0, 1), "red": (2, 2)}
    assert scores.summary()["colour_accuracy"] == pytest.approx(2 / 3)


def test_batches_share_every_pair_out_once_and_do_not_depend_on_the_world_size():
    assert evaluate_control.batches_of(10, 4) == [range(0, 4), range(4, 8), range(8, 10)]
    shares = [evaluate_control.batches_of(10, 4, rank=r, world_size=2) for r in range(2)]
    assert shares == [[range(0, 4), range(8, 10)], [range(4, 8)]]
    assert sorted(i for share in shares for b in share for i in b) == list(range(10))


def test_shares_scored_apart_and_gathered_equal_one_process(toy_data, tiny_model, tmp_path):
    """The monitor's DDP path without processes: each rank's share scored alone, then merged, gives the very
    floats of one process (each pair keeps its own noise and its batch)."""
    data = tmp_path / "data"
    data.mkdir()
    rows = read_prompt_file(toy_data / "prompt_val.json") + read_prompt_file(toy_data / "prompt.json")[:3]
    for folder in ("source", "target"):
        shutil.copytree(toy_data / folder, data / folder)  # a copy: a symbolic link out of the folder is refused
    (data / "prompt_val.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with torch.no_grad():  # a UNet whose output layer is not zero, and a ControlNet that adds something to it
        for p in [
            *tiny_model.model.diffusion_model.out.parameters(),
            *tiny_model.control_model.zero_convs.parameters(),
        ]:
            p.normal_(std=0.5)
    settings = EvalSettings(n=5, steps=2, batch_size=2)
    one = evaluate(tiny_model.eval(), data, (1.0, 0.0), settings=settings)
    shares = [evaluate_control.batches_of(5, 2, rank=r, world_size=2) for r in range(2)]
    parts: dict[int, list] = {}

    def keep(rank):
        def gather(scores):
            parts.setdefault(rank, []).append(scores)
            return scores

        return gather

    for rank in range(2):
        evaluate(tiny_model, data, (1.0, 0.0), settings=settings, rank=rank, world_size=2, gather=keep(rank))
    merged = {s: evaluate_control.summarise(parts[0][k] + parts[1][k]) for k, s in enumerate(("1", "0"))}
    assert merged == one and shares[0] and shares[1]
    assert one["1"] != one["0"]  # the control changed the samples, so the check compares real scores
