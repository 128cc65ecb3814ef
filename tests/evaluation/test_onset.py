"""The onset rule on synthetic curves: flat, a step, a noisy step, a late step, a rise that falls back."""

import numpy as np
import pytest

from evaluation.onset import CONFIRM, find_onset, onset_threshold

BASE = 0.05
STEPS = list(range(0, 2000, 100))  # 20 evals


def _curve(values):
    return STEPS[: len(values)], list(values)


def test_a_flat_curve_at_the_baseline_has_no_onset():
    assert find_onset(*_curve([BASE] * 20), BASE) is None


def test_a_step_is_found_at_its_first_eval():
    values = [BASE] * 8 + [0.3] * 12
    assert find_onset(*_curve(values), BASE) == STEPS[8]


def test_a_noisy_step_is_found_where_it_rises_and_noise_alone_never_triggers():
    rng = np.random.default_rng(0)
    below = BASE + rng.uniform(-0.03, 0.045, 10)  # up to 0.095: under 2x the baseline
    above = 0.3 + rng.uniform(-0.1, 0.1, 10)
    assert below.max() < onset_threshold(BASE) < above.min()
    assert find_onset(*_curve([*below, *above]), BASE) == STEPS[10]
    assert find_onset(*_curve(below), BASE) is None


def test_a_single_noisy_eval_above_the_threshold_is_not_an_onset():
    values = [BASE] * 5 + [0.2] + [BASE] * 14
    assert find_onset(*_curve(values), BASE) is None


def test_a_late_step_is_not_missed():
    values = [BASE] * (20 - CONFIRM) + [0.3] * CONFIRM
    assert find_onset(*_curve(values), BASE) == STEPS[20 - CONFIRM]


def test_a_rise_that_falls_back_is_withdrawn_and_a_later_one_found():
    rise_and_fall = [BASE] * 4 + [0.3] * 3 + [BASE] * 5
    assert find_onset(*_curve(rise_and_fall), BASE) is None
    assert find_onset(*_curve([*rise_and_fall, 0.3, 0.3, 0.3]), BASE) == STEPS[12]
    # One dip inside a held control is noise, not a loss: the first onset stands.
    assert find_onset(*_curve([BASE] * 4 + [0.3, 0.3, BASE, 0.3, 0.3]), BASE) == STEPS[4]


def test_a_baseline_near_zero_needs_a_real_margin():
    assert onset_threshold(0.001) == pytest.approx(0.021)
    assert find_onset(*_curve([0.001] * 5 + [0.01] * 10), 0.001) is None


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="one F1 per step"):
        find_onset([0, 1], [0.1], BASE)
