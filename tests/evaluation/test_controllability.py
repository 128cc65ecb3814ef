import numpy as np
import pytest
from skimage.metrics import structural_similarity

from evaluation.controllability import edge_f1, ssim


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
