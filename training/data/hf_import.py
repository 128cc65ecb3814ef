"""Hugging Face datasets as CuteNet pairs: a `save_to_disk` folder, parquet or arrow files, an imagefolder with
`metadata.jsonl`, or a hub id (through `load_dataset`), with diffusers' `train_controlnet.py` column names.

The dataset is written once into the prepared-folder layout (source/ target/ prompt.json prompt_val.json
dataset.json), so training, its pre-flight checks, the latent cache, the monitor and exact resume work on it
unchanged. Image bytes are copied as they are; a dataset without a conditioning column gets the canny map of
its image at the default thresholds, and dataset.json records them. `dataset.json` also records the source
dataset's fingerprint: a folder imported from other data is never reused.

    python -m training.data.hf_import fusing/fill50k training/fill50k          # a hub id (needs the network)
    python -m training.data.hf_import path/to/imagefolder training/mine --caption-column prompt
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

from annotator.canny import DEFAULT_THRESHOLDS, CannyDetector, CannyThresholds
from annotator.util import UnreadableImage, read_rgb
from ldm.flags import HelpFormatter
from ldm.util import remove_stale_temp_files, write_bytes_atomically, write_text_atomically
from pairs.held_out import check_val_fraction, is_validation
from pairs.manifest import DatasetManifest, HowMade
from pairs.paths import DataPathError, within
from pairs.prompt_file import PROMPT_FILE, VAL_PROMPT_FILE, write_prompt_file
from training.common.run_lock import LOCK_FILE, RunFolderLocked, run_lock
from training.data.hf_source import (
    Columns,
    HFDataError,
    check_columns,
    is_hub_id,
    is_imagefolder,
    open_hf,
)

logger = logging.getLogger(__name__)

SOURCE_FILE = "hf_source.json"  # which dataset (and which fingerprint of it) a folder was imported from
SKIPPED_FILE = "import_skipped.txt"  # rows left out by --skip-bad, one line each


def image_bytes(value: Any, base: Path, where: str, *, contained: bool) -> bytes:
    """The stored bytes of an image cell: an Image feature read with decode=False ({bytes, path}) or a path
    (an imagefolder's extra image columns are paths relative to its folder). A path written as text in the data
    (metadata.jsonl), and with `contained` (an imagefolder) an Image cell's path too, must stay inside `base`; an
    Image cell of a saved dataset names the file the datasets library recorded, wherever it lies."""
    if isinstance(value, dict) and value.get("bytes"):
        return bytes(value["bytes"])
    path = value.get("path") if isinstance(value, dict) else value
    if not isinstance(path, str) or not path:
        raise HFDataError(f"{where}: no image in the cell (got {type(value).__name__})")
    if isinstance(value, dict) and not contained:
        file = Path(path)
    else:
        try:
            file = within(base, path, where=where, absolute_ok=True)  # data names its own files, no others
        except DataPathError as err:
            raise HFDataError(str(err)) from None
    try:
        return file.read_bytes()
    except OSError as err:
        raise HFDataError(f"{where}: cannot read {file} ({err.strerror})") from None


def decoded(data: bytes, where: str) -> tuple[str, np.ndarray]:
    """An image cell's file extension and its pixels exactly as training will read them (annotator.util.read_rgb:
    upright, 8-bit RGB, the pixel-count guard before decoding): what an edge map is made from. Decoded whole once,
    so a corrupt cell or a decompression bomb is refused by name."""
    try:
        pixels = read_rgb(data)  # H×W×3 uint8
    except UnreadableImage as err:
        raise HFDataError(
            f"{where}: not a readable image ({err.reason}); fix or drop that row (or --skip-bad)"
        ) from None
    with Image.open(io.BytesIO(data)) as image:  # the header only: the format it was stored in
        return {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp"}.get(image.format or "", ".png"), pixels


def import_split(
    dataset: Any,
    out: Path,
    columns: Columns,
    *,
    prefix: str,
    base: Path,
    thresholds: CannyThresholds,
    source: str,
    skip_bad: bool = False,
    use_hint: bool = True,
    contained: bool = False,
) -> tuple[list[dict[str, str]], list[str]]:
    """Write one split's pairs into `out` (target/, source/): the prompt-file rows, in the dataset's order, and the
    rows left out (with `skip_bad`; else the first bad row raises HFDataError). `use_hint`: take the edge maps from
    the conditioning column (else canny maps of the images), as the training split does."""
    import datasets

    has_hint = use_hint and columns.conditioning_image in dataset.column_names
    raw = dataset.cast_column(columns.image, datasets.Image(decode=False))
    if has_hint and isinstance(raw.features[columns.conditioning_image], datasets.Image):
        raw = raw.cast_column(columns.conditioning_image, datasets.Image(decode=False))
    rows, skipped = [], []
    for i, item in enumerate(raw):
        where = f"{source} row {i} ({prefix})"
        try:
            row = _import_row(
                item, f"{prefix}{i:08d}", out, columns, base, thresholds, where, use_hint=has_hint, contained=contained
            )
            rows.append(row)
        except HFDataError as err:
            if not skip_bad:
                raise
            skipped.append(str(err))
    return rows, skipped


def _import_row(
    item: dict,
    name: str,
    out: Path,
    columns: Columns,
    base: Path,
    thresholds: CannyThresholds,
    where: str,
    *,
    use_hint: bool,
    contained: bool,
) -> dict[str, str]:
    """Write one row's pair (or find it written); its prompt-file row."""
    target = image_bytes(item[columns.image], base, f"{where} column {columns.image!r}", contained=contained)
    caption = item[columns.caption]
    if not isinstance(caption, str):
        raise HFDataError(f"{where} column {columns.caption!r}: a caption must be text, got {caption!r}")
    target_ext, pixels = decoded(target, f"{where} column {columns.image!r}")
    target_rel = f"target/{name}{target_ext}"
    if use_hint:
        hint_where = f"{where} column {columns.conditioning_image!r}"
        hint = image_bytes(item[columns.conditioning_image], base, hint_where, contained=contained)
        source_rel = f"source/{name}{decoded(hint, hint_where)[0]}"
    else:  # the canny map of the image, as the prepared data's are made
        edges = CannyDetector()(pixels, thresholds.low, thresholds.high)  # H×W
        hint, source_rel = cv2.imencode(".png", edges)[1].tobytes(), f"source/{name}.png"
    if not (out / source_rel).is_file():
        write_bytes_atomically(out / target_rel, target)
        write_bytes_atomically(out / source_rel, hint)  # written last: its presence marks the pair done
    return {"source": source_rel, "target": target_rel, "prompt": caption}


def files_root(source: str) -> Path:
    """Where a dataset's image paths may point (relative ones are relative to it): its own folder, or for a hub id
    the Hugging Face cache its files were downloaded into."""
    if is_hub_id(source):
        import datasets

        return Path(datasets.config.HF_CACHE_HOME)
    path = Path(source)
    return path if path.is_dir() else path.parent


def import_hf(
    source: str,
    out: str | Path,
    *,
    columns: Columns = Columns(),
    split: str = "train",
    val_fraction: float = 0.02,
    thresholds: CannyThresholds = DEFAULT_THRESHOLDS,
    skip_bad: bool = False,
) -> Path:
    """Import `source` into the prepared folder `out` (resumable: pairs already written are kept); returns `out`.
    The held-out pairs are the dataset's validation (or test) split when it has one, else a stable share of
    `val_fraction`. A folder imported from another dataset, or with other settings, is refused."""
    try:
        check_val_fraction(val_fraction)
    except ValueError as err:
        raise HFDataError(str(err)) from None
    dataset, held_out = open_hf(source, split)
    out = Path(out)
    has_hint = check_columns(dataset, columns, source)
    record = {"source": str(source), "fingerprint": getattr(dataset, "_fingerprint", None), "columns": vars(columns)}
    made = HowMade("canny", thresholds.low, thresholds.high, None, "none", None, f"hf column {columns.caption}", None)
    out.mkdir(parents=True, exist_ok=True)
    with run_lock(out):
        remove_stale_temp_files(out)
        if _check_reuse(out, record, made) and (out / PROMPT_FILE).is_file():
            return out  # imported whole before, from this very dataset
        for sub in ("source", "target"):
            (out / sub).mkdir(exist_ok=True)
        base = files_root(source)
        contained = Path(source).is_dir() and is_imagefolder(Path(source))
        options = dict(base=base, thresholds=thresholds, source=source, skip_bad=skip_bad, contained=contained)
        rows, skipped = import_split(dataset, out, columns, prefix="", **options)
        val_rows: list[dict[str, str]] = []
        for name, part in held_out_like_training(held_out, columns, source, has_hint=has_hint).items():
            check_columns(part, columns, f"{source} ({name})")
            part_rows, part_skipped = import_split(part, out, columns, prefix=f"{name}-", use_hint=has_hint, **options)
            val_rows, skipped = val_rows + part_rows, skipped + part_skipped
        if skipped:
            write_text_atomically(out / SKIPPED_FILE, "".join(line + "\n" for line in skipped))
            logger.warning(
                "left out %d rows that cannot be imported (listed in %s), first: %s",
                len(skipped),
                out / SKIPPED_FILE,
                skipped[0],
            )
        if not val_rows:
            rows, val_rows = held_out_share(rows, val_fraction)
        if not has_hint:
            logger.info(
                "%s has no %r column: its edge maps are canny %s of the images",
                source,
                columns.conditioning_image,
                thresholds,
            )
        write_prompt_file(out / VAL_PROMPT_FILE, val_rows)
        write_prompt_file(out / PROMPT_FILE, rows)  # last: its presence marks a finished import
    logger.info("imported %d training and %d held-out pairs from %s into %s", len(rows), len(val_rows), source, out)
    return out


def held_out_like_training(
    held_out: dict[str, Any], columns: Columns, source: str, *, has_hint: bool
) -> dict[str, Any]:
    """The held-out splits whose edge maps can be made as the training split's are: a split without the
    conditioning column the training split has is left out (the monitor would score against maps of another
    kind), and the run says so; one that has the column the training split lacks gets canny maps, as training."""
    kept = {}
    for name, part in held_out.items():
        if has_hint and columns.conditioning_image not in part.column_names:
            logger.warning(
                "%s: the %s split has no %r column, so its edge maps could not be made as the training split's; "
                "a share of the training split is held out instead",
                source,
                name,
                columns.conditioning_image,
            )
            continue
        if not has_hint and columns.conditioning_image in part.column_names:
            logger.info("%s: the %s split's edge maps are made by canny, as the training split's are", source, name)
        kept[name] = part
    return kept


def held_out_share(rows: list[dict[str, str]], fraction: float) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """(training, held-out) rows: a pair is held out by a stable hash of its name, at least one on each side."""
    if len(rows) < 2:
        raise HFDataError("a dataset of one pair cannot be split into training and held-out pairs")
    held = [is_validation(r["target"], fraction) for r in rows]
    if not any(held):
        held[0] = True
    if all(held):
        held[0] = False
    return [r for r, h in zip(rows, held) if not h], [r for r, h in zip(rows, held) if h]


def _same_data(before: dict[str, Any], now: dict[str, Any]) -> bool:
    """Whether a recorded import was made from `now`'s data: the same fingerprint and columns (the same source
    where the dataset has no fingerprint), wherever the source lies now."""
    if before.get("columns") != now["columns"]:
        return False
    if before.get("fingerprint") is None or now["fingerprint"] is None:
        return before.get("source") == now["source"]
    return before["fingerprint"] == now["fingerprint"]


def recorded_source(folder: Path) -> str | None:
    """The dataset a finished import in `folder` was made from (None when `folder` holds none)."""
    if not (folder / PROMPT_FILE).is_file() or not (folder / SOURCE_FILE).is_file():
        return None
    try:
        return json.loads((folder / SOURCE_FILE).read_text()).get("source")
    except (OSError, ValueError, AttributeError):
        return None


def _check_reuse(out: Path, record: dict[str, Any], made: HowMade) -> bool:
    """Whether `out` was started from this dataset (an import resumes only into a folder of the same dataset,
    fingerprint and settings: another is refused); a new folder is marked with the source."""
    recorded = out / SOURCE_FILE
    if recorded.is_file():
        before = json.loads(recorded.read_text())
        if _same_data(before, record):
            if before["source"] != record["source"]:
                logger.info(
                    "%s moved to %s (the same data by its fingerprint): its import is used",
                    before["source"],
                    record["source"],
                )
        else:
            raise HFDataError(
                f"{out} was imported from other data or columns ({before['source']}, fingerprint "
                f"{before['fingerprint']}); import into a new folder, or delete {out} to import again"
            )
        manifest = DatasetManifest.read(out)
        if manifest is not None and manifest.made != made:
            raise HFDataError(f"{out} was imported with other settings: {'; '.join(manifest.made.differences(made))}")
        return True
    if any(p.name != LOCK_FILE for p in out.iterdir()):
        raise HFDataError(f"{out} is not empty and holds no {SOURCE_FILE}: import into a new or empty folder")
    write_text_atomically(recorded, json.dumps(record, indent=1) + "\n")
    DatasetManifest(made).write(out)
    return False


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("source", help="a save_to_disk folder, parquet/arrow files, an imagefolder, or a hub id")
    p.add_argument("out", type=Path, help="the prepared folder to write")
    p.add_argument("--image-column", default=Columns.image, help="the target images")
    p.add_argument("--conditioning-image-column", default=Columns.conditioning_image, help="the edge maps")
    p.add_argument("--caption-column", default=Columns.caption, help="the prompts")
    p.add_argument("--split", default="train", help="the split to train on (validation/test become held-out)")
    p.add_argument("--val-fraction", type=float, default=0.02, help="held-out share when there is no such split")
    p.add_argument("--skip-bad", action="store_true", help="leave out rows that cannot be imported (listed)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    columns = Columns(args.image_column, args.conditioning_image_column, args.caption_column)
    try:
        import_hf(
            args.source,
            args.out,
            columns=columns,
            split=args.split,
            val_fraction=args.val_fraction,
            skip_bad=args.skip_bad,
        )
    except (HFDataError, RunFolderLocked, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
