"""Each image into a training pair, in parallel processes: cropped square (the target JPEG) and its canny edge map
(the source PNG), written atomically, the edge map last so that its presence marks the item done."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
from tqdm import tqdm

from annotator.canny import DEFAULT_THRESHOLDS, CannyDetector, CannyThresholds
from ldm.util import write_bytes_atomically
from training.data.crop import crop_square
from training.data.discover import ImageRecord
from training.data.validate import UnreadableImage, load_rgb

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImageSettings:
    """How each image becomes a (target, edge map) pair."""

    size: int = 512
    crop: str = "bbox"
    low_threshold: int = DEFAULT_THRESHOLDS.low
    high_threshold: int = DEFAULT_THRESHOLDS.high
    jpeg_quality: int = 95

    def __post_init__(self) -> None:
        CannyThresholds(self.low_threshold, self.high_threshold)  # refused here, not in every worker


@dataclass
class Summary:
    """What a run did, for the log and the notebook."""

    found: int = 0
    prepared: int = 0
    reused: int = 0
    quarantined: dict[str, str] = field(default_factory=dict)
    captions_new: int = 0
    captions_replaced: int = 0
    train: int = 0
    val: int = 0
    seconds: float = 0.0

    def lines(self) -> list[str]:
        reasons = Counter(r.split(":")[0] for r in self.quarantined.values())
        out = [
            f"images found: {self.found}; prepared now: {self.prepared}; already done: {self.reused}",
            f"quarantined: {len(self.quarantined)}" + (f" ({dict(reasons)})" if reasons else ""),
            f"captions written now: {self.captions_new} (degenerate BLIP captions replaced: {self.captions_replaced})",
            f"pairs: {self.train} train + {self.val} validation; {self.seconds:.1f} s",
        ]
        return out


def pair_paths(out: Path, item_id: str) -> tuple[Path, Path]:
    return out / "target" / f"{item_id}.jpg", out / "source" / f"{item_id}.png"


def process_item(record: ImageRecord, out: Path, settings: ImageSettings) -> tuple[str, str | None, bool]:
    """Write target and edge map for one image: (item_id, failure reason or None, newly written)."""
    target_path, source_path = pair_paths(out, record.item_id)
    if target_path.exists() and source_path.exists():
        return record.item_id, None, False
    target_path.parent.mkdir(parents=True, exist_ok=True)
    source_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        rgb = load_rgb(record.path)
    except UnreadableImage as err:
        return record.item_id, str(err), False
    crop = settings.crop if record.boxes or settings.crop != "bbox" else "center"
    square = crop_square(rgb, size=settings.size, mode=crop, boxes=record.boxes)  # S×S×3
    edges = CannyDetector()(square, settings.low_threshold, settings.high_threshold)  # S×S
    ok_t, jpg = cv2.imencode(
        ".jpg", cv2.cvtColor(square, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, settings.jpeg_quality]
    )
    ok_s, png = cv2.imencode(".png", edges, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    assert ok_t and ok_s, "OpenCV failed to encode an in-memory image"
    write_bytes_atomically(target_path, jpg.tobytes())
    write_bytes_atomically(source_path, png.tobytes())  # written last: its presence marks the item done
    return record.item_id, None, True


def _process_star(args: tuple[ImageRecord, Path, ImageSettings]) -> tuple[str, str | None, bool]:
    return process_item(*args)


def _exit_with_parent(parent: int) -> None:
    """A pool worker's initializer: end the worker once the process that started it is gone (SIGKILL included,
    which leaves the pool no chance to stop its workers), instead of living on as an orphan."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def prepare_images(
    records: Sequence[ImageRecord], out: Path, settings: ImageSettings, *, workers: int, summary: Summary
) -> list[ImageRecord]:
    """Crop + canny every record in parallel processes; returns the usable records, in input order."""
    (out / "target").mkdir(parents=True, exist_ok=True)
    (out / "source").mkdir(parents=True, exist_ok=True)
    jobs = [(r, out, settings) for r in records]
    if workers <= 1:
        results = map(_process_star, jobs)
        results = list(tqdm(results, total=len(jobs), desc="crop+canny", unit="img"))
    else:
        pool = ProcessPoolExecutor(max_workers=workers, initializer=_exit_with_parent, initargs=(os.getpid(),))
        try:
            results = list(
                tqdm(pool.map(_process_star, jobs, chunksize=8), total=len(jobs), desc="crop+canny", unit="img")
            )
        finally:  # stopped or failed: the queued images are dropped, not worked through first
            pool.shutdown(wait=True, cancel_futures=True)
    by_id = {r.item_id: r for r in records}
    usable = []
    for item_id, failure, new in results:
        if failure is not None:
            summary.quarantined[str(by_id[item_id].path)] = failure
            logger.warning("skipped %s: %s", by_id[item_id].path, failure)
            continue
        summary.prepared += int(new)
        summary.reused += int(not new)
        usable.append(by_id[item_id])
    return usable
