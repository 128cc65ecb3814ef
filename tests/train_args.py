"""The command line of a small tutorial_train.py run on the tiny config, shared by the training tests."""

from repo_paths import TINY_CONFIG


def tiny_args(data, out, *extra: str, init) -> list[str]:
    return [
        "--config",
        str(TINY_CONFIG),
        "--data",
        str(data),
        "--output",
        str(out),
        "--batch-size",
        "2",
        "--logger-freq",
        "1000",
        "--workers",
        "0",
        "--init",
        str(init),
        *extra,
    ]
