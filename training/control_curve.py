"""The run's control curve: OUTPUT/control_curve.csv (one row per eval), its picture control_curve.png, and the
strength-0 baseline it is read against (control_baseline.json). Every file is written whole, atomically."""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from evaluation.onset import onset_threshold
from ldm.util import write_bytes_atomically, write_text_atomically

logger = logging.getLogger(__name__)

CURVE_FILE = "control_curve.csv"
CURVE_PLOT = "control_curve.png"
BASELINE_FILE = "control_baseline.json"
FIELDS = (
    "step",
    "edge_f1",
    "edge_precision",
    "edge_recall",
    "edge_f1_tolerant",
    "ssim",
    "colour_accuracy",
    "position_error_median",
    "n",
    "seconds",
)

Row = dict[str, Any]


def row_of(step: int, scores: Mapping[str, Any], seconds: float) -> Row:
    return {"step": step, **{k: scores[k] for k in FIELDS[1:-1]}, "seconds": round(seconds, 3)}


def _value(text: str) -> Any:
    if text == "":
        return None
    number = float(text)
    return int(number) if number.is_integer() and "." not in text and "e" not in text.lower() else number


def read_curve(folder: Path) -> list[Row]:
    """The rows of `folder/control_curve.csv`, in step order; none when there is no such file."""
    path = folder / CURVE_FILE
    if not path.is_file():
        return []
    try:
        with path.open(newline="") as f:
            rows = [{k: _value(v) for k, v in r.items()} for r in csv.DictReader(f)]
    except (ValueError, KeyError) as err:
        raise ValueError(f"{path} is not a control curve ({err}): move it aside and the run writes a new one") from None
    return sorted(rows, key=lambda r: r["step"])


def write_curve(folder: Path, rows: list[Row]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=FIELDS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row[k] for k in FIELDS})
    write_text_atomically(folder / CURVE_FILE, buffer.getvalue())


def read_baseline(folder: Path, key: Mapping[str, Any]) -> dict[str, Any] | None:
    """The strength-0 scores saved for these eval settings, held-out pairs and initial weights (`key`); None when
    none were saved or they were measured on something else (then they are measured again)."""
    path = folder / BASELINE_FILE
    if not path.is_file():
        return None
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        logger.warning("%s cannot be read: the strength-0 baseline is measured again", path)
        return None
    if saved.get("key") != dict(key):
        logger.info("%s was measured with other eval settings, pairs or weights: measuring it again", path)
        return None
    return saved["scores"]


def write_baseline(folder: Path, key: Mapping[str, Any], scores: Mapping[str, Any]) -> None:
    write_text_atomically(folder / BASELINE_FILE, json.dumps({"key": dict(key), "scores": dict(scores)}, indent=2))


def plot_curve(
    path: Path, rows: list[Row], baseline: float, *, onset: int | None, best: int | None, title: str = ""
) -> None:
    """F1 against step: exact and 1-px tolerant, the strength-0 line, the onset threshold, the onset and the best."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display, whatever the user's default backend
    from matplotlib.figure import Figure

    steps = [r["step"] for r in rows]
    figure = Figure(figsize=(6.4, 3.6), dpi=100)
    ax = figure.subplots()
    ax.plot(steps, [r["edge_f1"] for r in rows], marker="o", markersize=3, label="edge F1 (pixel-exact)")
    ax.plot(steps, [r["edge_f1_tolerant"] for r in rows], linestyle="--", label="edge F1 (1 px tolerance)")
    ax.axhline(baseline, color="grey", label=f"strength 0 (control off): {baseline:.3f}")
    ax.axhline(onset_threshold(baseline), color="grey", linestyle=":", label="onset threshold")
    if onset is not None:
        ax.axvline(onset, color="tab:red", label=f"onset: step {onset}")
    if best is not None:
        best_row = next(r for r in rows if r["step"] == best)
        ax.plot([best], [best_row["edge_f1"]], marker="*", markersize=12, color="tab:green", linestyle="none")
    ax.set_xlabel("step")
    ax.set_ylabel("edge F1")
    ax.set_ylim(bottom=0)
    ax.set_title(title or "control during training (held-out pairs)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    write_bytes_atomically(path, buffer.getvalue())
