r"""Measure how well a ControlNet follows its canny control (ControlNet++ protocol) on a held-out set.

    python tool_eval_control.py --data training/toy --base runs/tiny/init.safetensors \
        --control runs/tiny/control.safetensors --out runs/tiny/eval.json

For each held-out pair it generates an image from the edge map and prompt and runs canny on the result.
The headline is ControlNet++'s figure: the pixel-exact edge F1 against the input edges over all pairs.
A second F1 forgives a small pixel offset (`--tolerance`); SSIM compares the sample with the target. On
the toy circles it also scores the fill colour against the prompt and the circle's position. Strength 0
is the same model with its control switched off: the baseline to beat. The samples' edges are detected with
the canny thresholds that made the held-out edge maps, read from the data's dataset.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from annotator.canny import CannyThresholds
from cldm.edge_record import recorded_thresholds
from cldm.loading import load_model
from evaluation.evaluate_control import EvalSettings, evaluate
from ldm.flags import HelpFormatter, add_flags, given_flags
from ldm.util import check_writable
from pairs.manifest import edge_thresholds
from pairs.prompt_file import VAL_PROMPT_FILE


def _cell(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_table(results: dict[str, dict], tolerance: int) -> str:
    """The results as a plain-text table, then each strength's exact edge F1 against strength 0's."""
    tol = f"F1 ±{tolerance}px"
    lines = [
        f"{'strength':>8s} {'edge F1':>7s} {'precision':>9s} {'recall':>6s} {tol:>9s} {'SSIM':>5s} "
        f"{'colour':>6s} {'pos err':>7s} {'pairs':>5s}"
    ]
    for strength, m in results.items():
        lines.append(
            f"{strength:>8s} {m['edge_f1']:7.3f} {m['edge_precision']:9.3f} {m['edge_recall']:6.3f} "
            f"{m['edge_f1_tolerant']:9.3f} {m['ssim']:5.3f} {_cell(m['colour_accuracy'], '6.0%')} "
            f"{_cell(m['position_error_median'], '5.1f') + ' px':>7s} {m['n']:5d}"
        )
    lines.append(
        "edge F1: ControlNet++'s pixel-exact F1 over all pairs; "
        f"{tol}: mean per pair with {tolerance} px of slack; colour: fill named in the prompt; "
        "pos err: median circle-centre error"
    )
    if "0" in results and len(results) > 1:
        off = results["0"]["edge_f1"]
        for strength, m in results.items():
            if strength != "0":
                gain = f"{m['edge_f1'] / off:.1f}x" if off > 0 else "inf (strength 0 found no edges)"
                lines.append(
                    f"edge F1 at strength {strength} vs strength 0 (control off): "
                    f"{m['edge_f1']:.3f} vs {off:.3f} = {gain}"
                )
    return "\n".join(lines)


def data_thresholds(data: Path, control: str | None) -> CannyThresholds:
    """The thresholds that made the held-out edge maps; a warning where the ControlNet learned other ones."""
    thresholds = edge_thresholds(data)
    learned = recorded_thresholds(control) if control else None
    if learned is not None and learned != thresholds:
        print(
            f"warning: {control} was trained on canny {learned} edges, but {data} holds canny {thresholds} ones: "
            f"it is scored at {thresholds}, on edges it did not learn",
            file=sys.stderr,
        )
    return thresholds


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--config", default="models/cldm_toy.yaml", help="model config")
    p.add_argument("--ckpt", help="full ControlLDM checkpoint")
    p.add_argument("--base", help="SD (base) checkpoint, with --control")
    p.add_argument("--control", help="ControlNet-only checkpoint")
    p.add_argument("--data", default="training/toy", help="prepared folder with the held-out prompt file")
    p.add_argument("--prompt-file", default=VAL_PROMPT_FILE, help="held-out pairs")
    p.add_argument("--strengths", type=float, nargs="+", default=[1.0, 0.0], help="control strengths to compare")
    add_flags(
        p.add_argument_group("sampling and scoring (as training's monitor)"), EvalSettings, defaults=EvalSettings()
    )
    p.add_argument("--device", help="cuda or cpu")
    p.add_argument(
        "--allow-nonfinite", action="store_true", help="load weights holding NaN or inf (refused by default)"
    )
    p.add_argument("--out", type=Path, help="JSON file for the results")
    p.add_argument("--grid", type=Path, help="PNG of the first pairs: control | sample per strength | target")
    p.add_argument("--grid-rows", type=int, default=6, help="rows in --grid")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        for output in (args.out, args.grid):  # checked now, not after all the sampling
            if output is not None:
                check_writable(output)
        thresholds = data_thresholds(Path(args.data), args.control)
        settings = EvalSettings(**given_flags(args, EvalSettings), thresholds=thresholds)
        model, description = load_model(
            args.config, ckpt=args.ckpt, base=args.base, control=args.control, allow_nonfinite=args.allow_nonfinite
        )
        model = model.to(args.device or ("cuda" if torch.cuda.is_available() else "cpu")).eval()
        rows: list = []
        results = evaluate(
            model,
            args.data,
            tuple(args.strengths),
            prompt_file=args.prompt_file,
            settings=settings,
            grid_rows=rows,
        )
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"weights: {description}; samples' edges detected at canny {thresholds}")
    print(format_table(results, settings.tolerance))
    if args.grid is not None:
        args.grid.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.concatenate([np.concatenate(r, axis=1) for r in rows[: args.grid_rows]], axis=0)).save(
            args.grid
        )
        columns = " | ".join(["control"] + [f"strength {s:g}" for s in args.strengths] + ["target"])
        print(f"sample grid ({columns}): {args.grid}")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        written = {"weights": description, "canny_thresholds": dataclasses.asdict(thresholds), "results": results}
        args.out.write_text(json.dumps(written, indent=2))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
