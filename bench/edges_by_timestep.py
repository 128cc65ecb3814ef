r"""At which noise levels a ControlNet's edges are decided: the pixel-exact edge F1 (the monitor's protocol) of the
clean image that one denoising step implies from each timestep, with the control on and off.

    .venv/bin/python -m bench.edges_by_timestep --control runs/toy/control.safetensors
    .venv/bin/python -m bench.edges_by_timestep --config models/cldm_v15.yaml --base SD15 --control CN \
        --data DATA --timesteps 50 200 500 800 --batch-size 4

For each held-out pair its target image is encoded, noised to each t with the pair's own noise (the same at every
t and strength), and denoised in one step, x̂0 = (x_t − √(1−ᾱ_t) ε̂)/√ᾱ_t, with the prompt and the edge map (no
guidance); x̂0 is decoded, and canny at the data's thresholds is scored against the input edge map. The first row,
the autoencoder's round trip (the target encoded and decoded), is the most any x̂0 can score through this VAE.

What it tells: where the estimate at small t already scores near the round trip, a loss on those estimates
(ControlNet++'s reward stage rewards t <= 200) has little left to correct there; the gap to the monitor's sampled
F1 is decided at the higher t.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from annotator.canny import CannyDetector, CannyThresholds
from cldm.loading import load_model
from cldm.sampling import hint_from_edges, images_to_uint8
from evaluation.controllability import EdgeCounts, edge_counts, edge_f1
from evaluation.evaluate_control import EvalSettings, HeldOutPair, batches_of, fixed_noise, held_out_rows, read_pairs
from ldm.flags import HelpFormatter
from ldm.util import check_writable, write_text_atomically
from pairs.prompt_file import VAL_PROMPT_FILE
from tool_eval_control import data_thresholds

ROUND_TRIP = "round trip"  # the row of the autoencoder alone
TIMESTEPS = (0, 50, 100, 200, 400, 600, 800, 999)


def score_images(
    images: torch.Tensor, pairs: list[HeldOutPair], thresholds: CannyThresholds
) -> tuple[EdgeCounts, list[float]]:
    """Decoded images B×3×H×W in [−1, 1] against their pairs' edge maps: pixel-exact counts, and the 1-px F1 of each."""
    canny = CannyDetector()
    counts, tolerant = EdgeCounts(), []
    for pair, image in zip(pairs, images_to_uint8(images), strict=True):
        detected = canny(image, thresholds.low, thresholds.high)  # H×W
        counts = counts + edge_counts(detected, pair.edges[:, :, 0])
        tolerant.append(edge_f1(detected, pair.edges[:, :, 0], tolerance=1).f1)
    return counts, tolerant


@torch.no_grad()
def edges_by_timestep(
    model: torch.nn.Module,
    pairs: list[HeldOutPair],
    timesteps: Sequence[int],
    strengths: Sequence[float],
    thresholds: CannyThresholds,
    *,
    seed: int = 0,
) -> dict[str, tuple[EdgeCounts, list[float]]]:
    """Counts and per-pair 1-px F1 of one batch of pairs, keyed ROUND_TRIP and "t=T s=S" per timestep and strength."""
    device = model.betas.device
    targets = torch.stack([torch.from_numpy(p.target.copy()) for p in pairs]).to(device)  # B×H×W×3 uint8
    targets = targets.permute(0, 3, 1, 2).float() / 127.5 - 1  # B×3×H×W in [−1, 1]
    z = model.get_first_stage_encoding(model.encode_first_stage(targets).mode())  # B×C×h×w, the posterior's mode
    noise = fixed_noise(model, pairs, seed)  # B×C×h×w
    cond = {
        "c_concat": [torch.cat([hint_from_edges(p.edges, 1, device) for p in pairs])],  # B×3×H×W
        "c_crossattn": [model.get_learned_conditioning([p.prompt for p in pairs])],  # B×L×D
    }
    scored = {ROUND_TRIP: score_images(model.decode_first_stage(z), pairs, thresholds)}
    for step in timesteps:
        t = torch.full((len(pairs),), step, device=device, dtype=torch.long)  # B
        x_t = model.q_sample(z, t, noise)  # B×C×h×w
        for strength in strengths:
            eps = model.apply_model(x_t, t, cond, control_scales=[strength] * model.control_model.num_outputs)
            x0 = model.predict_start(x_t, t, eps)  # B×C×h×w
            scored[f"t={step} s={strength:g}"] = score_images(model.decode_first_stage(x0), pairs, thresholds)
    return scored


def table(results: dict[str, dict[str, float]], timesteps: Sequence[int], strengths: Sequence[float]) -> str:
    header = f"{'t':>10} " + " ".join(f"{f'exact F1 @ {s:g}':>14} {f'1-px F1 @ {s:g}':>14}" for s in strengths)
    trip = results[ROUND_TRIP]
    lines = [header, f"{ROUND_TRIP:>10} {trip['edge_f1']:>14.3f} {trip['edge_f1_tolerant']:>14.3f}"]
    for step in timesteps:
        cells = [results[f"t={step} s={s:g}"] for s in strengths]
        lines.append(f"{step:>10} " + " ".join(f"{c['edge_f1']:>14.3f} {c['edge_f1_tolerant']:>14.3f}" for c in cells))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--config", default="models/cldm_toy.yaml", help="model config")
    parser.add_argument("--base", default="models/toy_base.safetensors", help="SD (base) weights")
    parser.add_argument("--control", help="the ControlNet, a file or a diffusers folder (default: an untrained one)")
    parser.add_argument("--data", type=Path, default=Path("training/toy"), help="prepared folder with held-out pairs")
    parser.add_argument("--prompt-file", default=VAL_PROMPT_FILE, help="held-out pairs")
    parser.add_argument("--n", type=int, default=EvalSettings().n, help="held-out pairs scored")
    parser.add_argument("--timesteps", type=int, nargs="+", default=list(TIMESTEPS), help="noise levels t")
    parser.add_argument("--strengths", type=float, nargs="+", default=[1.0, 0.0], help="control strengths")
    parser.add_argument("--seed", type=int, default=EvalSettings().seed, help="the pairs' noise: seed + pair index")
    parser.add_argument("--batch-size", type=int, default=8, help="pairs per forward pass")
    parser.add_argument("--device", help="cuda or cpu (default: cuda when there is one)")
    parser.add_argument("--out", type=Path, help="JSON file for the results")
    args = parser.parse_args(argv)
    try:
        if args.out is not None:
            check_writable(args.out)
        thresholds = data_thresholds(args.data, args.control)  # warns where the ControlNet learned others
        model, description = load_model(args.config, base=args.base, control=args.control)
        model = model.to(args.device or ("cuda" if torch.cuda.is_available() else "cpu")).eval()
        bad = [t for t in args.timesteps if not 0 <= t < model.num_timesteps]
        if bad:
            raise ValueError(f"--timesteps {bad}: the model's schedule has t in 0..{model.num_timesteps - 1}")
        rows = held_out_rows(args.data, args.prompt_file, args.n)
        counts: dict[str, EdgeCounts] = {}
        tolerant: dict[str, list[float]] = {}
        for indices in batches_of(len(rows), args.batch_size):
            pairs = read_pairs(args.data, rows, indices)
            scored = edges_by_timestep(model, pairs, args.timesteps, args.strengths, thresholds, seed=args.seed)
            for key, (c, f1s) in scored.items():
                counts[key] = counts.get(key, EdgeCounts()) + c
                tolerant[key] = tolerant.get(key, []) + f1s
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    results = {
        key: {"edge_f1": counts[key].score().f1, "edge_f1_tolerant": float(np.mean(tolerant[key])), "n": len(rows)}
        for key in counts
    }
    print(f"weights: {description}; {len(rows)} held-out pairs of {args.data}; canny {thresholds}")
    print(table(results, args.timesteps, args.strengths))
    if args.out is not None:
        write_text_atomically(args.out, json.dumps({"weights": description, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
