"""Check every training pair before step 1: each file is a whole image, the hint has its target's size, and the
sides fit the model. Headers and trailers are read instead of decoding, so 20,000 pairs take seconds."""

from __future__ import annotations

import io
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from annotator.util import MAX_PIXELS

TAIL_BYTES = 1024
# A whole file ends with its format's end marker: JPEG's EOI (the entropy-coded data stuffs every 0xFF byte,
# so EOI cannot occur inside it) and PNG's IEND chunk. A file cut short by a crash or a download lacks it.
END_MARKERS = {"JPEG": b"\xff\xd9", "PNG": b"IEND"}
EXIF_ORIENTATION = 0x0112
TURNED = (5, 6, 7, 8)  # EXIF orientations that swap width and height


@dataclass(frozen=True)
class BadPair:
    """One pair the model cannot train on, and why."""

    index: int
    source: str
    target: str
    reason: str

    def line(self) -> str:
        return f"{self.source} / {self.target}: {self.reason}"


class UnusableImage(ValueError):
    """The file is not a whole image; the message says why."""


def image_size(path: Path | bytes) -> tuple[int, int]:
    """(width, height) of an image file (or an image's bytes: a shard member) from its header, after checking that
    it is complete."""
    try:
        with Image.open(io.BytesIO(path) if isinstance(path, bytes) else path) as image:
            size, kind = image.size, image.format
            if _orientation(image) in TURNED:  # training reads it upright (read_rgb)
                size = size[::-1]
            if kind not in END_MARKERS:
                image.load()  # other formats have no cheap completeness check: decode them
    except (UnidentifiedImageError, Image.DecompressionBombError) as err:
        raise UnusableImage(f"not an image ({err})") from None
    except (OSError, SyntaxError) as err:  # PIL raises SyntaxError for some broken headers
        raise UnusableImage(f"cannot decode ({err})") from None
    if size[0] * size[1] > MAX_PIXELS:
        raise UnusableImage(f"{size[0]}×{size[1]} pixels is more than the {MAX_PIXELS:,} training reads")
    if kind in END_MARKERS:
        if isinstance(path, bytes):
            tail = path[-TAIL_BYTES:]
        else:
            with open(path, "rb") as f:
                f.seek(max(0, path.stat().st_size - TAIL_BYTES))
                tail = f.read()
        if END_MARKERS[kind] not in tail:
            raise UnusableImage(f"truncated {kind} (no end marker)")
    return size


def _orientation(image: Image.Image) -> int:
    """The EXIF orientation from the header alone (what `read_rgb` turns by), without decoding the pixels."""
    raw = image.info.get("exif")
    if not raw:
        return 1
    exif = Image.Exif()
    try:
        exif.load(raw)
    except (OSError, SyntaxError, ValueError):
        return 1
    return exif.get(EXIF_ORIENTATION, 1)


def size_multiple(model_config: Mapping[str, Any]) -> int:
    """What image sides must be a multiple of: the autoencoder's downsampling × the UNet's (SD1.5: 8 × 8 = 64)."""
    params = model_config["params"]
    autoencoder = 2 ** (len(params["first_stage_config"]["params"]["ddconfig"]["ch_mult"]) - 1)
    unet = 2 ** (len(params["unet_config"]["params"]["channel_mult"]) - 1)
    return autoencoder * unet


def check_pair(root: Path, row: Mapping[str, str], index: int, multiple: int) -> BadPair | tuple[int, int]:
    """The pair's (width, height), or why it cannot be trained on."""
    return _check_files(index, row, {k: root / row[k] for k in ("source", "target")}, multiple)


def _check_files(
    index: int, row: Mapping[str, str], files: Mapping[str, Path | bytes], multiple: int
) -> BadPair | tuple[int, int]:
    """(width, height) of a pair whose hint and target are `files` (named as `row` says), or why it is bad."""
    sizes = {}
    for key in ("source", "target"):
        try:
            sizes[key] = image_size(files[key])
        except UnusableImage as err:
            return BadPair(index, row["source"], row["target"], f"{row[key]}: {err}")
    (w, h), target = sizes["source"], sizes["target"]
    if (w, h) != target:
        return BadPair(
            index, row["source"], row["target"], f"hint is {w}×{h} but its target is {target[0]}×{target[1]}"
        )
    if w % multiple or h % multiple:
        return BadPair(index, row["source"], row["target"], f"{w}×{h}: sides must be multiples of {multiple}")
    return w, h


def check_pairs(root: str | Path, rows: Sequence[Mapping[str, str]], *, multiple: int) -> list[BadPair]:
    """The pairs of a prepared folder that cannot be trained on (empty when all are usable). A batch holds one
    size, so pairs of another size than most are bad too (e.g. left by an earlier preparation at another --size)."""
    root = Path(root)
    return _one_size([check_pair(root, row, i, multiple) for i, row in enumerate(rows)], rows)


def check_shard_pairs(dataset: Any, *, multiple: int) -> list[BadPair]:
    """check_pairs for the samples of a ShardPairs: their members' bytes, read through the shard index."""
    results, rows = [], []
    for i in range(len(dataset)):
        key = dataset.key(i)
        row = {"source": f"{key}.hint.png", "target": f"{key} (target)"}
        target, hint = dataset.member_ends(i)
        result = _check_files(i, row, {"source": hint, "target": target}, multiple)
        try:
            dataset.prompt(i)  # decoded as training decodes it: a caption that is not UTF-8 is a bad pair too
        except ValueError as err:
            result = BadPair(i, row["source"], row["target"], str(err))
        results.append(result)
        rows.append(row)
    return _one_size(results, rows)


def _one_size(results: list[BadPair | tuple[int, int]], rows: Sequence[Mapping[str, str]]) -> list[BadPair]:
    bad, sizes = [], {}
    for i, result in enumerate(results):
        if isinstance(result, BadPair):
            bad.append(result)
        else:
            sizes[i] = result
    if len(set(sizes.values())) > 1:
        (w0, h0), count = Counter(sizes.values()).most_common(1)[0]
        for i, (w, h) in sizes.items():
            if (w, h) != (w0, h0):
                reason = f"{w}×{h}, but {count} of the pairs are {w0}×{h0} and a batch holds one size"
                bad.append(BadPair(i, rows[i]["source"], rows[i]["target"], reason))
    return sorted(bad, key=lambda b: b.index)
