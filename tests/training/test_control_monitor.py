"""The controllability monitor inside real tiny runs (CPU): the same scores as the offline tool, a curve that
continues across a resume, the best ControlNet, early stopping, the held-out pre-check, the loggers, and a run
whose training draws are the same with the monitor on or off."""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from repo_paths import TINY_CONFIG as TINY
from safetensors.torch import load_file

from tool_eval_control import main as eval_main
from training.control_curve import read_curve
from tutorial_train import main as train_main

SCORES = ("edge_f1", "edge_precision", "edge_recall", "edge_f1_tolerant", "ssim", "colour_accuracy")


def _args(data: Path, out: Path, base: Path, *extra: str) -> list[str]:
    return [
        *("--config", str(TINY), "--data", str(data), "--output", str(out), "--init", str(base)),
        *("--batch-size", "2", "--logger-freq", "1000", "--workers", "0", "--eval-n", "4"),
        *extra,
    ]


def _without_time(rows):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


def test_scores_during_training_equal_the_offline_tools_on_the_same_weights(toy_data, tmp_path, base):
    run = tmp_path / "run"
    assert train_main(_args(toy_data, run, base, "--max-steps", "6", "--eval-every", "3", "--ckpt-every", "6")) == 0
    rows = read_curve(run)
    assert [r["step"] for r in rows] == [0, 3, 6]
    out = tmp_path / "eval.json"
    offline = ["--config", str(TINY), "--base", str(base), "--control", str(run / "control.safetensors")]
    tool = [*offline, "--data", str(toy_data), "--n", "4", "--steps", "4", "--device", "cpu", "--out", str(out)]
    assert eval_main(tool) == 0  # the eval settings of cldm_tiny.yaml
    results = json.loads(out.read_text())["results"]
    assert {k: rows[-1][k] for k in SCORES} == {k: results["1"][k] for k in SCORES}
    # The baseline is the offline tool's strength 0, measured once, at the start.
    baseline = json.loads((run / "control_baseline.json").read_text())["scores"]
    assert {k: baseline[k] for k in SCORES} == {k: results["0"][k] for k in SCORES}
    # At the fresh start the zero convolutions add nothing: step 0's row is the baseline (not sampled twice).
    assert {k: rows[0][k] for k in SCORES} == {k: baseline[k] for k in SCORES}


def test_the_monitor_draws_nothing_from_training_and_the_curve_continues_across_a_resume(toy_data, tmp_path, base):
    common = ["--max-steps", "8", "--ckpt-every", "4", "--seed", "3"]
    off, straight, resumed = tmp_path / "off", tmp_path / "straight", tmp_path / "resumed"
    assert train_main(_args(toy_data, off, base, *common, "--eval-every", "0")) == 0
    assert train_main(_args(toy_data, straight, base, *common, "--eval-every", "2")) == 0
    weights = [load_file(run / "control.safetensors") for run in (off, straight)]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0]), "the monitor changed training"
    assert not (off / "control_curve.csv").exists()
    # A run stopped at step 4 whose curve already held a row after its checkpoint (its job died at step 6): the
    # resume drops that row and evaluates step 6 again, so the curve has no duplicate and no gap.
    assert (
        train_main(
            _args(toy_data, resumed, base, "--max-steps", "4", "--ckpt-every", "4", "--seed", "3", "--eval-every", "2")
        )
        == 0
    )
    with (resumed / "control_curve.csv").open("a") as f:
        f.write("6,0.9,0.9,0.9,0.9,0.9,,,4,1.0\n")
    assert train_main(_args(toy_data, resumed, base, *common, "--eval-every", "2", "--resume-from", "last")) == 0
    assert _without_time(read_curve(resumed)) == _without_time(read_curve(straight))
    assert [r["step"] for r in read_curve(resumed)] == [0, 2, 4, 6, 8]
    final = [load_file(run / "control.safetensors") for run in (straight, resumed)]
    assert all(torch.equal(final[0][k], final[1][k]) for k in final[0]), "the resume is not bit-exact"


def test_best_holds_the_controlnet_of_the_highest_exact_f1_in_both_layouts(toy_data, tmp_path, base):
    run = tmp_path / "run"
    assert (
        train_main(
            _args(
                toy_data, run, base, "--max-steps", "6", "--eval-every", "2", "--ckpt-every", "2", "--keep-last", "10"
            )
        )
        == 0
    )
    rows = read_curve(run)
    best = max(rows, key=lambda r: r["edge_f1"])  # the first of equal maxima, as the monitor keeps it
    saved = json.loads((run / "best" / "best.json").read_text())
    assert saved == {"step": best["step"], "edge_f1": best["edge_f1"]}
    ours = load_file(run / "best" / "control.safetensors")
    if best["step"] > 0:  # the ControlNet of that step is the checkpoint's
        ckpt = torch.load(run / "checkpoints" / f"step-{best['step']:07d}.ckpt", weights_only=True)["state_dict"]
        assert all(torch.equal(ours[k], ckpt[k]) for k in ours)
    assert (run / "best" / "control_diffusers" / "config.json").is_file()
    summary = json.loads((run / "summary.json").read_text())["control"]
    assert summary["best_step"] == best["step"] and summary["evals"] == len(rows) == 4
    assert (run / "control_curve.png").stat().st_size > 0
    assert sorted(p.name for p in (run / "control_monitor").iterdir()) == [f"step-{s:07d}.png" for s in (0, 2, 4, 6)]


def test_early_stop_ends_the_run_after_k_evals_without_a_gain(toy_data, tmp_path, base):
    run = tmp_path / "run"
    args = _args(toy_data, run, base, "--max-steps", "40", "--eval-every", "2", "--early-stop-patience", "1")
    assert train_main(args) == 0
    f1 = [r["edge_f1"] for r in read_curve(run)]
    # It stops at the first eval that does not beat the best before it, and not earlier.
    first_without_gain = next(i for i in range(1, len(f1)) if f1[i] <= max(f1[:i]))
    assert len(f1) == first_without_gain + 1 < 21, f1
    assert json.loads((run / "summary.json").read_text())["control"]["stopped_early"] is True


def test_a_damaged_held_out_pair_stops_the_run_before_step_one(toy_data, tmp_path, base, capsys):
    data = tmp_path / "data"
    shutil.copytree(toy_data, data)
    first = json.loads((data / "prompt_val.json").read_text().splitlines()[0])
    (data / first["target"]).write_bytes(b"not a png")
    assert train_main(_args(data, tmp_path / "run", base, "--max-steps", "2")) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err and "held-out" in err and first["target"] in err
    assert "--eval-every 0" in err and not (tmp_path / "run" / "checkpoints").exists()
    (data / "prompt_val.json").unlink()
    assert train_main(_args(data, tmp_path / "run", base, "--max-steps", "2")) == 2
    assert "prompt_val.json" in capsys.readouterr().err
    assert train_main(_args(data, tmp_path / "run", base, "--max-steps", "2", "--eval-every", "0")) == 0


def test_csv_and_offline_wandb_loggers_receive_the_scores(toy_data, tmp_path, base, monkeypatch):
    run = tmp_path / "csv"
    assert train_main(_args(toy_data, run, base, "--max-steps", "2", "--eval-every", "2", "--logger", "csv")) == 0
    with next(run.glob("lightning_logs/*/metrics.csv")).open() as f:
        logged = [r for r in csv.DictReader(f) if r.get("control/edge_f1")]
    assert [float(r["control/edge_f1"]) for r in logged] == [r["edge_f1"] for r in read_curve(run)]
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = tmp_path / "wandb"
    assert train_main(_args(toy_data, run, base, "--max-steps", "2", "--eval-every", "2", "--logger", "wandb")) == 0
    offline = list((run / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(offline) == 1 and offline[0].stat().st_size > 0
    record = json.loads((run / "run.json").read_text())
    assert record["run_id"][:12] in offline[0].name  # a resume appends to the same W&B run


def test_wandb_without_the_package_is_one_line(toy_data, tmp_path, base, capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    assert train_main(_args(toy_data, tmp_path / "run", base, "--logger", "wandb")) == 2
    assert "pip install wandb" in capsys.readouterr().err
    assert os.path.exists(tmp_path) and not (tmp_path / "run").exists()


def _score_on_rank(rank: int, world_size: int, port: int, data: str, out: str) -> None:
    """One gloo rank: the monitor's scoring of its share, gathered; rank 0 saves what every rank got."""
    from cldm.loading import create_model
    from evaluation.evaluate_control import EvalSettings, evaluate
    from training.control_monitor import gather_scores

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world_size)
    torch.set_num_threads(1)
    try:
        model = _model_that_follows_something(create_model)
        settings = EvalSettings(n=5, steps=2, batch_size=2)
        scores = evaluate(
            model,
            data,
            (1.0, 0.0),
            settings=settings,
            rank=rank,
            world_size=world_size,
            gather=gather_scores,
            progress=False,
        )
        torch.save(scores, f"{out}/rank{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


def _model_that_follows_something(create_model):
    torch.manual_seed(0)
    model = create_model(TINY)
    with torch.no_grad():  # an output layer that is not zero, and a ControlNet that adds something
        for p in [*model.model.diffusion_model.out.parameters(), *model.control_model.zero_convs.parameters()]:
            p.normal_(std=0.5)
    return model.eval()


@pytest.mark.distributed
def test_two_gloo_ranks_score_the_held_out_set_as_one_process_does(toy_data, tmp_path):
    import socket

    import torch.multiprocessing as mp

    from cldm.loading import create_model
    from evaluation.evaluate_control import EvalSettings, evaluate
    from pairs.prompt_file import read_prompt_file, write_prompt_file

    data = tmp_path / "data"  # 5 held-out pairs: 3 batches of 2, so rank 0 samples 2 batches and rank 1 one
    data.mkdir()
    for folder in ("source", "target"):
        shutil.copytree(toy_data / folder, data / folder)  # a copy: a symbolic link out of the folder is refused
    rows = read_prompt_file(toy_data / "prompt_val.json") + read_prompt_file(toy_data / "prompt.json")[:3]
    write_prompt_file(data / "prompt_val.json", rows)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_score_on_rank, args=(2, port, str(data), str(tmp_path)), nprocs=2, join=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each rank runs: thread count can change a convolution's last bits
    try:
        one = evaluate(
            _model_that_follows_something(create_model),
            data,
            (1.0, 0.0),
            settings=EvalSettings(n=5, steps=2, batch_size=2),
            progress=False,
        )
    finally:
        torch.set_num_threads(threads)
    assert torch.load(tmp_path / "rank0.pt") == one == torch.load(tmp_path / "rank1.pt")
    assert one["1"]["n"] == 5 and one["1"] != one["0"]
