"""Every command line takes its flags from the settings dataclasses (ldm/flags.py), and its --help shows each
default as the chosen config resolves it; --print-config prints the resolved settings and writes nothing."""

import subprocess
import sys

import pytest
from omegaconf import OmegaConf
from repo_paths import ROOT, TINY_CONFIG, TOY_CONFIG

from cldm.loading import load_config


def _help(*command: str) -> str:
    out = subprocess.run([sys.executable, *command, "--help"], cwd=ROOT, capture_output=True, text=True, check=True)
    return " ".join(out.stdout.split())  # argparse's wrapping undone


@pytest.mark.slow
@pytest.mark.parametrize(
    "command, shown",
    [
        (
            ("tutorial_train.py",),
            ["--max-steps MAX_STEPS optimizer steps to train (default: 2400)", "(default: 0.002)"],
        ),
        (
            ("tutorial_train.py", "--config", "models/cldm_v15.yaml"),
            ["optimizer steps to train (default: 10000)", "(default: models/v1-5-pruned.ckpt)"],
        ),
        (("tool_eval_control.py",), ["--n N held-out pairs to evaluate (default: 32)", "--scale GUIDANCE_SCALE"]),
        (("gradio_canny2image.py",), ['--a-prompt A_PROMPT added prompt (default: "")', "DDIM steps (default: 20)"]),
        (
            ("gradio_canny2image.py", "--config", str(TINY_CONFIG)),
            ["added prompt (default: best quality, extremely detailed)"],
        ),
        (("tool_add_control.py",), ["--seed SEED", "(default: 0)", "--control-from CONTROL_FROM"]),
        (
            ("-m", "bench.train_step"),
            ["--precision {32,16-mixed,bf16-mixed}", "(default: bf16-mixed)", "--cache-latents"],
        ),
    ],
)
def test_help_shows_the_defaults_the_config_resolves(command, shown):
    text = _help(*command)
    for piece in shown:
        assert piece in text, piece


def test_print_config_prints_the_resolved_settings_and_writes_nothing(tmp_path):
    out = tmp_path / "never"
    command = [sys.executable, "tutorial_train.py", "--print-config", "--max-steps", "7", "--output", str(out)]
    printed = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True).stdout
    resolved = OmegaConf.to_container(OmegaConf.create(printed))
    assert resolved["training"]["max_steps"] == 7 and resolved["training"]["eval_n"] == 16  # a flag, the toy YAML
    assert resolved["training"]["early_stop_patience"] == 0  # from the shared training_defaults.yaml
    assert resolved["model"]["params"]["learning_rate"] == 2.0e-3 and "extends" not in resolved
    assert not out.exists()


def test_each_config_keeps_only_what_differs_from_the_shared_recipe(tmp_path):
    shared = OmegaConf.to_container(OmegaConf.load(ROOT / "models" / "training_defaults.yaml"))["training"]
    for name in ("cldm_tiny.yaml", "cldm_toy.yaml", "cldm_v15.yaml", "cldm_v21.yaml"):
        own = OmegaConf.to_container(OmegaConf.load(ROOT / "models" / name))["training"]
        assert all(own[k] != shared[k] for k in own), name  # nothing repeated
        assert set(load_config(ROOT / "models" / name)["training"]) == set(shared)
    broken = tmp_path / "mine.yaml"
    broken.write_text("extends: nowhere.yaml\nmodel: {target: x}\n")
    with pytest.raises(FileNotFoundError, match="nowhere.yaml"):
        load_config(broken)


def test_the_demos_batch_mode_takes_its_defaults_from_the_config(tmp_path):
    config = load_config(TOY_CONFIG)
    config.pop("training")
    config["demo"] = {"ddim_steps": 2, "seed": 5, "a_prompt": ""}
    OmegaConf.save(OmegaConf.create(config), tmp_path / "demo.yaml")
    text = _help("gradio_canny2image.py", "--config", str(tmp_path / "demo.yaml"))
    assert "DDIM steps (default: 2)" in text and "seed (-1: random) (default: 5)" in text
