"""bench/train_step.py: it runs every saver together on the tiny config and reports build and step peaks."""

import re

import numpy as np
import pytest

from bench.train_step import main, peak_rss_gb, reset_peak_memory


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


def test_every_saver_at_once_runs_and_prints_the_figures(capsys):
    main(["--config", "models/cldm_tiny.yaml", "--resolution", "64", "--steps", "1", "--precision", "bf16-mixed",
          "--frozen-dtype", "bfloat16", "--optimizer-states", "bfloat16", "--gradient-release", "--device", "cpu"])
    out = capsys.readouterr().out
    assert "gradient_release=True" in out and "optimizer_states=bfloat16" in out
    line = re.search(r"step ([\d.]+) s .* peak RSS ([\d.]+) GB \(build ([\d.]+) GB, steps ([\d.]+) GB\)", out)
    assert line, out
    step, peak, build, steps = map(float, line.groups())
    assert step > 0 and peak == max(build, steps) and build > 0
