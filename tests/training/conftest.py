"""Trees in the Stanford Dogs layout built from scikit-image's bundled photos, plus broken files."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import data

BREEDS = {"n02085620-Chihuahua": ["astronaut", "chelsea", "coffee"], "n02086240-Shih-Tzu": ["rocket", "cat", "horse"]}


def _photo(name: str) -> np.ndarray:
    img = getattr(data, name)()
    if img.dtype == bool:
        img = img.astype(np.uint8) * 255
    return img


def _xml(width: int, height: int, box: tuple[int, int, int, int]) -> str:
    xmin, ymin, xmax, ymax = box
    return (
        f"<annotation><size><width>{width}</width><height>{height}</height><depth>3</depth></size>"
        f"<object><name>dog</name><bndbox><xmin>{xmin}</xmin><ymin>{ymin}</ymin><xmax>{xmax}</xmax>"
        f"<ymax>{ymax}</ymax></bndbox></object></annotation>"
    )


def bomb_png(width: int = 30_000, height: int = 30_000) -> bytes:
    """A few dozen bytes whose header claims a 900-megapixel picture: what PIL calls a decompression bomb."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit grayscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def build_dogs_tree(root: Path) -> dict[str, Path]:
    """Good photos with boxes in two breeds, and one of each kind of bad file in a third."""
    images, annotations = root / "Images", root / "Annotation"
    for breed, names in BREEDS.items():
        wnid = breed.split("-")[0]
        (images / breed).mkdir(parents=True)
        (annotations / breed).mkdir(parents=True)
        for i, name in enumerate(names):
            img = Image.fromarray(_photo(name))
            stem = f"{wnid}_{i}"
            img.convert("RGB").save(images / breed / f"{stem}.jpg", quality=90)
            w, h = img.size
            (annotations / breed / stem).write_text(_xml(w, h, (w // 5, h // 6, w // 2, h - 5)))
    odd = images / "n02088364-beagle"
    odd.mkdir()
    rgb = _photo("astronaut")
    Image.fromarray(rgb).convert("CMYK").save(odd / "n02088364_cmyk.jpg")
    Image.fromarray(rgb[..., 0]).save(odd / "n02088364_gray.jpg")
    Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 128, np.uint8)])).save(odd / "n02088364_rgba.png")
    Image.fromarray(rgb).convert("P").save(odd / "n02088364_palette.gif")
    (odd / "n02088364_empty.jpg").write_bytes(b"")
    (odd / "n02088364_text.jpg").write_text("this is not a picture")
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG")
    (odd / "n02088364_truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (odd / "n02088364_bomb.png").write_bytes(bomb_png())
    return {"images": images, "annotations": annotations}


@pytest.fixture
def dogs_tree(tmp_path: Path) -> dict[str, Path]:
    return build_dogs_tree(tmp_path / "dogs_src")
