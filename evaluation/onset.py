"""When the control took hold: the onset of control ("sudden convergence") on a curve of exact edge F1 by step.

The rule (docs/training.md, "Reading the control curve"):

- the threshold is `max(2 × baseline, baseline + 0.02)`, the baseline being the same model at control strength 0
  (the 0.02 keeps a baseline near zero from making any speck of edges an onset);
- the onset is the first eval of a run of at least `confirm` consecutive evals above the threshold, so one noisy
  eval cannot trigger it, and a rise at any step, however late, is found once it holds for `confirm` evals;
- a curve that then falls back below the threshold for `confirm` consecutive evals has lost its control: the onset
  is withdrawn and looked for again after it.
"""

from __future__ import annotations

from collections.abc import Sequence

ONSET_FACTOR = 2.0  # times the strength-0 F1
ONSET_MARGIN = 0.02  # exact F1 above the baseline, at least
CONFIRM = 2  # consecutive evals that confirm a rise, and that withdraw it when it falls back


def onset_threshold(baseline: float) -> float:
    """The exact edge F1 an eval must exceed to count as controlled."""
    return max(ONSET_FACTOR * baseline, baseline + ONSET_MARGIN)


def find_onset(steps: Sequence[int], f1: Sequence[float], baseline: float, *, confirm: int = CONFIRM) -> int | None:
    """The step at which the control took hold on this curve (evals in step order), or None while it has not."""
    if len(steps) != len(f1):
        raise ValueError(f"need one F1 per step, got {len(steps)} steps and {len(f1)} values")
    if confirm < 1:
        raise ValueError(f"confirm must be >= 1 eval, got {confirm}")
    threshold = onset_threshold(baseline)
    onset: int | None = None
    run_start, above, below = 0, 0, 0
    for step, value in zip(steps, f1):
        if value > threshold:
            if above == 0:
                run_start = step
            above, below = above + 1, 0
            if onset is None and above >= confirm:
                onset = run_start
        else:
            above, below = 0, below + 1
            if onset is not None and below >= confirm:
                onset = None
    return onset
