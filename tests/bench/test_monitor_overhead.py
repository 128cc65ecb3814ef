"""bench/monitor_overhead.py: both runs train, the monitored one evaluates at the interval asked, and the figures print."""

import re

from repo_paths import TINY_CONFIG

from bench.monitor_overhead import main


def test_it_times_both_runs_and_counts_the_evals(toy_data, base, capsys):
    flags = ["--config", str(TINY_CONFIG), "--data", str(toy_data), "--init", str(base), "--batch-size", "2"]
    assert main([*flags, "--max-steps", "4", "--eval-every", "2", "--eval-n", "2"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"run without the monitor: [\d.]+ s; with it: [\d.]+ s", out), out
    assert "evals: 3 rows (2 sampled after step 0)" in out and "of the run without it" in out
