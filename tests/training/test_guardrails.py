"""Guardrails against a run that trains nothing, or trains on into NaN."""

from __future__ import annotations

import csv
from types import SimpleNamespace

import pytest
import pytorch_lightning as pl
import torch
from repo_paths import TINY_CONFIG as TINY

from cldm.weights import load_state_dict
from training.checkpoint import PeriodicCheckpoint
from training.data.dataset import PairDataset
from training.data.loader import make_train_loader
from training.guardrails import LearningCheck, TrainingStalled
from training.run_events import RunEvents
from tutorial_train import main as train_main


def _args(data, out, init, *extra):
    return [
        *("--config", str(TINY), "--data", str(data), "--output", str(out), "--init", str(init)),
        *("--batch-size", "2", "--workers", "0", "--eval-every", "0", *extra),
    ]


def test_an_initial_checkpoint_without_pretrained_sd_is_stopped_after_one_step(toy_data, tmp_path, tiny_model, capsys):
    init = tmp_path / "init.ckpt"  # a fresh model: its UNet's output layer is zero, so no gradient flows
    torch.save({"state_dict": tiny_model.state_dict()}, init)
    assert train_main(_args(toy_data, tmp_path / "run", init, "--max-steps", "5", "--ckpt-every", "1")) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err and "no gradient reached the ControlNet" in err
    assert "tool_add_control.py" in err
    # Stopped before the first checkpoint (RunEvents checks learning first): nothing was saved from a run that learns nothing.
    assert not list((tmp_path / "run").glob("checkpoints/*.ckpt"))


def test_weights_that_do_not_change_stop_the_run_naming_the_learning_rate(toy_data, build_tiny, base):
    model = build_tiny()
    model.learning_rate = 0.0  # refused by the constructor and the command line; reachable from Python
    model.load_state_dict(load_state_dict(base), strict=False)
    loader = make_train_loader(
        PairDataset(toy_data), batch_size=2, seed=0, start_sample=0, rank=0, world_size=1, workers=0
    )
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=3,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        use_distributed_sampler=False,
        callbacks=[RunEvents(learning=LearningCheck(expect_gradient=True, log_every=1))],
    )
    with pytest.raises(TrainingStalled, match="learning rate is 0"):
        trainer.fit(model, train_dataloaders=loader)
    assert trainer.global_step == 1


def test_the_gradient_and_zero_conv_norms_are_logged(toy_data, tmp_path, base):
    run = tmp_path / "run"
    assert train_main(_args(toy_data, run, base, "--max-steps", "3", "--logger", "csv", "--logger-freq", "1")) == 0
    with next(run.glob("lightning_logs/*/metrics.csv")).open() as f:
        rows = list(csv.DictReader(f))
    grad = [float(r["train/control_grad_norm"]) for r in rows if r.get("train/control_grad_norm")]
    zero = [float(r["train/zero_conv_norm"]) for r in rows if r.get("train/zero_conv_norm")]
    assert len(grad) == 3 and all(g > 0 for g in grad)
    assert zero and all(z > 0 for z in zero)  # the zero convolutions have left zero after the first step


def test_weights_holding_nan_are_never_checkpointed(tmp_path, tiny_model):
    folder = tmp_path / "checkpoints"
    periodic = PeriodicCheckpoint(folder, every=1, keep=2, config={}, record=None)
    with torch.no_grad():
        next(tiny_model.control_model.parameters()).view(-1)[0] = float("nan")
    with pytest.raises(FloatingPointError, match="NaN or inf at step 3.*not written.*--resume-from last"):
        periodic.save(SimpleNamespace(global_step=3), tiny_model)
    assert not folder.exists() or not list(folder.iterdir())
