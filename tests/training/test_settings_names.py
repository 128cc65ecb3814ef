"""One word, one meaning: `init` is the initial ControlLDM file and `base` the SD weights. The original tutorial's
`--resume` keeps working as an alias; this project's own older names (`--sd-base`, the YAML keys `resume` and
`sd_base`, a checkpoint's `base`) are refused with the rename or the step to take."""

import copy
from pathlib import Path

import pytest
from repo_paths import TINY_CONFIG

from cldm.loading import load_config
from training.resume import INIT_FILE, checkpoint_init
from training.settings import TrainSettings
from tutorial_train import parse_args


def test_the_tutorials_flag_sets_init_and_help_says_it_is_an_alias(capsys):
    args = parse_args(["--resume", "a.ckpt", "--base", "sd.ckpt"])
    assert (args.init, args.base) == ("a.ckpt", "sd.ckpt")
    with pytest.raises(SystemExit):
        parse_args(["--sd-base", "sd.ckpt"])
    capsys.readouterr()
    assert parse_args(["--init", "b.ckpt"]).init == "b.ckpt"
    with pytest.raises(SystemExit):
        parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--init INIT, --resume INIT" in text and "original tutorial's name" in text


def test_a_config_with_this_projects_old_keys_is_refused_with_the_rename():
    node = load_config(TINY_CONFIG)["training"]
    for old, new in (("resume", "init"), ("sd_base", "base")):
        renamed = {{new: old}.get(k, k): v for k, v in copy.deepcopy(node).items()}
        with pytest.raises(ValueError, match=rf"old.yaml: training.{old} .* training.{new}"):
            TrainSettings.from_config(renamed, "old.yaml")


def test_a_checkpoint_names_its_initial_weights_or_is_refused_as_older(tmp_path):
    ckpt = tmp_path / "run" / "checkpoints" / "step-0000002.ckpt"
    assert checkpoint_init({"init": "i.safetensors"}, ckpt) == Path("i.safetensors")
    assert checkpoint_init({}, ckpt) == tmp_path / "run" / INIT_FILE
    with pytest.raises(ValueError, match="step-0000002.ckpt .*'base'"):
        checkpoint_init({"base": "old.ckpt"}, ckpt)
