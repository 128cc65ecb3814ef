"""Pretrain the toy base model (the 'SD' of the CPU quickstart): its UNet learns the toy set from text alone.

    python tool_train_toy_base.py --config models/cldm_toy.yaml --data training/toy --steps 3000 \
        --out models/toy_base.safetensors

A plain ε-prediction loop over `model.diffusion_model` (the part SD's authors trained); the ControlNet is
not involved. The output holds every tensor but `control_model.*`, like an SD checkpoint, ready for
`tool_add_control.py`.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from cldm.model import create_model
from training.dataset import PairDataset
from training.toy_data import write_toy_dataset


def batches(dataset: PairDataset, batch_size: int, seed: int):
    """Endless shuffled batches of (images B×H×W×3 in [−1, 1], prompts)."""
    rng = np.random.default_rng(seed)
    epoch = 0
    while True:
        order = rng.permutation(len(dataset))
        for start in range(0, len(order) - batch_size + 1, batch_size):
            items = [dataset.get(int(i), epoch) for i in order[start: start + batch_size]]
            yield torch.from_numpy(np.stack([it["jpg"] for it in items])), [it["txt"] for it in items]
        epoch += 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="models/cldm_toy.yaml")
    p.add_argument("--data", default="training/toy", help="toy folder (generated when missing)")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--empty-prompt-p", type=float, default=0.1, help="unconditional share, for guidance")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("models/toy_base.safetensors"))
    args = p.parse_args(argv)
    if not (Path(args.data) / "prompt.json").exists():
        write_toy_dataset(args.data, n=2000, size=64, seed=0)
    torch.manual_seed(args.seed)
    model = create_model(args.config)
    unet = model.model.diffusion_model.requires_grad_(True).train()
    optimizer = torch.optim.AdamW(unet.parameters(), lr=args.lr)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.lr, total_steps=args.steps, pct_start=0.05)
    dataset = PairDataset(args.data, empty_prompt_p=args.empty_prompt_p, seed=args.seed)
    stream = batches(dataset, args.batch_size, args.seed)
    start, ema = time.time(), None
    for step in range(1, args.steps + 1):
        images, prompts = next(stream)
        z = model.image_to_latent(images.permute(0, 3, 1, 2))  # B×C×h×w
        cond = {"c_crossattn": [model.get_learned_conditioning(prompts)], "c_concat": None}
        t = torch.randint(0, model.num_timesteps, (z.shape[0],))
        loss, _ = model.p_losses(z, cond, t)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
        if step % 100 == 0 or step == args.steps:
            print(f"step {step}/{args.steps} loss {ema:.4f} ({time.time() - start:.0f} s)", flush=True)
    state = {k: v.contiguous() for k, v in model.state_dict().items() if not k.startswith("control_model.")}
    tmp = args.out.with_name(f".{args.out.name}.tmp")
    save_file(state, str(tmp), metadata={"config": args.config, "steps": str(args.steps), "seed": str(args.seed)})
    os.replace(tmp, args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
