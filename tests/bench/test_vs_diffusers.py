"""bench/vs_diffusers.py on the tiny config: it builds both sides from one set of weights and they agree."""

import re

import pytest
from repo_paths import TINY_CONFIG

from bench.vs_diffusers import main


def test_every_figure_is_printed_and_both_sides_compute_the_same(capsys):
    main(
        [
            "--config",
            str(TINY_CONFIG),
            "--sizes",
            "64",
            "--ddim-steps",
            "3",
            "--ddim-size",
            "64",
            "--train-size",
            "64",
            "--repeats",
            "1",
        ]
    )
    out = capsys.readouterr().out
    errors = [float(e) for e in re.findall(r"  (\d\.\de[-+]\d+)", out)]
    assert len(errors) == 2 and max(errors) < 1e-4, out  # the denoiser call and the DDIM latents
    assert re.search(r"training step, batch 1, 64² +[\d.]+ +[\d.]+ +[\d.]+", out), out


@pytest.mark.slow
def test_compiled_sides_still_agree(capsys):
    main(
        ["--config", str(TINY_CONFIG), "--sizes", "64", "--ddim-steps", "0", "--train-size", "0", "--repeats", "1"]
        + ["--compile", "both", "--freeze"]
    )
    out = capsys.readouterr().out
    assert "compile=both freeze=True" in out, out
    errors = [float(e) for e in re.findall(r"  (\d\.\de[-+]\d+)", out)]
    assert len(errors) == 1 and errors[0] < 1e-4, out


def test_freeze_without_compile_is_refused(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--config", str(TINY_CONFIG), "--freeze"])
    assert exit_info.value.code == 2 and "--compile" in capsys.readouterr().err
