"""How a prepared dataset was made: `dataset.json` beside `prompt.json` records the detector and its thresholds, the
size, crop and JPEG quality, the captioner, and the source file of every id (the Stanford Dogs preparation and the
toy set both write it). A re-run of the preparation compares it with what it is asked to do (refusing other
settings) and redoes an item whose source changed; training, the evaluation and the demo read the thresholds that
made the edge maps from it (`edge_thresholds`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from annotator.canny import DEFAULT_THRESHOLDS, CannyThresholds
from ldm.util import write_text_atomically

logger = logging.getLogger(__name__)

MANIFEST_FILE = "dataset.json"
MANIFEST_FORMAT = 1


@dataclass(frozen=True)
class HowMade:
    """The settings that decide every prepared file: two runs with equal ones write the same bytes."""

    detector: str
    low_threshold: int
    high_threshold: int
    size: int | None  # None: the sizes the source images have (an imported dataset)
    crop: str
    jpeg_quality: int | None  # None: the targets are PNG (the toy set)
    captioner: str
    caption_model: str | None

    @property
    def thresholds(self) -> CannyThresholds:
        return CannyThresholds(self.low_threshold, self.high_threshold)

    def differences(self, other: HowMade) -> list[str]:
        mine, theirs = asdict(self), asdict(other)
        return [f"{k} {mine[k]!r} (asked: {theirs[k]!r})" for k in mine if mine[k] != theirs[k]]


@dataclass
class SourceFile:
    """The original an id was made from, as it was then (a changed size or mtime means: make it again)."""

    path: str
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: Path) -> SourceFile:
        stat = Path(path).stat()
        return cls(str(path), stat.st_size, stat.st_mtime_ns)


@dataclass
class DatasetManifest:
    made: HowMade
    sources: dict[str, SourceFile] = field(default_factory=dict)
    format: int = MANIFEST_FORMAT

    @classmethod
    def read(cls, folder: Path) -> DatasetManifest | None:
        path = Path(folder) / MANIFEST_FILE
        if not path.is_file():
            return None
        try:
            raw: dict[str, Any] = json.loads(path.read_text())
            if raw.get("format") != MANIFEST_FORMAT:
                raise ValueError(f"format {raw.get('format')!r}, expected {MANIFEST_FORMAT}")
            return cls(HowMade(**raw["made"]), {k: SourceFile(**v) for k, v in raw["sources"].items()})
        except (OSError, UnicodeDecodeError, ValueError, TypeError, KeyError, AttributeError) as err:
            raise ValueError(
                f"{path} is damaged ({err}): how {folder} was made cannot be told; prepare into a new --out"
            ) from None

    def write(self, folder: Path) -> None:
        write_text_atomically(Path(folder) / MANIFEST_FILE, json.dumps(asdict(self), indent=1) + "\n")


def edge_thresholds(folder: str | Path) -> CannyThresholds:
    """The canny thresholds that made `folder`'s edge maps, from its dataset.json; data prepared before manifests
    (none there) is taken to be at the default, which is logged once per call. A damaged manifest raises ValueError."""
    manifest = DatasetManifest.read(Path(folder))
    if manifest is None:
        logger.info(
            "%s has no %s (prepared before manifests): its edge maps are taken to be canny %s; prepare it again to "
            "record how it was made",
            folder,
            MANIFEST_FILE,
            DEFAULT_THRESHOLDS,
        )
        return DEFAULT_THRESHOLDS
    if manifest.made.detector != "canny":
        raise ValueError(
            f"{Path(folder) / MANIFEST_FILE}: its edge maps come from {manifest.made.detector!r}, not canny"
        )
    return manifest.made.thresholds
