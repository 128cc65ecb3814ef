"""bench/train_step.py: it runs every saver together on the tiny config and reports build and step peaks."""

import re

import numpy as np
import pytest
import torch

from bench.train_step import parse_args, peak_rss_gb, reset_peak_memory, run_benchmark


def test_reset_peak_memory_forgets_an_earlier_spike():
    if not reset_peak_memory("cpu"):
        pytest.skip("this kernel does not allow resetting VmHWM")
    base = peak_rss_gb()
    spike = np.ones(400 * 1024**2 // 8)  # 400 MB, written, so resident
    assert peak_rss_gb() > base + 0.35
    del spike
    assert peak_rss_gb() > base + 0.35  # a high-water mark stays up after the memory is freed...
    assert reset_peak_memory("cpu")
    assert peak_rss_gb() < base + 0.1  # ...until it is reset


def test_every_saver_at_once_builds_and_steps_the_model_as_training_does(repo_root, capsys):
    model, optimizer = run_benchmark(
        parse_args(
            [
                "--config",
                str(repo_root / "models/cldm_tiny.yaml"),
                "--resolution",
                "64",
                "--steps",
                "1",
                "--precision",
                "bf16-mixed",
                "--frozen-dtype",
                "bfloat16",
                "--optimizer-states",
                "bfloat16",
                "--gradient-release",
                "--device",
                "cpu",
            ]
        )
    )
    assert {p.dtype for p in model.model.diffusion_model.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in model.control_model.parameters()} == {torch.float32}
    # Gradient release stepped every ControlNet tensor inside backward: bf16 moments, two steps, no gradient left.
    states = [optimizer.state[p] for p in model.control_model.parameters()]
    assert all(s["exp_avg"].dtype == torch.bfloat16 and int(s["step"]) == 2 for s in states)
    assert all(p.grad is None for p in model.control_model.parameters())
    out = capsys.readouterr().out
    stages = re.search(
        r"step [\d.]+ s \(median of 1: forward ([\d.]+) \[VAE encode ([\d.]+), text encode ([\d.]+), "
        r"ControlNet ([\d.]+), UNet ([\d.]+), VAE decode ([\d.]+)\], backward [\d.]+, optimizer [\d.]+\)",
        out,
    )
    assert stages, out
    forward, *parts, decode = map(float, stages.groups())
    assert all(t > 0 for t in parts) and sum(parts) <= forward + 0.005  # the parts lie inside the forward
    assert decode == 0.0  # no reward: the decoder never runs in the step


def test_the_reward_step_decodes_in_its_forward(repo_root, capsys):
    config = ["--config", str(repo_root / "models/cldm_tiny.yaml"), "--resolution", "64", "--steps", "1"]
    run_benchmark(parse_args([*config, "--device", "cpu", "--reward-weight", "1", "--reward-max-t", "999"]))
    out = capsys.readouterr().out
    assert "reward_weight=1.0" in out, out
    decode = re.search(r"VAE decode ([\d.]+)\]", out)
    assert decode and float(decode.group(1)) > 0, out
