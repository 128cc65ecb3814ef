r"""Convert paired data between CuteNet's prepared folder, a Hugging Face dataset and WebDataset shards.

    python tool_convert_data.py training/dogs training/dogs_shards --to webdataset --shard-size 1000
    python tool_convert_data.py training/dogs_shards training/dogs_again --to folder
    python tool_convert_data.py training/dogs training/dogs_hf --to hf          # save_to_disk (--parquet: files)
    python tool_convert_data.py path/to/fill50k training/fill50k --to folder   # any Hugging Face layout, or hf:ID

The source's kind is recognised: a prepared folder has prompt.json, a shard folder (or a {000000..000099} spec)
holds *.tar, anything else Hugging Face can load is a dataset. Image bytes and prompts are kept exactly.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from ldm.flags import HelpFormatter
from pairs.prompt_file import PROMPT_FILE
from pairs.shards import ShardError
from training.common.run_lock import RunFolderLocked
from training.data.hf_export import export_hf
from training.data.hf_import import import_hf
from training.data.hf_source import Columns, HFDataError, is_hf_dataset
from training.data.shard_dataset import is_shard_source
from training.data.shard_writer import shards_to_folder, write_shards

KINDS = ("folder", "webdataset", "hf")


def kind_of(source: str) -> str:
    if (Path(source) / PROMPT_FILE).is_file():
        return "folder"
    if is_shard_source(source):
        return "webdataset"
    if is_hf_dataset(source):
        return "hf"
    raise ValueError(
        f"{source} is neither a prepared folder (prompt.json), WebDataset shards (*.tar) nor a Hugging Face dataset"
    )


def as_folder(source: str, kind: str, work: Path, columns: Columns) -> Path:
    """The source as a prepared folder (itself, or unpacked into `work`)."""
    if kind == "folder":
        return Path(source)
    if kind == "webdataset":
        return shards_to_folder(source, work)
    return import_hf(source, work, columns=columns)


def convert(source: str, out: Path, to: str, *, shard_size: int, parquet: bool, columns: Columns) -> Path:
    kind = kind_of(source)
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out} is not empty; convert into a new folder (nothing was written)")
    with tempfile.TemporaryDirectory(prefix="cutenet_convert_") as work:
        if to == "folder":
            return as_folder(source, kind, out, columns) if kind != "folder" else _refuse_same(source)
        folder = as_folder(source, kind, Path(work) / "pairs", columns)
        if to == "webdataset":
            write_shards(folder, out, shard_size=shard_size)
        else:
            export_hf(folder, out, parquet=parquet, columns=columns)
    return out


def _refuse_same(source: str) -> Path:
    raise ValueError(f"{source} is a prepared folder already; copy it, or convert it --to webdataset or hf")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("source", help="a prepared folder, a shard folder or spec, or a Hugging Face dataset / hf:ID")
    p.add_argument("out", type=Path, help="the folder to write (new or empty)")
    p.add_argument("--to", choices=KINDS, required=True, help="the layout to write")
    p.add_argument("--shard-size", type=int, default=1000, help="pairs per shard (--to webdataset)")
    p.add_argument("--parquet", action="store_true", help="--to hf: one parquet file per split, not save_to_disk")
    p.add_argument("--image-column", default=Columns.image, help="a Hugging Face dataset's target images")
    p.add_argument("--conditioning-image-column", default=Columns.conditioning_image, help="... its edge maps")
    p.add_argument("--caption-column", default=Columns.caption, help="... its prompts")
    args = p.parse_args(argv)
    columns = Columns(args.image_column, args.conditioning_image_column, args.caption_column)
    try:
        convert(args.source, args.out, args.to, shard_size=args.shard_size, parquet=args.parquet, columns=columns)
    except (ValueError, FileNotFoundError, RunFolderLocked, HFDataError, ShardError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {args.out} ({args.to})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
