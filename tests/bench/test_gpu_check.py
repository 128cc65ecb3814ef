"""bench.gpu_check: the CPU mode runs every section on the tiny config; its checks can fail; its arithmetic."""

import json

import pytest
import torch
from repo_paths import TINY_CONFIG as TINY

import bench.gpu_check.correctness as correctness
from bench.gpu_check.environment import known_peak
from bench.gpu_check.report import main
from bench.gpu_check.training_cost import training_row


@pytest.mark.slow
def test_cpu_mode_runs_every_section_and_passes(tmp_path, capsys):
    out = tmp_path / "check.json"
    assert main(["--config", str(TINY), "--device", "cpu", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    rows = report["rows"]
    assert {r["section"] for r in rows} == {"environment", "correctness", "training", "sampling", "script"}
    assert report["failed"] == 0 and all(r["passed"] for r in rows if r["section"] in ("correctness", "script"))
    training = [r for r in rows if r["section"] == "training"]
    # Checkpointing on and off, each at --batch and at the largest batch up to --max-batch (4 on CPU by default).
    assert sorted((r["name"].split(", batch")[0], r["data"]["batch"]) for r in training) == sorted(
        (f"bf16-mixed, frozen bf16, checkpointing {c}", b) for c in ("on", "off") for b in (2, 4)
    )
    assert all(r["data"]["flops_per_sample"] > 0 and r["data"]["tflops"] > 0 for r in training)
    assert "all checks passed" in capsys.readouterr().out


def test_a_failed_check_is_reported_and_sets_the_exit_code(monkeypatch, capsys):
    monkeypatch.setattr(correctness, "BF16_TOLERANCE", 0.0)  # bf16 can never be that close to fp32
    code = main(["--config", str(TINY), "--device", "cpu", "--skip", "training", "sampling", "script"])
    printed = capsys.readouterr().out
    assert code == 1 and "FAILED" in printed and "1 check(s) failed" in printed
    assert "zero-conv identity" in printed


def test_throughput_arithmetic_and_known_peaks():
    row = training_row("training", "x", batch=2, seconds=1.0, memory=3.0, flops_per_sample=10**12, peak=4.0)
    assert row.data["tflops"] == pytest.approx(2.0) and row.data["mfu"] == pytest.approx(0.5)
    assert row.data["samples_per_second"] == 2.0 and "MFU 50.0%" in row.value
    assert known_peak("NVIDIA H100 80GB HBM3") == 989.0 and known_peak("NVIDIA H100 PCIe") == 756.0
    assert known_peak("NVIDIA A100-SXM4-80GB") == 312.0 and known_peak("NVIDIA A10G") == 70.0
    assert known_peak("NVIDIA L40") == 181.0 and known_peak("Some Future GPU") is None


@pytest.mark.gpu
def test_cuda_checks_pass_on_the_tiny_config(tmp_path):
    assert torch.cuda.is_available()
    assert (
        main(["--config", str(TINY), "--device", "cuda", "--max-batch", "16", "--json", str(tmp_path / "c.json")]) == 0
    )
