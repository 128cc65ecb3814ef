"""tutorial_train.py end to end on the tiny config (CPU): fit, resume after SIGKILL, DDP, bad input."""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from fill50k import write_fill50k_like
from repo_paths import ROOT
from repo_paths import TINY_CONFIG as TINY
from safetensors.torch import load_file
from train_args import tiny_args

from annotator.canny import CannyThresholds
from cldm.edge_record import recorded_thresholds
from cldm.loading import create_model
from cldm.weights import load_state_dict
from pairs.prompt_file import read_prompt_file
from training.checkpoint import list_checkpoints
from training.control_curve import BASELINE_FILE, read_curve
from training.data.toy_data import write_toy_dataset
from tutorial_train import main


@pytest.fixture
def _args(base):
    def build(toy_data: Path, out: Path, *extra: str) -> list[str]:
        return tiny_args(toy_data, out, *extra, init=base)

    return build


def _run(args: list[str], **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(ROOT / "tutorial_train.py"), *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **kwargs,
    )


def test_few_step_fit_writes_loadable_checkpoints(toy_data, tmp_path, capsys, _args, base):
    out = tmp_path / "run"
    assert main(_args(toy_data, out, "--max-steps", "3", "--ckpt-every", "2", "--logger-freq", "3")) == 0
    ckpts = sorted((out / "checkpoints").glob("step-*.ckpt"))
    assert [p.name for p in ckpts] == ["step-0000002.ckpt", "step-0000003.ckpt"]
    ckpt = torch.load(ckpts[-1], weights_only=True)
    assert ckpt["global_step"] == 3 and ckpt["optimizer_states"] and "cutenet_config" in ckpt
    assert ckpt["state_dict"] and all(k.startswith("control_model.") for k in ckpt["state_dict"])
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values())
    control = load_file(str(out / "control.safetensors"))
    model = create_model(ROOT / "models/cldm_tiny.yaml")
    model.load_state_dict({**load_state_dict(base), **control}, strict=True)
    assert torch.equal(
        model.control_model.zero_convs[0][0].weight, ckpt["state_dict"]["control_model.zero_convs.0.0.weight"]
    )
    assert any(v.abs().sum() > 0 for k, v in control.items() if "zero_convs" in k)  # training moved the zero convs
    assert sorted(p.name.split("_gs")[0] for p in (out / "image_log/train").glob("*.png")) == [
        "conditioning",
        "control",
        "reconstruction",
        "samples_cfg_scale_9.00",
    ]
    assert "control.safetensors" in capsys.readouterr().out


def test_data_made_at_other_thresholds_is_scored_and_exported_at_them(tmp_path, _args):
    at = CannyThresholds(50, 150)
    data = write_toy_dataset(tmp_path / "data", n=8, thresholds=at)
    out = tmp_path / "run"
    assert main(_args(data, out, "--max-steps", "2", "--ckpt-every", "2", "--eval-every", "2", "--eval-n", "1")) == 0
    baseline = json.loads((out / BASELINE_FILE).read_text())
    assert baseline["key"]["eval"]["thresholds"] == {"low": 50, "high": 150}  # what the monitor scored with
    for exported in ("control.safetensors", "control_diffusers", "best/control.safetensors", "best/control_diffusers"):
        assert recorded_thresholds(out / exported) == at, exported
    ckpt = torch.load(out / "checkpoints" / "step-0000002.ckpt", weights_only=True)
    assert ckpt["cutenet_config"]["canny_thresholds"] == {"low": 50, "high": 150}


def test_a_diffusers_user_trains_on_a_fill50k_layout_with_one_command(tmp_path, _args):
    src, rows = write_fill50k_like(tmp_path / "fill50k", n=8)
    out = tmp_path / "run"
    assert main(_args(src, out, "--max-steps", "2", "--eval-every", "2", "--eval-n", "1", "--ckpt-every", "2")) == 0
    imported = read_prompt_file(out / "data" / "prompt.json") + read_prompt_file(out / "data" / "prompt_val.json")
    assert sorted(r["prompt"] for r in imported) == sorted(r["text"] for r in rows)
    assert (out / "control.safetensors").is_file() and read_curve(out)  # trained, and the monitor scored it
    # Going on finds the same import (the folder's record matches the dataset): no second copy, the same data.
    assert main(_args(src, out, "--max-steps", "3", "--resume-from", "last", "--eval-every", "2", "--eval-n", "1")) == 0


@pytest.mark.slow
def test_resume_after_sigkill_matches_an_uninterrupted_run(toy_data, tmp_path, _args):
    common = ["--max-steps", "8", "--ckpt-every", "3", "--seed", "5"]
    straight = _run(_args(toy_data, tmp_path / "straight", *common))
    assert straight.wait(timeout=600) == 0, straight.stdout.read()
    killed = tmp_path / "killed"
    proc = _run(_args(toy_data, killed, *common))
    deadline = time.time() + 300
    while not (killed / "checkpoints" / "step-0000003.ckpt").exists():
        assert proc.poll() is None and time.time() < deadline, "run ended before its first checkpoint"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "checkpoints" / "step-0000006.ckpt").exists(), "killed too late to test a resume"
    resumed = _run(_args(toy_data, killed, *common, "--resume-from", "last"))
    assert resumed.wait(timeout=600) == 0, resumed.stdout.read()
    final = [
        torch.load(run / "checkpoints/step-0000008.ckpt", weights_only=True) for run in (tmp_path / "straight", killed)
    ]
    assert final[0]["global_step"] == final[1]["global_step"] == 8
    for key, value in final[0]["state_dict"].items():
        assert torch.equal(value, final[1]["state_dict"][key]), key


@pytest.mark.slow
def test_a_stop_signal_saves_requeues_and_the_resume_matches_an_uninterrupted_run(toy_data, tmp_path, _args):
    common = ["--max-steps", "20", "--ckpt-every", "3", "--seed", "6"]
    straight = _run(_args(toy_data, tmp_path / "straight", *common))
    assert straight.wait(timeout=600) == 0, straight.stdout.read()
    # A stand-in for SLURM's scontrol that records how it was called.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text(f'#!/bin/sh\necho "$@" > {tmp_path / "scontrol.log"}\n')
    (bin_dir / "scontrol").chmod(0o755)
    env = {**os.environ, "SLURM_JOB_ID": "42", "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    stopped = tmp_path / "stopped"
    proc = _run(_args(toy_data, stopped, *common, "--slurm-requeue"), env=env)
    deadline = time.time() + 300
    while not (stopped / "checkpoints" / "step-0000003.ckpt").exists():
        assert proc.poll() is None and time.time() < deadline, "run ended before its first checkpoint"
        time.sleep(0.05)
    proc.send_signal(signal.SIGUSR1)
    output = proc.communicate(timeout=300)[0]
    assert proc.returncode == 128 + signal.SIGUSR1, output
    saved = list_checkpoints(stopped / "checkpoints")[-1]
    step = torch.load(saved, weights_only=True, mmap=True)["global_step"]
    assert 3 <= step < 20, "signalled too late to test a resume"
    assert "stopped by SIGUSR1" in output and saved.name in output
    assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", "42"]
    resumed = _run(_args(toy_data, stopped, *common, "--resume-from", "last"))
    assert resumed.wait(timeout=600) == 0, resumed.stdout.read()
    final = [
        torch.load(run / "checkpoints/step-0000020.ckpt", weights_only=True) for run in (tmp_path / "straight", stopped)
    ]
    for key, value in final[0]["state_dict"].items():
        assert torch.equal(value, final[1]["state_dict"][key]), key


@pytest.mark.slow
def test_sigterm_saves_and_exits_non_zero(toy_data, tmp_path, _args):
    out = tmp_path / "run"
    proc = _run(_args(toy_data, out, "--max-steps", "200", "--ckpt-every", "2"))
    deadline = time.time() + 300
    while not (out / "checkpoints" / "step-0000002.ckpt").exists():
        assert proc.poll() is None and time.time() < deadline, "run ended before its first checkpoint"
        time.sleep(0.05)
    proc.terminate()  # SIGTERM, as SLURM and torchrun send it
    output = proc.communicate(timeout=300)[0]
    assert proc.returncode == 128 + signal.SIGTERM, output
    saved = list_checkpoints(out / "checkpoints")[-1]
    assert f"stopped by SIGTERM at step {int(saved.stem.split('-')[1])}" in output


@pytest.mark.distributed
@pytest.mark.slow
def test_ddp_two_cpu_processes(toy_data, tmp_path, _args):
    out = tmp_path / "ddp"
    proc = _run(
        _args(
            toy_data,
            out,
            "--max-steps",
            "3",
            "--ckpt-every",
            "3",
            "--logger-freq",
            "3",
            "--devices",
            "2",
            "--accelerator",
            "cpu",
            "--strategy",
            "ddp",
            "--log-samples",
        )
    )
    output = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, output
    seen = [[int(x) for x in (out / f"samples/rank{r}.txt").read_text().split()] for r in (0, 1)]
    assert len(seen[0]) == len(seen[1]) == 6 and not set(seen[0]) & set(seen[1])
    # Every rank ends with the same ControlNet: the saved weights are rank 0's; rank 1 reports its own checksum.
    assert output.count("trained to step 3") == 1  # only rank 0 reports and writes
    assert len(list((out / "checkpoints").glob("*.ckpt"))) == 1
    assert len(list((out / "image_log/train").glob("*.png"))) == 4
    # The monitor ran on both ranks (they gather its scores) and rank 0 wrote one curve: the start and the end.
    assert [r["step"] for r in read_curve(out)] == [0, 3]
    # Searched anywhere, not per line: rank 1 prints into the same pipe as rank 0's progress bar.
    checksums = dict(re.findall(r"control checksum rank (\d): (\S+)", output))
    assert sorted(checksums) == ["0", "1"] and checksums["0"] == checksums["1"], output


def test_bad_input_gives_one_clear_line(toy_data, tmp_path, _args, capsys):
    cases = [
        (["--data", str(tmp_path / "missing")], "does not exist"),
        (["--init", str(tmp_path / "nope.ckpt")], "does not exist"),
    ]
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "prompt.json").write_text('{"source": "source/a.png", "target": "target/a.png", "prompt": "x"}\n')
    cases.append((["--data", str(broken)], "source/a.png"))
    other = create_model(ROOT / "models/cldm_tiny.yaml").state_dict()
    other["control_model.input_hint_block.0.weight"] = torch.zeros(16, 4, 3, 3)
    torch.save({"state_dict": other}, tmp_path / "other.ckpt")
    cases.append((["--init", str(tmp_path / "other.ckpt")], "shape mismatches"))
    for extra, message in cases:
        assert main(_args(toy_data, tmp_path / "out", *extra) + ["--max-steps", "1"]) == 2  # raises nothing
        err = capsys.readouterr().err.strip()
        assert message in err and err.startswith("error:") and err.count("\n") == 0, err
    assert not (tmp_path / "out").exists()


def test_bad_pairs_stop_the_run_before_training_or_are_left_out_with_skip_bad(toy_data, tmp_path, _args, capsys):
    data = tmp_path / "data"
    shutil.copytree(toy_data, data)
    rows = read_prompt_file(data / "prompt.json")
    (data / rows[5]["target"]).write_bytes((data / rows[5]["target"]).read_bytes()[:-100])
    (data / rows[9]["source"]).write_text("garbage")
    out = tmp_path / "out"
    assert main(_args(data, out, "--max-steps", "1")) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: 2 of 46 pairs") and "--skip-bad" in err and rows[5]["target"] in err
    assert err.count("\n") == 0 and not out.exists()
    assert main(_args(data, out, "--max-steps", "1", "--skip-bad")) == 0
    skipped = (out / "skipped_pairs.tsv").read_text().splitlines()
    assert skipped[0] == "source\ttarget\treason" and [line.split("\t")[0] for line in skipped[1:]] == [
        rows[5]["source"],
        rows[9]["source"],
    ]


def test_last_falls_back_to_the_newest_intact_checkpoint(toy_data, tmp_path, _args, caplog, capsys):
    out = tmp_path / "run"
    assert main(_args(toy_data, out, "--max-steps", "4", "--ckpt-every", "2")) == 0
    newest = out / "checkpoints/step-0000004.ckpt"
    newest.write_bytes(newest.read_bytes()[:1000])  # cut short, as by a crash while it was written
    assert main(_args(toy_data, out, "--resume-from", str(newest), "--max-steps", "6")) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --resume-from:") and "step-0000004.ckpt cannot be read" in err
    with caplog.at_level("WARNING"):
        assert main(_args(toy_data, out, "--resume-from", "last", "--max-steps", "6", "--ckpt-every", "2")) == 0
    assert "skipping step-0000004.ckpt" in caplog.text and "resuming from step-0000002.ckpt" in caplog.text
    assert torch.load(out / "checkpoints/step-0000006.ckpt", weights_only=True)["global_step"] == 6


def test_fresh_start_saves_its_initial_weights(toy_data, tmp_path):
    out = tmp_path / "fresh"
    args = [
        "--config",
        str(TINY),
        "--data",
        str(toy_data),
        "--output",
        str(out),
        "--batch-size",
        "2",
        "--max-steps",
        "1",
        "--init",
        "none",
    ]
    assert main(args) == 0
    init = load_state_dict(out / "init.safetensors")
    assert any(k.startswith("model.diffusion_model.") for k in init)


def test_missing_initial_checkpoint_is_made_from_the_base(toy_data, tmp_path, base):
    init = tmp_path / "made" / "init.safetensors"
    args = [
        "--config",
        str(TINY),
        "--data",
        str(toy_data),
        "--output",
        str(tmp_path / "run"),
        "--batch-size",
        "2",
        "--max-steps",
        "1",
        "--init",
        str(init),
        "--base",
        str(base),
    ]
    assert main(args) == 0
    made, sd = load_state_dict(init), load_state_dict(base)
    # The trainable copy starts as the UNet encoder (tool_add_control.py's mapping), the SD part as the base.
    key = "input_blocks.1.0.in_layers.2.weight"
    assert torch.equal(made[f"control_model.{key}"], sd[f"model.diffusion_model.{key}"])
    assert torch.equal(made["model.diffusion_model.out.2.weight"], sd["model.diffusion_model.out.2.weight"])
    assert not made["control_model.zero_convs.0.0.weight"].any()


def test_a_missing_base_is_one_clear_line(toy_data, tmp_path, capsys):
    args = [
        "--config",
        str(TINY),
        "--data",
        str(toy_data),
        "--output",
        str(tmp_path / "run"),
        "--max-steps",
        "1",
        "--init",
        str(tmp_path / "init.safetensors"),
        "--base",
        str(tmp_path / "v1-5-pruned.ckpt"),
    ]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "v1-5-pruned.ckpt does not exist" in err and err.count("\n") == 0


def test_gradient_release_trains_like_plain_adamw(toy_data, tmp_path, _args):
    common = ["--max-steps", "3", "--ckpt-every", "3", "--optimizer-states", "float32"]
    assert main(_args(toy_data, tmp_path / "plain", *common)) == 0
    assert main(_args(toy_data, tmp_path / "release", *common, "--gradient-release")) == 0
    plain, release = (load_file(str(tmp_path / run / "control.safetensors")) for run in ("plain", "release"))
    for key, value in plain.items():
        torch.testing.assert_close(release[key], value, rtol=1e-4, atol=1e-6)
    assert any(v.abs().sum() > 0 for k, v in release.items() if "zero_convs" in k)  # it did step
    ckpt = torch.load(tmp_path / "release/checkpoints/step-0000003.ckpt", weights_only=True)
    assert ckpt["global_step"] == 3 and ckpt["optimizer_states"][0]["state"]


@pytest.mark.parametrize(
    "lever", [[], ["--gradient-release", "--optimizer-states", "float32"]], ids=["adamw", "gradient-release"]
)
def test_cosine_schedule_ends_at_zero_and_a_preempted_run_resumes_on_its_curve(toy_data, tmp_path, _args, lever):
    common = ["--max-steps", "6", "--ckpt-every", "3", "--seed", "3", "--lr", "1e-3", "--lr-schedule", "cosine"]
    straight = tmp_path / "straight"
    assert main(_args(toy_data, straight, *common, *lever)) == 0
    lr = {
        step: torch.load(straight / f"checkpoints/step-{step:07d}.ckpt", weights_only=True)["optimizer_states"][0][
            "param_groups"
        ][0]["lr"]
        for step in (3, 6)
    }
    assert lr[3] == pytest.approx(0.5e-3) and lr[6] == pytest.approx(0.0, abs=1e-12), lr  # half-way: cos(π/2)
    # The folder a run preempted after its step-3 checkpoint would leave.
    preempted = tmp_path / "preempted"
    shutil.copytree(straight, preempted)
    (preempted / "checkpoints/step-0000006.ckpt").unlink()
    (preempted / "control.safetensors").unlink()
    assert main(_args(toy_data, preempted, *common, *lever, "--resume-from", "last")) == 0
    ends = [load_file(str(run / "control.safetensors")) for run in (straight, preempted)]
    assert ends[0].keys() == ends[1].keys() and all(torch.equal(ends[0][k], ends[1][k]) for k in ends[0])


def test_gradient_release_refuses_accumulation(toy_data, tmp_path, _args, capsys):
    assert main(_args(toy_data, tmp_path / "run", "--max-steps", "1", "--gradient-release", "--accumulate", "2")) == 2
    assert "--gradient-release" in capsys.readouterr().err


def test_a_second_run_on_a_held_output_exits_2_naming_the_first(toy_data, tmp_path, _args, capsys):
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    out = tmp_path / "run"
    try:
        out.mkdir()
        (out / ".lock").write_text(f'{{"pid": {other.pid}, "host": "{socket.gethostname()}"}}')
        assert main(_args(toy_data, out, "--max-steps", "1")) == 2
    finally:
        other.kill()
        other.wait()
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {out} is in use by another run (pid {other.pid}") and err.count("\n") == 0
    assert sorted(p.name for p in out.iterdir()) == [".lock"]  # nothing of the first run was touched


def test_a_run_ends_with_a_diffusers_controlnet_and_the_export_tool_makes_the_same(toy_data, tmp_path, _args):
    from diffusers import ControlNetModel

    from tool_export_control import main as export

    out = tmp_path / "run"
    assert main(_args(toy_data, out, "--max-steps", "2")) == 0
    diffusers, info = ControlNetModel.from_pretrained(out / "control_diffusers", output_loading_info=True)
    assert not any(info.values()), info
    assert export([str(out), str(tmp_path / "again"), "--format", "diffusers"]) == 0
    assert (
        export([str(tmp_path / "again"), str(tmp_path / "ldm.safetensors"), "--format", "ldm", "--config", str(TINY)])
        == 0
    )
    ours, back = load_state_dict(out / "control.safetensors"), load_state_dict(tmp_path / "ldm.safetensors")
    assert ours.keys() == back.keys() and all(torch.equal(ours[k], back[k]) for k in ours)
    again = ControlNetModel.from_pretrained(tmp_path / "again")
    assert all(torch.equal(a, b) for a, b in zip(diffusers.state_dict().values(), again.state_dict().values()))


def test_control_from_starts_training_from_an_existing_diffusers_controlnet(toy_data, tmp_path, _args, tiny_model):
    from cldm.diffusers_io import save_diffusers_controlnet

    with torch.no_grad():
        for p in tiny_model.control_model.parameters():
            p.normal_(std=0.05)
    source = {k: v for k, v in tiny_model.state_dict().items() if k.startswith("control_model.")}
    save_diffusers_controlnet(tiny_model, tmp_path / "public_canny")
    out = tmp_path / "run"
    # A learning rate too small to move anything: the trained ControlNet is the one it started from.
    assert (
        main(
            _args(toy_data, out, "--max-steps", "1", "--lr", "1e-12", "--control-from", str(tmp_path / "public_canny"))
        )
        == 0
    )
    trained = load_state_dict(out / "control.safetensors")
    assert all(torch.allclose(trained[k], v, atol=1e-6) for k, v in source.items())


def _resume_matches_a_straight_run(toy_data, tmp_path, _args, *lever: str) -> dict[str, torch.Tensor]:
    """Six steps straight against three steps, then a resume to six: the same weights, bit for bit."""
    common = ["--ckpt-every", "3", "--seed", "3", *lever]
    assert main(_args(toy_data, tmp_path / "straight", *common, "--max-steps", "6")) == 0
    assert main(_args(toy_data, tmp_path / "parts", *common, "--max-steps", "3")) == 0
    assert main(_args(toy_data, tmp_path / "parts", *common, "--max-steps", "6", "--resume-from", "last")) == 0
    straight, parts = (load_file(str(tmp_path / run / "control.safetensors")) for run in ("straight", "parts"))
    assert straight.keys() == parts.keys()
    for key, value in straight.items():
        assert torch.equal(parts[key], value), key
    return straight


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """48 training pairs (and 2 held out) as 5 WebDataset shards of up to 10 pairs."""
    from training.data.shard_writer import write_shards
    from training.data.toy_data import write_toy_dataset

    folder = write_toy_dataset(tmp_path_factory.mktemp("toy50"), n=50, size=64, seed=1)
    out = tmp_path_factory.mktemp("shards")
    write_shards(folder, out, shard_size=10)
    return out


@pytest.mark.slow
def test_a_sharded_run_with_two_workers_resumes_bit_exactly(shards, tmp_path, _args):
    _resume_matches_a_straight_run(shards, tmp_path, _args, "--workers", "2", "--eval-every", "3", "--eval-n", "1")


def test_a_corrupt_sample_in_a_shard_stops_the_run_by_name_or_is_left_out_with_skip_bad(
    shards, tmp_path, _args, capsys
):
    import shutil

    from training.data.shard_dataset import ShardPairs

    data = tmp_path / "shards"
    shutil.copytree(shards, data)
    (data / "shard_index.npz").unlink(missing_ok=True)
    index = ShardPairs(data).index
    shard, offset = data / "pairs-000001.tar", int(index.offsets[12, 0])  # sample 12 lies in the second shard
    raw = bytearray(shard.read_bytes())
    raw[offset : offset + 16] = bytes(16)
    shard.write_bytes(bytes(raw))
    assert main(_args(data, tmp_path / "run", "--max-steps", "1", "--eval-every", "0")) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "pairs-000001.tar:000000012" in err and "--skip-bad" in err
    assert main(_args(data, tmp_path / "run", "--max-steps", "1", "--eval-every", "0", "--skip-bad")) == 0
    assert "pairs-000001.tar:000000012" in (tmp_path / "run" / "skipped_pairs.tsv").read_text()


def test_a_run_trains_on_shards_named_by_url(shards, tmp_path, _args):
    import functools
    import http.server
    import threading

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(shards))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)  # loopback only
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        spec = f"http://127.0.0.1:{server.server_address[1]}/pairs-{{000000..000004}}.tar"
        out = tmp_path / "run"
        assert main(_args(spec, out, "--max-steps", "1", "--eval-every", "1", "--eval-n", "1")) == 0
    finally:
        server.shutdown()
    assert len(list((out / "data").glob("*.tar"))) == 5 and read_curve(out)


@pytest.mark.slow
def test_s3_shards_train_and_resume_bit_exactly(shards, tmp_path, _args):
    """Against moto's S3 server on 127.0.0.1: the fetched shards train, and a resume ends bit-equal."""
    from s3_store import s3_store

    with s3_store("cutenet-train", shards) as base:
        weights = _resume_matches_a_straight_run(f"{base}/pairs-{{000000..000004}}.tar", tmp_path, _args)
    assert weights and sorted(p.name for p in (tmp_path / "parts" / "data").glob("*.tar")) == sorted(
        p.name for p in shards.glob("*.tar")
    )


@pytest.mark.distributed
@pytest.mark.slow
def test_sharded_ddp_covers_each_sample_once_an_epoch_and_resumes_bit_exactly(shards, tmp_path, _args):
    # 2 ranks × batch 2 = 4 samples a step: 12 steps are one epoch of the 48 pairs.
    ddp = ["--devices", "2", "--accelerator", "cpu", "--strategy", "ddp", "--workers", "2", "--eval-every", "0"]
    common = [*ddp, "--ckpt-every", "6", "--seed", "4", "--log-samples"]
    straight = _run(_args(shards, tmp_path / "straight", *common, "--max-steps", "12"))
    assert straight.wait(timeout=600) == 0, straight.stdout.read()
    seen = [[int(x) for x in (tmp_path / f"straight/samples/rank{r}.txt").read_text().split()] for r in (0, 1)]
    assert not set(seen[0]) & set(seen[1]) and sorted(seen[0] + seen[1]) == list(range(48))
    parts = _run(_args(shards, tmp_path / "parts", *common, "--max-steps", "6"))
    assert parts.wait(timeout=600) == 0, parts.stdout.read()
    resumed = _run(_args(shards, tmp_path / "parts", *common, "--max-steps", "12", "--resume-from", "last"))
    assert resumed.wait(timeout=600) == 0, resumed.stdout.read()
    a, b = (load_file(str(tmp_path / run / "control.safetensors")) for run in ("straight", "parts"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_adamw8bit_trains_near_adamw_and_resumes_exactly(toy_data, tmp_path, _args):
    eight_bit = _resume_matches_a_straight_run(toy_data, tmp_path / "8bit", _args, "--optimizer", "adamw8bit")
    ckpt = torch.load(tmp_path / "8bit/parts/checkpoints/step-0000006.ckpt", weights_only=True)
    moments = [s["exp_avg"] for s in ckpt["optimizer_states"][0]["state"].values()]
    # torchao quantises the moments of tensors of 4096 elements and more; the small ones stay fp32.
    large = [m for m in moments if m.numel() >= 4096]
    assert large and all(type(m).__name__ == "OptimState8bit" for m in large)
    assert main(_args(toy_data, tmp_path / "fp32", "--ckpt-every", "3", "--seed", "3", "--max-steps", "6")) == 0
    fp32 = load_file(str(tmp_path / "fp32/control.safetensors"))
    moved = [k for k in fp32 if "zero_convs" in k and fp32[k].abs().sum() > 0]
    assert moved  # both stepped; after six steps from the same start they stay close
    for key in moved:
        torch.testing.assert_close(eight_bit[key], fp32[key], rtol=0.1, atol=2e-4)


@pytest.mark.slow
@pytest.mark.xdist_group("inductor_tiny_training")  # the graphs of tests/cldm/test_compile.py, from inductor's cache
def test_compiled_training_resumes_exactly_and_writes_the_same_keys(toy_data, tmp_path, _args):
    # Without the monitor: its sampling would compile graphs of its own, and resuming is what this test checks.
    compiled = _resume_matches_a_straight_run(toy_data, tmp_path, _args, "--compile", "--eval-every", "0")
    assert compiled.keys() == load_file(str(tmp_path / "straight/control.safetensors")).keys()
    assert all(k.startswith("control_model.") and "_orig_mod" not in k for k in compiled)


@pytest.mark.gpu
def test_gpu_training_with_every_lever_on(toy_data, tmp_path, _args):
    levers = ["--accelerator", "gpu", "--devices", "1", "--precision", "bf16-mixed", "--frozen-dtype", "bfloat16"]
    levers += ["--checkpointing", "--compile", "--optimizer", "adamw8bit", "--max-steps", "3", "--ckpt-every", "3"]
    assert main(_args(toy_data, tmp_path / "run", *levers)) == 0
    control = load_file(str(tmp_path / "run/control.safetensors"))
    assert control and all(torch.isfinite(v).all() for v in control.values())
    assert any(v.abs().sum() > 0 for k, v in control.items() if "zero_convs" in k)
