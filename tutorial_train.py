"""Train a ControlNet with PyTorch Lightning, from one CPU to multi-node DDP.

With no flags it runs the embedded default, the CPU quickstart: a ControlNet on the committed toy base
(models/cldm_toy.yaml, models/toy_base.safetensors) learns to fill generated circles from their edges.
For SD1.5 on Stanford Dogs:

    python tutorial_train.py --config models/cldm_v15.yaml --resume models/control_sd15_ini.ckpt \
        --data training/dogs --devices 2

Defaults come from the config's `training:` section; each flag below overrides one field.
"""

from __future__ import annotations

import argparse
import logging
import sys

import pytorch_lightning as pl
import torch

from cldm.checkpoint_keys import CheckpointMismatchError
from cldm.model import load_config
from cldm.train_run import (RunInputError, TrainData, build_model, make_trainer, plan_run, prepare_latent_cache,
                            resolved_config, write_config)
from cldm.train_settings import PRECISIONS, TrainSettings


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="models/cldm_toy.yaml", help="model + training YAML (default: the toy quickstart model)")
    p.add_argument("--resume", help="initial ControlLDM checkpoint from tool_add_control.py ('none': fresh init)")
    p.add_argument("--sd-base", help="SD checkpoint to make --resume from (as tool_add_control.py) when that file is missing")
    p.add_argument("--resume-from", help="continue a run: a step-N.ckpt, 'last' (newest in OUTPUT/checkpoints) or 'auto' (last if any)")
    p.add_argument("--data", help="prepared folder with prompt.json, source/, target/")
    p.add_argument("--batch-size", type=int, help="samples per device per step")
    p.add_argument("--accumulate", type=int, help="gradient accumulation steps")
    p.add_argument("--lr", type=float, help="learning rate (model.params.learning_rate)")
    p.add_argument("--max-steps", type=int, help="optimizer steps to train")
    p.add_argument("--max-epochs", type=int, help="passes over the data (converted to steps; overrides --max-steps)")
    p.add_argument("--accelerator", help="cpu, gpu or auto")
    p.add_argument("--devices", type=int, help="devices per node")
    p.add_argument("--num-nodes", type=int, help="nodes")
    p.add_argument("--strategy", help="Lightning strategy (auto = ddp on more than one device)")
    p.add_argument("--precision", choices=PRECISIONS, help="32, 16-mixed or bf16-mixed")
    p.add_argument("--sd-locked", action=argparse.BooleanOptionalAction, default=None,
                   help="lock the whole SD UNet (--no-sd-locked also trains its decoder)")
    p.add_argument("--only-mid-control", action=argparse.BooleanOptionalAction, default=None,
                   help="feed the ControlNet into the middle block only")
    p.add_argument("--checkpointing", action=argparse.BooleanOptionalAction, default=None,
                   help="gradient checkpointing in the UNet and ControlNet (use_checkpoint)")
    p.add_argument("--frozen-dtype", choices=("float32", "bfloat16", "float16"),
                   help="store the locked UNet, VAE and text encoder in this dtype (with --precision *-mixed)")
    p.add_argument("--optimizer-states", choices=("float32", "bfloat16"),
                   help="dtype of AdamW's two moments (bfloat16 halves the optimizer state)")
    p.add_argument("--gradient-release", action=argparse.BooleanOptionalAction, default=None,
                   help="update each tensor inside backward and free its gradient (one device, --accumulate 1)")
    p.add_argument("--empty-prompt-p", type=float, help="probability of training with an empty prompt")
    p.add_argument("--hflip", action=argparse.BooleanOptionalAction, default=None, help="random horizontal flips")
    p.add_argument("--cache-latents", action=argparse.BooleanOptionalAction, default=None,
                   help="encode images and prompts once before training (needs --no-hflip)")
    p.add_argument("--logger-freq", type=int, help="steps between image grids")
    p.add_argument("--ckpt-every", type=int, help="steps between resumable checkpoints")
    p.add_argument("--keep-last", type=int, help="resumable checkpoints to keep")
    p.add_argument("--output", help="run folder")
    p.add_argument("--seed", type=int, help="random seed")
    p.add_argument("--workers", type=int, help="DataLoader worker processes")
    p.add_argument("--log-samples", action="store_true",
                   help="write the sample indices each rank trained on to OUTPUT/samples/rank<R>.txt (audit)")
    return p.parse_args(argv)


def apply_model_flags(model_config: dict, args: argparse.Namespace) -> None:
    params = model_config["params"]
    for flag, key in (("lr", "learning_rate"), ("sd_locked", "sd_locked"), ("only_mid_control", "only_mid_control"),
                      ("frozen_dtype", "frozen_dtype"), ("optimizer_states", "optimizer_state_dtype"),
                      ("gradient_release", "gradient_release")):
        if getattr(args, flag) is not None:
            params[key] = getattr(args, flag)
    if args.checkpointing is not None:
        for node in ("unet_config", "control_stage_config"):
            params[node]["params"]["use_checkpoint"] = args.checkpointing


def check_gradient_release(params: dict, settings: TrainSettings) -> None:
    if not params.get("gradient_release"):
        return
    if settings.accumulate > 1 or settings.world_size > 1 or settings.precision == "16-mixed":
        raise ValueError("--gradient-release steps inside backward, so it needs --accumulate 1, one device on one "
                         "node, and no fp16 loss scaling (use --precision 32 or bf16-mixed)")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        config = load_config(args.config)
        settings = TrainSettings.from_config(config.get("training"), args.config)
        settings.override(data=args.data, batch_size=args.batch_size, accumulate=args.accumulate,
                          max_steps=args.max_steps, max_epochs=args.max_epochs, accelerator=args.accelerator,
                          devices=args.devices, num_nodes=args.num_nodes, strategy=args.strategy,
                          precision=args.precision, empty_prompt_p=args.empty_prompt_p, hflip=args.hflip,
                          cache_latents=args.cache_latents,
                          logger_freq=args.logger_freq, ckpt_every=args.ckpt_every, keep_last=args.keep_last,
                          output=args.output, seed=args.seed, workers=args.workers, sd_base=args.sd_base)
        if args.data is not None:
            settings.toy_data = None  # only the config's own data folder is generated when missing
        if args.resume is not None:
            settings.resume = None if args.resume.lower() == "none" else args.resume
        apply_model_flags(config["model"], args)
        config["model"]["params"]["seed"] = settings.seed
        if config["model"]["params"].get("frozen_dtype", "float32") != "float32" and settings.precision == "32":
            raise ValueError("--frozen-dtype below float32 needs mixed precision: add --precision bf16-mixed (or 16-mixed)")
        check_gradient_release(config["model"]["params"], settings)
        plan = plan_run(config["model"], settings, config_path=args.config, resume_from=args.resume_from)
    except (RunInputError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if plan.base is None:
        print("note: no initial checkpoint (training.resume is null): the SD part is freshly initialised, so its "
              "zero-initialised output layer passes no gradient to the ControlNet and nothing is learned. "
              "This run only exercises the pipeline; pass --resume with a tool_add_control.py checkpoint.")
    pl.seed_everything(settings.seed, workers=True)
    model = build_model(plan)
    cuda = torch.cuda.is_available() and settings.accelerator != "cpu"
    prepare_latent_cache(plan, model, "cuda" if cuda else "cpu")
    resolved = resolved_config(plan, config)
    trainer = make_trainer(plan, resolved, log_samples=args.log_samples)
    if trainer.is_global_zero:
        write_config(plan.output / "config.yaml", resolved)
    try:
        trainer.fit(model, datamodule=TrainData(plan), ckpt_path=str(plan.resume_from) if plan.resume_from else None)
    except (FloatingPointError, CheckpointMismatchError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    # Every rank prints its own checksum: equal lines show the DDP replicas stayed in sync.
    checksum = sum(float(v.double().sum()) for v in model.control_model.state_dict().values())
    print(f"control checksum rank {trainer.global_rank}: {checksum:.12e}")
    if trainer.is_global_zero:
        print(f"trained to step {trainer.global_step}; outputs in {plan.output}/:")
        print(f"  ControlNet weights: {plan.output}/control.safetensors (base: {plan.base})")
        print(f"  resumable checkpoints: {plan.output}/checkpoints/ (continue with --resume-from last)")
        print(f"  image grids: {plan.output}/image_log/train/   TensorBoard: {plan.output}/lightning_logs/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
