"""Prepared pairs written as WebDataset shards, and shards read back as a prepared folder (tool_convert_data.py and
prepare_dogs --format webdataset call these).

`write_shards` packs a prepared folder's training pairs, `shard_size` to a tar (pairs-000000.tar, ...), and copies
its held-out pairs and dataset.json beside them (see pairs/shards.py). Image bytes and prompts are kept exactly:
`shards_to_folder` gives them back (tested).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2

from annotator.util import read_rgb
from ldm.util import replace_folder, write_bytes_atomically
from pairs.manifest import MANIFEST_FILE
from pairs.paths import within
from pairs.prompt_file import PROMPT_FILE, VAL_PROMPT_FILE, read_prompt_file, write_prompt_file
from pairs.shards import SHARD_NAME, ShardError, ShardIndex, expand_shards, sample_members, write_shard


def _target(path: Path) -> tuple[bytes, str]:
    """A target's bytes as stored, as jpg or png (another format is written as PNG)."""
    suffix = path.suffix.lower().lstrip(".")
    if suffix in ("jpg", "jpeg"):
        return path.read_bytes(), "jpg"
    if suffix == "png":
        return path.read_bytes(), "png"
    return cv2.imencode(".png", cv2.cvtColor(read_rgb(path), cv2.COLOR_RGB2BGR))[1].tobytes(), "png"


def _hint(path: Path) -> bytes:
    if path.suffix.lower() == ".png":
        return path.read_bytes()
    return cv2.imencode(".png", cv2.cvtColor(read_rgb(path), cv2.COLOR_RGB2BGR))[1].tobytes()


def write_shards(folder: str | Path, out: str | Path, *, shard_size: int = 1000) -> list[Path]:
    """Pack `folder`'s training pairs into shards in `out`, with its held-out folder and manifest; the shards."""
    if shard_size < 1:
        raise ValueError(f"--shard-size must be at least 1, got {shard_size}")
    folder, out = Path(folder), Path(out)
    rows = read_prompt_file(folder / PROMPT_FILE)
    if not rows:
        raise ValueError(f"{folder / PROMPT_FILE} lists no pairs")
    # The set is written whole beside `out` and then takes its place: a re-run (another --shard-size) leaves no
    # shard of the old set behind, and a stop half-way leaves the old set as it was.
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.with_name(f".{out.name}.writing")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    count = 0
    for number, start in enumerate(range(0, len(rows), shard_size)):
        members = []
        for i, row in enumerate(rows[start : start + shard_size], start=start):
            target, ext = _target(folder / row["target"])
            members += sample_members(f"{i:09d}", target, ext, _hint(folder / row["source"]), row["prompt"])
        write_shard(staging / SHARD_NAME.format(number), members)
        count = number + 1
    _copy_held_out(folder, staging)
    replace_folder(staging, out)
    return [out / SHARD_NAME.format(number) for number in range(count)]


def _copy_held_out(folder: Path, out: Path) -> None:
    """The held-out pairs stay a prepared folder (the monitor and tool_eval_control read them), with the manifest."""
    if (folder / MANIFEST_FILE).is_file():
        shutil.copy2(folder / MANIFEST_FILE, out / MANIFEST_FILE)
    if not (folder / VAL_PROMPT_FILE).is_file():
        return
    rows = read_prompt_file(folder / VAL_PROMPT_FILE)
    for row in rows:  # read_prompt_file has checked that each path stays inside its folder
        for rel in (row["source"], row["target"]):
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            write_bytes_atomically(out / rel, (folder / rel).read_bytes())
    write_prompt_file(out / VAL_PROMPT_FILE, rows)


def shards_to_folder(spec: str, out: str | Path) -> Path:
    """Unpack shards (a folder of them, or a `{000000..000099}` spec) into a prepared folder: the same bytes."""
    out = Path(out)
    shards = expand_shards(spec)
    index = ShardIndex.build(shards, [(0, 0)] * len(shards))
    (out / "source").mkdir(parents=True, exist_ok=True)
    (out / "target").mkdir(exist_ok=True)
    rows = []
    handles = {}
    try:
        for i in range(len(index)):
            shard = shards[index.shard[i]]
            f = handles.setdefault(shard, open(shard, "rb"))  # noqa: SIM115 (closed below, one per shard)
            target, hint, text = (_read(f, index.offsets[i, j], index.sizes[i, j]) for j in range(3))
            key, ext = str(index.keys[i]), "png" if index.png[i] else "jpg"
            where = f"shard {shard}, sample {key!r}"
            try:
                prompt = text.decode("utf-8")
            except UnicodeDecodeError as err:
                raise ShardError(f"{where}: its caption is not UTF-8 text (byte {err.start}); fix the shard") from None
            row = {"source": f"source/{key}.png", "target": f"target/{key}.{ext}", "prompt": prompt}
            for rel, data in ((row["target"], target), (row["source"], hint)):
                path = within(out, rel, where=where)  # the key names no place outside `out` (checked again here)
                path.parent.mkdir(parents=True, exist_ok=True)
                write_bytes_atomically(path, data)
            rows.append(row)
    finally:
        for f in handles.values():
            f.close()
    source = Path(spec) if Path(spec).is_dir() else Path(shards[0]).parent
    _copy_held_out(source, out)
    write_prompt_file(out / PROMPT_FILE, rows)
    return out


def _read(f, offset: int, size: int) -> bytes:
    f.seek(int(offset))
    return f.read(int(size))
