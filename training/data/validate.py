"""Decode every image fully, upright; report unreadable ones without touching them."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from annotator.util import HWC3


class UnreadableImage(ValueError):
    """The file cannot be used as a training image; the message says why."""


def load_rgb(path) -> np.ndarray:
    """Fully decode `path` to uint8 H×W×3 RGB (gray, palette, CMYK, RGBA, 16-bit, GIF frame 0 all converted),
    turned upright by its EXIF orientation (phones store photos sideways and say so there)."""
    try:
        if path.stat().st_size == 0:
            raise UnreadableImage("empty file (0 bytes)")
        with Image.open(path) as img:
            img.load()  # forces a full decode: truncated files fail here
            ImageOps.exif_transpose(img, in_place=True)  # no copy when the orientation is already upright
            if img.mode in ("P", "PA"):
                img = img.convert("RGBA")
            elif img.mode == "CMYK" or img.mode.startswith(("YCbCr", "LAB", "HSV", "1", "F")):
                img = img.convert("RGB")
            array = np.asarray(img)
    except UnreadableImage:
        raise
    except UnidentifiedImageError:
        raise UnreadableImage("not an image file (unknown format)") from None
    except Image.DecompressionBombError as err:  # not an OSError: it would abort the whole run
        raise UnreadableImage(f"decompression bomb: {err}") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise UnreadableImage(f"cannot decode: {err}") from None
    if array.dtype == np.int32 or array.dtype == np.int16:  # 16-bit gray PNGs decode as I;16 / I
        array = np.clip(array, 0, 65535).astype(np.uint16)
    if min(array.shape[:2]) < 8:
        raise UnreadableImage(f"too small ({array.shape[1]}×{array.shape[0]})")
    return HWC3(array)
