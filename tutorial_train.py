r"""Train a ControlNet with PyTorch Lightning, from one CPU to multi-node DDP.

With no flags it runs the embedded default, the CPU quickstart: a ControlNet on the committed toy base
(models/cldm_toy.yaml, models/toy_base.safetensors) learns to fill generated circles from their edges.
For SD1.5 on Stanford Dogs:

    python tutorial_train.py --config models/cldm_v15.yaml --init models/control_sd15_ini.ckpt \
        --data training/dogs --devices 2

Defaults come from the config (its `training:` section and `model.params`); each flag overrides one field.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys

from omegaconf import OmegaConf

from cldm.loading import load_config
from ldm.flags import HelpFormatter, add_flags, given_flags, preparse
from training.run import RunRequest, resolve_settings, run
from training.settings import ModelOptions, TrainSettings

DEFAULT_CONFIG = "models/cldm_toy.yaml"


def config_defaults(config_path: str) -> tuple[TrainSettings | None, ModelOptions | None]:
    """The settings a config resolves to before any flag, for --help to show; none when it cannot be read (the
    run itself then says why)."""
    try:
        config = load_config(config_path)
        return (
            TrainSettings.from_config(config.get("training"), config_path),
            ModelOptions.from_model_config(config["model"], config_path),
        )
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return None, None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    config_path = preparse(argv, "--config", DEFAULT_CONFIG)
    train_defaults, model_defaults = config_defaults(config_path)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument(
        "--config",
        default=DEFAULT_CONFIG,
        help="model + training YAML (the toy quickstart model by default); the defaults below are its values",
    )
    p.add_argument(
        "--print-config",
        action="store_true",
        help="print the resolved config (the YAML with every flag applied) and exit, writing nothing",
    )
    p.add_argument(
        "--resume-from",
        help="continue a run: a step-N.ckpt, 'last' (newest in OUTPUT/checkpoints) or 'auto' (last if any)",
    )
    p.add_argument(
        "--log-samples",
        action="store_true",
        help="write the sample indices each rank trained on to OUTPUT/samples/rank<R>.txt (audit)",
    )
    add_flags(p.add_argument_group("training (the config's training: section)"), TrainSettings, defaults=train_defaults)
    add_flags(p.add_argument_group("model (the config's model.params)"), ModelOptions, defaults=model_defaults)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    request = RunRequest(
        args.config,
        training=given_flags(args, TrainSettings),
        model=given_flags(args, ModelOptions),
        resume_from=args.resume_from,
        log_samples=args.log_samples,
    )
    if args.print_config:
        return print_config(request)
    outcome = run(request)
    if outcome.lines:
        print("\n".join(outcome.lines))
    if outcome.message:
        print(outcome.message, file=sys.stderr)
    return outcome.code


def print_config(request: RunRequest) -> int:
    """--print-config: the config as this command would run it (the YAML, its `extends`, every flag), as YAML."""
    try:
        config, settings = resolve_settings(request)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(OmegaConf.to_yaml(OmegaConf.create({**config, "training": dataclasses.asdict(settings)})), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
