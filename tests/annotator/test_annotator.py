import numpy as np
import pytest

from annotator.canny import CannyDetector
from annotator.util import HWC3, resize_image


def _square_image():
    img = np.zeros((64, 64, 3), np.uint8)
    img[16:48, 16:48] = 200
    return img


def test_canny_returns_uint8_hw_edges_at_the_square_border():
    edges = CannyDetector()(_square_image())
    assert edges.dtype == np.uint8 and edges.shape == (64, 64)
    assert set(np.unique(edges)) == {0, 255}
    assert edges[32, 14:18].any() and not edges[32, 30:34].any()


@pytest.mark.parametrize(
    "bad, error",
    [(np.zeros((8, 8, 3), np.float32), TypeError), (np.zeros((8, 8, 4), np.uint8), ValueError), ([[0]], TypeError)],
)
def test_canny_rejects_bad_input(bad, error):
    with pytest.raises(error):
        CannyDetector()(bad)


def test_hwc3_conversions():
    gray = np.full((4, 5), 7, np.uint8)
    assert HWC3(gray).shape == (4, 5, 3) and (HWC3(gray) == 7).all()
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[0, 0, 3] = 255  # one opaque red pixel, the rest transparent (→ white)
    out = HWC3(rgba)
    assert tuple(out[0, 0]) == (255, 0, 0) and tuple(out[1, 1]) == (255, 255, 255)
    deep = np.full((2, 2, 3), 65535, np.uint16)
    assert HWC3(deep).dtype == np.uint8 and (HWC3(deep) == 255).all()
    with pytest.raises(TypeError):
        HWC3(np.zeros((2, 2), np.float64))


def test_resize_image_to_multiples_of_64():
    out = resize_image(np.zeros((300, 500, 3), np.uint8), 256)
    assert out.shape[0] % 64 == 0 and out.shape[1] % 64 == 0 and out.shape[0] == 256
    assert out.shape[1] == 448  # 500·256/300 = 426.7 → 448
