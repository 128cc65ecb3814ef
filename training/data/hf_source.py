"""Which Hugging Face dataset a source is, and how to open it: a `save_to_disk` folder, parquet or arrow files, an
imagefolder with `metadata.jsonl`, or a hub id (`hf:ID`, through `load_dataset`); and diffusers'
`train_controlnet.py` column names."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pairs.prompt_file import PROMPT_FILE

HUB_PREFIX = "hf:"  # --data hf:fusing/fill50k: a hub id (a bare id could be a mistyped local path)
HELD_OUT_SPLITS = ("validation", "test")


@dataclass(frozen=True)
class Columns:
    """diffusers' train_controlnet.py flags and defaults: --image_column, --conditioning_image_column,
    --caption_column."""

    image: str = "image"
    conditioning_image: str = "conditioning_image"
    caption: str = "text"


class HFDataError(ValueError):
    """A dataset that cannot be imported; the message names it, the row or column, and what to do."""


def is_hf_dataset(source: str | Path) -> bool:
    """Whether `source` is a local Hugging Face dataset (not a prepared folder): a save_to_disk folder, parquet
    or arrow files, or an imagefolder with metadata.jsonl."""
    if is_hub_id(str(source)):
        return True
    path = Path(source)
    if path.is_file():
        return path.suffix in (".parquet", ".arrow")
    if not path.is_dir() or (path / PROMPT_FILE).is_file():
        return False
    markers = ("dataset_dict.json", "dataset_info.json", "state.json")
    return (
        any((path / m).is_file() for m in markers)
        or is_imagefolder(path)
        or any(path.glob("*.parquet"))
        or any(path.glob("*.arrow"))
    )


def is_imagefolder(path: Path) -> bool:
    """An imagefolder with its metadata at the top or per split (`train/metadata.jsonl`), as datasets reads it."""
    return any(
        (folder / name).is_file()
        for folder in (path, *(path / split for split in ("train", *HELD_OUT_SPLITS)))
        for name in ("metadata.jsonl", "metadata.csv")
    )


def is_hub_id(source: str) -> bool:
    return source.startswith(HUB_PREFIX)


def open_hf(source: str, split: str) -> Any:
    """`source`'s split as a `datasets.Dataset` (a DatasetDict's `split`); a hub id goes through load_dataset."""
    import datasets

    path = Path(source)
    try:
        if path.is_dir() and ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file()):
            loaded = datasets.load_from_disk(str(path))
        elif path.is_file():
            loaded = datasets.load_dataset(path.suffix[1:], data_files=str(path))
        elif path.is_dir() and is_imagefolder(path):
            loaded = datasets.load_dataset("imagefolder", data_dir=str(path))
        elif path.is_dir():
            kind = "parquet" if any(path.glob("*.parquet")) else "arrow"
            loaded = datasets.load_dataset(kind, data_files=split_files(sorted(path.glob(f"*.{kind}"))))
        else:
            # a hub id: the real code path (needs the network, or the dataset in the HF cache)
            loaded = datasets.load_dataset(source.removeprefix(HUB_PREFIX))
    except (FileNotFoundError, ValueError, OSError, IndexError, datasets.exceptions.DatasetNotFoundError) as err:
        # IndexError: what datasets raises for a save_to_disk folder of no rows
        raise HFDataError(
            f"{source} cannot be opened as a Hugging Face dataset ({type(err).__name__}: {err}); it must hold rows, "
            "as a save_to_disk folder, parquet/arrow files, an imagefolder with metadata.jsonl, or hf:HUB_ID"
        ) from None
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise HFDataError(
                f"{source} has no split {split!r} (it has {sorted(loaded)}); import the one to train on with "
                f"python -m training.data.hf_import {source} OUT --split NAME, and train on OUT"
            )
        return loaded[split], {s: loaded[s] for s in HELD_OUT_SPLITS if s in loaded}
    return loaded, {}


def split_files(files: list[Path]) -> dict[str, list[str]]:
    """Data files by split, as the hub names them (`train-00000-of-00002.parquet`, `validation.parquet`): a file
    whose name starts with a split's name belongs to it; the others are the training split."""
    splits: dict[str, list[str]] = {}
    for file in files:
        split = next((s for s in ("train", *HELD_OUT_SPLITS) if file.name.startswith(s)), "train")
        splits.setdefault(split, []).append(str(file))
    return splits


def check_columns(dataset: Any, columns: Columns, source: str) -> bool:
    """Refuse a missing image or caption column by name; say whether a conditioning column is there."""
    have = list(dataset.column_names)
    for flag, name in (("--image-column", columns.image), ("--caption-column", columns.caption)):
        if name not in have:
            raise HFDataError(f"{source} has no column {name!r} (its columns: {have}); name the right one with {flag}")
    if len(dataset) == 0:
        raise HFDataError(f"{source} holds no rows; nothing to train on")
    return columns.conditioning_image in have
