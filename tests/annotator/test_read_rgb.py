"""One image decoder for the whole project: EXIF orientation applied, 16-bit scaled by range, palette/CMYK/grey to
RGB, the pixel count checked before decoding; training, the import and prepare read the same pixels."""

import io

import cv2
import numpy as np
import pytest
from PIL import Image

from annotator.util import UnreadableImage, read_rgb
from training.data.validate import load_rgb


def _photo(h=48, w=80) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    image = np.stack([xx * 3 % 256, yy * 5 % 256, (xx + yy) % 256], axis=2).astype(np.uint8)
    image[10:30, 20:40] = 255  # a white block: edges a canny map finds
    return image


def _rotated_jpeg(path):
    """The photo stored sideways with EXIF orientation 6 (turn 90° clockwise to view), as phones write it."""
    stored = np.ascontiguousarray(np.rot90(_photo(), 1))  # what the sensor wrote
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(path, quality=95, exif=exif.tobytes())
    return path


def test_a_rotated_jpeg_is_read_upright(tmp_path):
    upright = read_rgb(_rotated_jpeg(tmp_path / "phone.jpg"))
    assert upright.shape == (48, 80, 3)
    assert np.abs(upright.astype(int) - _photo().astype(int)).mean() < 8  # the JPEG's loss, not a turn


def test_a_16_bit_png_is_scaled_by_its_range_not_clipped(tmp_path):
    grey16 = (np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)  # 0..65520
    Image.fromarray(grey16).save(tmp_path / "deep.png")
    image = read_rgb(tmp_path / "deep.png")
    assert image.dtype == np.uint8 and image.shape == (64, 64, 3)
    np.testing.assert_array_equal(image[..., 0], (grey16 >> 8).astype(np.uint8))
    assert image.std() > 50  # not all white or all black


@pytest.mark.parametrize("mode", ["P", "CMYK", "L", "LA", "RGBA", "1"])
def test_every_mode_becomes_8_bit_rgb(tmp_path, mode):
    Image.fromarray(_photo()).convert(mode).save(tmp_path / "x.tif" if mode == "CMYK" else tmp_path / "x.png")
    path = tmp_path / ("x.tif" if mode == "CMYK" else "x.png")
    image = read_rgb(path)
    assert image.dtype == np.uint8 and image.shape == (48, 80, 3)
    expected = np.asarray(Image.open(path).convert("RGB"))
    assert np.abs(image.astype(int) - expected.astype(int)).max() <= 1


def test_too_many_pixels_are_refused_before_decoding_naming_the_file(tmp_path):
    Image.new("L", (1000, 1000)).save(tmp_path / "big.png")
    with pytest.raises(UnreadableImage, match=r"big.png: 1000×1000 pixels"):
        read_rgb(tmp_path / "big.png", max_pixels=999_999)
    with pytest.raises(UnreadableImage, match="row 3"):
        read_rgb(b"not an image", name="row 3")


def test_prepare_training_and_bytes_read_the_same_pixels(tmp_path):
    """Edge maps are made from exactly the pixels training reads: prepare's loader, the dataset's reader and a
    shard member's bytes agree for a rotated JPEG and a 16-bit PNG."""
    paths = [_rotated_jpeg(tmp_path / "phone.jpg")]
    deep = np.full((64, 64), 4000, np.uint16)
    deep[16:48, 16:48] = 60000  # a bright square: PIL's plain convert("RGB") clips both to white, with no edge
    Image.fromarray(deep).save(tmp_path / "deep.png")
    paths.append(tmp_path / "deep.png")
    for path in paths:
        reference = read_rgb(path)
        np.testing.assert_array_equal(load_rgb(path), reference)
        np.testing.assert_array_equal(read_rgb(path.read_bytes()), reference)
        edges = cv2.Canny(reference, 100, 200)
        assert edges.any()


def test_a_truncated_file_is_unreadable(tmp_path):
    buffer = io.BytesIO()
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)  # does not compress
    Image.fromarray(noise).save(buffer, format="PNG")
    (tmp_path / "cut.png").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(UnreadableImage, match="cut.png"):
        read_rgb(tmp_path / "cut.png")
