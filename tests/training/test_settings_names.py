"""One word, one meaning: `init` is the initial ControlLDM file and `base` the SD weights. The original tutorial's
`--resume` and the older `--sd-base` (and their YAML keys) keep working as aliases, and old checkpoints, which
named their initial weights `base`, still resume from them."""

import copy
import logging
from pathlib import Path

import pytest
from repo_paths import TINY_CONFIG

from cldm.loading import load_config
from training.run import INIT_FILE, checkpoint_init
from training.settings import TrainSettings
from tutorial_train import parse_args


def test_the_old_flags_set_the_new_settings_and_help_says_they_are_aliases(capsys):
    args = parse_args(["--resume", "a.ckpt", "--sd-base", "sd.ckpt"])
    assert (args.init, args.base) == ("a.ckpt", "sd.ckpt")
    assert parse_args(["--init", "b.ckpt"]).init == "b.ckpt"
    with pytest.raises(SystemExit):
        parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--init INIT, --resume INIT" in text and "original tutorial's name" in text


def test_a_config_with_the_old_keys_loads_the_same_and_says_so_once(caplog):
    node = load_config(TINY_CONFIG)["training"]
    old = {{"init": "resume", "base": "sd_base"}.get(k, k): v for k, v in copy.deepcopy(node).items()}
    with caplog.at_level(logging.INFO, logger="training.settings"):
        assert TrainSettings.from_config(old, "old.yaml") == TrainSettings.from_config(node, "new.yaml")
    said = [r.getMessage() for r in caplog.records]
    assert said == ["old.yaml: training.resume, training.sd_base read as training.init, training.base (the new names)"]
    with pytest.raises(ValueError, match="both resume and init"):
        TrainSettings.from_config({**node, "resume": None}, "mixed.yaml")


def test_a_checkpoint_names_its_initial_weights_under_either_key(tmp_path):
    ckpt = tmp_path / "run" / "checkpoints" / "step-0000002.ckpt"
    assert checkpoint_init({"init": "i.safetensors"}, ckpt) == Path("i.safetensors")
    assert checkpoint_init({"base": "old.ckpt"}, ckpt) == Path("old.ckpt")  # written before the rename
    assert checkpoint_init({}, ckpt) == tmp_path / "run" / INIT_FILE
