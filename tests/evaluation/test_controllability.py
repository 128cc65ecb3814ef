import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from evaluation.controllability import ExactEdgeScore, edge_f1, ssim


def _square_outline(size: int = 32, lo: int = 8, hi: int = 24) -> np.ndarray:
    edges = np.zeros((size, size), np.uint8)
    edges[lo, lo:hi] = edges[hi, lo:hi] = edges[lo : hi + 1, lo] = edges[lo : hi + 1, hi] = 255
    return edges


def test_identical_maps_score_one() -> None:
    edges = _square_outline()
    assert edge_f1(edges, edges, tolerance=0).f1 == 1.0


def test_tolerance_forgives_one_pixel_shift_only_when_allowed() -> None:
    edges = _square_outline()
    shifted = np.roll(edges, 1, axis=1)
    assert edge_f1(shifted, edges, tolerance=1).f1 == pytest.approx(1.0)
    assert edge_f1(shifted, edges, tolerance=0).f1 < 0.6


def test_precision_and_recall_are_not_swapped() -> None:
    ref = _square_outline()
    pred = ref.copy()
    pred[2, :] = 255  # extra edges lower precision, recall stays perfect
    score = edge_f1(pred, ref, tolerance=0)
    assert score.recall == 1.0
    assert score.precision == pytest.approx(ref.astype(bool).sum() / pred.astype(bool).sum())


def test_empty_prediction_scores_zero() -> None:
    assert edge_f1(np.zeros((32, 32), np.uint8), _square_outline()).f1 == 0.0


def test_bad_shapes_raise() -> None:
    with pytest.raises(ValueError, match="differ in size"):
        edge_f1(np.zeros((8, 8)), np.zeros((9, 9)))
    with pytest.raises(ValueError, match="2-D"):
        edge_f1(np.zeros((8, 8, 3)), np.zeros((8, 8)))


def test_ssim_matches_scikit_image() -> None:
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (48, 40), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-40, 40, a.shape), 0, 255).astype(np.uint8)
    expected = structural_similarity(
        a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255
    )
    assert ssim(a, b) == pytest.approx(expected, abs=2e-3)
    assert ssim(a, a) == pytest.approx(1.0)


def test_ssim_rejects_float_images() -> None:
    with pytest.raises(TypeError, match="uint8"):
        ssim(np.zeros((8, 8)), np.zeros((8, 8)))


def test_exact_score_is_torchmetrics_binary_f1_over_all_pixels_of_all_pairs() -> None:
    ref = _square_outline()
    shifted = np.roll(ref, 1, axis=1)  # a one-pixel shift: only the two vertical sides miss
    score = ExactEdgeScore()
    score.update(ref, ref)
    score.update(shifted, ref)
    tp = int(ref.astype(bool).sum() + (shifted.astype(bool) & ref.astype(bool)).sum())
    n_pred = n_ref = 2 * int(ref.astype(bool).sum())
    result = score.compute()
    assert result.precision == pytest.approx(tp / n_pred) and result.recall == pytest.approx(tp / n_ref)
    assert result.f1 == pytest.approx(2 * tp / (n_pred + n_ref))
    # Pooled, not averaged per pair: the same counts in one update give the same figure.
    pooled = ExactEdgeScore()
    pooled.update(np.concatenate([ref, shifted]), np.concatenate([ref, ref]))
    assert pooled.compute() == result


def test_exact_score_gives_no_credit_for_a_near_miss_that_the_tolerant_one_forgives() -> None:
    ref = _square_outline()
    shifted = np.roll(ref, 1, axis=0)
    score = ExactEdgeScore()
    score.update(shifted, ref)
    assert score.compute().f1 < 0.6 < edge_f1(shifted, ref, tolerance=1).f1


def test_exact_score_equals_torchmetrics_binary_f1_on_random_maps() -> None:
    from torchmetrics.classification import BinaryF1Score, BinaryPrecision, BinaryRecall

    rng = np.random.default_rng(0)
    ours, theirs = ExactEdgeScore(), (BinaryPrecision(), BinaryRecall(), BinaryF1Score())
    for density in (0.05, 0.2, 0.5):
        pred, ref = rng.random((2, 32, 48)) < density
        ours.update(pred.astype(np.uint8) * 255, ref.astype(np.uint8))
        for metric in theirs:
            metric.update(torch.from_numpy(pred).flatten().long(), torch.from_numpy(ref).flatten().long())
    got = ours.compute()
    want = [float(m.compute()) for m in theirs]
    assert [got.precision, got.recall, got.f1] == pytest.approx(want, abs=1e-6)
