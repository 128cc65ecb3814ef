"""Image helpers for condition extraction: uint8 HWC arrays in and out."""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError


def HWC3(image: np.ndarray) -> np.ndarray:
    """Any gray, gray+alpha, RGB or RGBA image (uint8 or uint16) → uint8 H×W×3 RGB.

    Alpha is composited over white, as the original ControlNet helper does; 16-bit values are scaled
    down to 8 bits.
    """
    if not isinstance(image, np.ndarray):
        raise TypeError(f"expected a numpy array, got {type(image).__name__}")
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    if image.dtype != np.uint8:
        raise TypeError(f"expected a uint8 or uint16 image, got {image.dtype}")
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 2, 3, 4):
        raise ValueError(f"expected H×W, H×W×1, H×W×3 or H×W×4, got shape {image.shape}")
    channels = image.shape[2]
    if channels == 3:
        return image
    if channels in (1, 2):
        gray = image[:, :, :1]
        if channels == 1:
            return np.concatenate([gray] * 3, axis=2)
        image = np.concatenate([gray] * 3 + [image[:, :, 1:2]], axis=2)
    color = image[:, :, :3].astype(np.float32)
    alpha = image[:, :, 3:4].astype(np.float32) / 255.0
    return (color * alpha + 255.0 * (1.0 - alpha)).clip(0, 255).round().astype(np.uint8)


class UnreadableImage(ValueError):
    """A file (or bytes) that cannot be decoded as an image; the message names it (`name`) and says why (`reason`,
    for callers that name the file their own way)."""

    def __init__(self, reason: str, *, name: str | None = None) -> None:
        super().__init__(f"{name}: {reason}" if name else reason)
        self.reason = reason


# Pillow's own decompression-bomb bound (about 89 megapixels): larger pictures are refused before decoding.
MAX_PIXELS = Image.MAX_IMAGE_PIXELS


def read_rgb(
    source: str | Path | bytes, *, max_pixels: int = MAX_PIXELS, name: str | None = None, fit: int | None = None
) -> np.ndarray:
    """The project's one image decoder (prepare, import, training, the latent cache, evaluation, the demo): a file
    or an image's bytes → uint8 H×W×3 RGB, so edge maps are made from exactly the pixels training reads.

    The pixel count is checked from the header before decoding; EXIF orientation is applied once (phones store
    photos sideways and say so there); 16-bit and 32-bit values are scaled to 8 bits by their range, float images
    from [0, 1]; palette, CMYK and other modes become RGB; transparency is flattened onto white (as `HWC3`).
    `fit` gives at most that many pixels a side (a preview; a JPEG is decoded at that scale directly)."""
    label = name or ("image bytes" if isinstance(source, bytes) else str(source))
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise UnreadableImage(
                    f"{width}×{height} pixels is more than the {max_pixels:,} this reads (a decompression bomb, or "
                    "a picture far larger than training uses); shrink it or leave it out",
                    name=label,
                )
            if fit is not None:
                image.draft("RGB", (fit, fit))
            image.load()  # a full decode: a truncated file fails here
            rgb = _to_rgb8(ImageOps.exif_transpose(image))  # H×W×3 uint8
            if fit is not None and max(rgb.shape[:2]) > fit:
                small = Image.fromarray(rgb)
                small.thumbnail((fit, fit))
                rgb = np.asarray(small)
            return rgb
    except UnreadableImage:
        raise
    except UnidentifiedImageError:
        raise UnreadableImage("not an image file (unknown format)", name=label) from None
    except Image.DecompressionBombError as err:  # not an OSError
        raise UnreadableImage(f"decompression bomb ({err})", name=label) from None
    except (OSError, SyntaxError, ValueError) as err:
        raise UnreadableImage(f"cannot decode ({err})", name=label) from None


def _to_rgb8(image: Image.Image) -> np.ndarray:
    """A decoded PIL image of any mode → uint8 H×W×3 RGB, values scaled by the mode's range."""
    mode = image.mode
    if mode in ("P", "PA"):
        image, mode = image.convert("RGBA"), "RGBA"
    if mode.startswith("I"):  # I;16, I;16B, I (16-bit PNG and TIFF grey): 0..65535 → 0..255
        array = np.asarray(image).astype(np.int64)
        return HWC3((np.clip(array, 0, 65535) >> 8).astype(np.uint8))
    if mode == "F":  # float TIFF: [0, 1] → 0..255
        array = np.nan_to_num(np.asarray(image, dtype=np.float32))
        return HWC3((np.clip(array, 0.0, 1.0) * 255.0).round().astype(np.uint8))
    if mode not in ("L", "LA", "RGB", "RGBA"):  # 1, CMYK, YCbCr, LAB, HSV, RGBX, ...
        image = image.convert("RGB")
    return HWC3(np.asarray(image))


def resized_size(height: int, width: int, resolution: int) -> tuple[int, int]:
    """(height, width) after `resize_image`: the short side scaled to `resolution`, both rounded to multiples of 64."""
    if resolution < 64:
        raise ValueError(f"resolution must be at least 64, got {resolution}")
    k = resolution / min(height, width)
    return tuple(max(64, int(np.round(s * k / 64.0)) * 64) for s in (height, width))  # type: ignore[return-value]


def resize_image(image: np.ndarray, resolution: int) -> np.ndarray:
    """Scale so the short side is `resolution`, then round both sides to multiples of 64."""
    h, w = image.shape[:2]
    new_h, new_w = resized_size(h, w, resolution)
    interpolation = cv2.INTER_LANCZOS4 if resolution > min(h, w) else cv2.INTER_AREA
    return cv2.resize(image, (new_w, new_h), interpolation=interpolation)
