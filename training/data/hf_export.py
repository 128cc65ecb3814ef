"""A prepared folder as a Hugging Face dataset (`save_to_disk`, or one parquet file per split), in diffusers'
train_controlnet.py columns: `image`, `conditioning_image` (both Image features holding the files' bytes as they
are) and `text`. hf_import reads it back with the same bytes and prompts (tested)."""

from __future__ import annotations

from pathlib import Path

from pairs.prompt_file import PROMPT_FILE, VAL_PROMPT_FILE, read_prompt_file
from training.data.hf_source import Columns


def _split(folder: Path, rows: list[dict[str, str]], columns: Columns):
    import datasets

    features = datasets.Features(
        {
            columns.image: datasets.Image(),
            columns.conditioning_image: datasets.Image(),
            columns.caption: datasets.Value("string"),
        }
    )
    data = {
        columns.image: [{"bytes": (folder / r["target"]).read_bytes(), "path": Path(r["target"]).name} for r in rows],
        columns.conditioning_image: [
            {"bytes": (folder / r["source"]).read_bytes(), "path": Path(r["source"]).name} for r in rows
        ],
        columns.caption: [r["prompt"] for r in rows],
    }
    return datasets.Dataset.from_dict(data, features=features)


def export_hf(folder: str | Path, out: str | Path, *, parquet: bool = False, columns: Columns | None = None) -> Path:
    """Write `folder`'s pairs (prompt.json as `train`, prompt_val.json as `validation`) to `out`."""
    import datasets

    columns = columns or Columns()
    folder, out = Path(folder), Path(out)
    splits = {"train": read_prompt_file(folder / PROMPT_FILE)}
    if (folder / VAL_PROMPT_FILE).is_file():
        splits["validation"] = read_prompt_file(folder / VAL_PROMPT_FILE)
    dataset = datasets.DatasetDict({name: _split(folder, rows, columns) for name, rows in splits.items()})
    if parquet:
        out.mkdir(parents=True, exist_ok=True)
        for name, part in dataset.items():
            part.to_parquet(str(out / f"{name}.parquet"))
    else:
        dataset.save_to_disk(str(out))
    return out
