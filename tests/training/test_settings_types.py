"""YAML settings are read as strictly as flags: a value of another type is refused naming the file and key, a YAML
syntax error is one line with file:line (also for --help), and a setting given under two names with two values is
refused."""

import shutil

import pytest
from repo_paths import TINY_CONFIG as TINY

from tutorial_train import main


def _config(tmp_path, old: str, new: str):
    text = TINY.read_text()
    assert old in text
    path = tmp_path / "cfg.yaml"
    path.write_text(text.replace(old, new))
    shutil.copy(TINY.parent / "training_defaults.yaml", tmp_path)  # what it extends
    return path


@pytest.mark.parametrize(
    ("old", "new", "key"),
    [
        ("hflip: false", 'hflip: "false"', "hflip"),
        ("eval_every: 100", 'eval_every: "100"', "eval_every"),
        ("batch_size: 8", "batch_size: 2.5", "batch_size"),
    ],
)
def test_a_yaml_value_of_another_type_is_refused_naming_file_and_key(tmp_path, capsys, old, new, key):
    path = _config(tmp_path, old, new)
    assert main(["--config", str(path), "--print-config"]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and key in err and err.count("\n") == 1


def test_a_number_written_as_text_is_read_as_the_number_where_a_float_belongs(tmp_path, capsys):
    text = TINY.read_text()
    lines = [line for line in text.splitlines() if "learning_rate:" in line]
    path = _config(tmp_path, lines[0], lines[0].split(":")[0] + ": 1e-5")  # YAML 1.1 reads 1e-5 as text
    assert main(["--config", str(path), "--print-config"]) == 0
    assert "learning_rate: 1.0e-05" in capsys.readouterr().out


def test_a_yaml_syntax_error_is_one_line_with_file_and_line_even_for_help(tmp_path, capsys):
    path = tmp_path / "broken.yaml"
    path.write_text("model:\n  target: x\n  params: [unclosed\ntraining: {}\n")
    assert main(["--config", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and f"{path}:" in err and err.count("\n") == 0
    with pytest.raises(SystemExit) as done:
        main(["--config", str(path), "--help"])
    assert done.value.code == 0


def test_an_alias_given_with_its_new_name_and_another_value_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as done:
        main(["--init", "a.ckpt", "--resume", "b.ckpt", "--print-config"])
    assert done.value.code == 2
    err = capsys.readouterr().err
    assert "--init a.ckpt" in err and "--resume b.ckpt" in err
    assert main(["--init", "a.ckpt", "--resume", "a.ckpt", "--print-config"]) == 0  # the same value: one meaning
