"""Pairs as WebDataset tar shards (`pairs-000000.tar`, ...): each sample is `KEY.jpg` or `KEY.png` (the target),
`KEY.hint.png` (the edge map) and `KEY.txt` (the prompt), next to each other in the tar, as webdataset reads them.

A shard folder also holds the held-out pairs as a small prepared folder (prompt_val.json, source/, target/: what the
control monitor and tool_eval_control read) and dataset.json. `ShardIndex` finds every sample's members by
reading the tar headers only, so a sample is read with one seek (any rank, any worker, any order: what exact
resume needs); it is cached beside the shards, checked against their sizes and modification times.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
import tarfile
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ldm.util import atomic_write
from pairs.paths import DataPathError, relative_name

logger = logging.getLogger(__name__)

SHARD_NAME = "pairs-{:06d}.tar"
INDEX_FILE = "shard_index.npz"
TARGET_EXTS = ("jpg", "png")
HINT_EXT = "hint.png"
TEXT_EXT = "txt"
FIELDS = ("target", "hint", "text")  # the index's columns: (offset, size) of each member


class ShardError(ValueError):
    """A shard that cannot be read as pairs; the message names the shard and the sample key, and what to do."""


def expand_shards(spec: str) -> list[str]:
    """`pairs-{000000..000099}.tar` → the 100 names (the brace range WebDataset writes), or the spec itself; a
    spec without braces that names a folder gives its `*.tar` files, sorted."""
    match = re.search(r"\{(\d+)\.\.(\d+)\}", spec)
    if match is None:
        path = Path(spec)
        return sorted(str(p) for p in path.glob("*.tar")) if path.is_dir() else [spec]
    first, last = match.group(1), match.group(2)
    width = len(first)
    names = [spec[: match.start()] + f"{i:0{width}d}" + spec[match.end() :] for i in range(int(first), int(last) + 1)]
    return names


def sample_members(key: str, target: bytes, target_ext: str, hint: bytes, prompt: str) -> list[tuple[str, bytes]]:
    if target_ext not in TARGET_EXTS:
        raise ValueError(f"a target is stored as {' or '.join(TARGET_EXTS)}, got {target_ext!r}")
    return [(f"{key}.{target_ext}", target), (f"{key}.{HINT_EXT}", hint), (f"{key}.{TEXT_EXT}", prompt.encode())]


def write_shard(path: Path, members: Iterable[tuple[str, bytes]]) -> None:
    """One tar of `members` (name, bytes), atomically and reproducibly: the same members give the same bytes."""
    with atomic_write(path) as tmp, tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))


@dataclass
class ShardIndex:
    """Where each sample's members lie: `shards[shard[i]]` holds sample i, whose target, hint and prompt are
    the byte ranges `offsets[i, f]`, `sizes[i, f]` (f over FIELDS); `png[i]` says the target is a PNG."""

    shards: list[str]
    stamps: list[tuple[int, int]]  # each shard's (size, mtime_ns) when indexed
    shard: np.ndarray  # N int32
    offsets: np.ndarray  # N×3 int64
    sizes: np.ndarray  # N×3 int64
    png: np.ndarray  # N bool
    keys: np.ndarray  # N str

    def __len__(self) -> int:
        return len(self.shard)

    @classmethod
    def of(cls, shards: Sequence[str], *, cache: Path | None = None) -> ShardIndex:
        """The index of `shards`, read from `cache` when it was made from these very files, else built (and saved
        there when the folder is writable)."""
        stamps = [_stamp(s) for s in shards]
        if cache is not None and cache.is_file():
            try:
                cached = cls.load(cache)
            except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as err:
                logger.warning("the shard index %s is damaged (%s): building it again from the shards", cache, err)
            else:
                if cached.shards == list(shards) and cached.stamps == stamps:
                    return cached
        index = cls.build(shards, stamps)
        if cache is not None:
            try:
                index.save(cache)
            except OSError as err:  # a read-only shard folder: the index is rebuilt at each start, only slower
                logger.info(
                    "the shard index cannot be cached at %s (%s): it is read from the shards each start",
                    cache,
                    err.strerror,
                )
        return index

    @classmethod
    def build(cls, shards: Sequence[str], stamps: list[tuple[int, int]]) -> ShardIndex:
        shard_ids, offsets, sizes, png, keys = [], [], [], [], []
        seen: dict[str, str] = {}  # key → the shard that holds it
        for number, path in enumerate(shards):
            for key, members in _samples(path):
                _check_key(path, key)
                if key in seen:
                    raise ShardError(
                        f"sample key {key!r} is in {seen[key]} and again in {path}: each sample needs its own key "
                        "across the shard list (two shard sets written apart both number from 0); train on one set, "
                        "or write them again as one (tool_convert_data.py)"
                    )
                seen[key] = path
                shard_ids.append(number)
                offsets.append([members[f][0] for f in FIELDS])
                sizes.append([members[f][1] for f in FIELDS])
                png.append(members["png"])
                keys.append(key)
        if not keys:
            raise ShardError(f"the shards {shards[0]}... hold no samples; write them again")
        return cls(
            list(shards),
            stamps,
            np.asarray(shard_ids, np.int32),
            np.asarray(offsets, np.int64).reshape(-1, 3),
            np.asarray(sizes, np.int64).reshape(-1, 3),
            np.asarray(png, bool),
            np.asarray(keys),
        )

    def save(self, path: Path) -> None:
        meta = json.dumps({"shards": self.shards, "stamps": self.stamps})
        with atomic_write(path) as tmp, open(tmp, "wb") as f:
            np.savez(
                f,
                meta=np.asarray(meta),
                shard=self.shard,
                offsets=self.offsets,
                sizes=self.sizes,
                png=self.png,
                keys=self.keys,
            )

    @classmethod
    def load(cls, path: Path) -> ShardIndex:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            stamps = [tuple(s) for s in meta["stamps"]]
            return cls(meta["shards"], stamps, data["shard"], data["offsets"], data["sizes"], data["png"], data["keys"])

    def fingerprint(self) -> str:
        """A digest of the shard names, sizes and modification times (as a folder's pairs are fingerprinted)."""
        return hashlib.sha256(json.dumps([self.shards, self.stamps]).encode()).hexdigest()


# How webdataset splits a member name into its sample key and extension: the key is the name up to the first dot
# of its last path component ("a.v2/001.hint.png" is sample "a.v2/001", extension "hint.png").
MEMBER_NAME = re.compile(r"^((?:.*/|)[^./]+)\.([^/]*)$")


def member_key(name: str) -> tuple[str, str]:
    """(sample key, extension) of a member name, as webdataset reads it; a name without an extension is its own
    key."""
    match = MEMBER_NAME.match(name)
    return (match.group(1), match.group(2)) if match else (name, "")


def _stamp(path: str) -> tuple[int, int]:
    try:
        stat = Path(path).stat()
    except OSError as err:
        raise ShardError(f"shard {path} cannot be read ({err.strerror}); check the path or the shard list") from None
    return stat.st_size, stat.st_mtime_ns


def _samples(path: str) -> Iterable[tuple[str, dict]]:
    """(key, {target/hint/text: (offset, size), png: bool}) of each sample in a shard, from its headers alone."""
    current: str | None = None
    members: dict = {}
    length = _stamp(path)[0]
    try:
        with tarfile.open(path, "r:") as tar:
            for info in tar:
                if not info.isfile():
                    continue
                key, ext = member_key(info.name)
                if key != current:
                    if current is not None:
                        yield current, _complete(path, current, members)
                    current, members = key, {}
                if ext in TARGET_EXTS:
                    members["target"], members["png"] = (info.offset_data, info.size), ext == "png"
                elif ext == HINT_EXT:
                    members["hint"] = (info.offset_data, info.size)
                elif ext == TEXT_EXT:
                    members["text"] = (info.offset_data, info.size)
                if info.offset_data + info.size > length:
                    raise tarfile.ReadError("unexpected end of data")
            end = tar.offset  # past the last member: a whole tar ends with two zero blocks there
        with open(path, "rb") as f:
            f.seek(end)
            if f.read(2 * tarfile.BLOCKSIZE) != bytes(2 * tarfile.BLOCKSIZE):
                raise tarfile.ReadError("no end-of-archive marker")
    except (tarfile.ReadError, EOFError, OSError) as err:
        raise ShardError(
            f"shard {path} is truncated or not a tar ({err}) after sample {current!r}; write it again, or leave it out "
            "of the shard list"
        ) from None
    if current is not None:
        yield current, _complete(path, current, members)


def _check_key(path: str, key: str) -> None:
    """A key becomes a file name when shards are unpacked: it stays a relative path (pairs/paths.py)."""
    try:
        relative_name(key, where=f"shard {path}, sample key", inside="the folder it is unpacked into")
    except DataPathError as err:
        raise ShardError(f"{err}; write the shard again with plain keys") from None


def _complete(path: str, key: str, members: dict) -> dict:
    missing = [
        name for name, need in (("jpg/png", "target"), (HINT_EXT, "hint"), (TEXT_EXT, "text")) if need not in members
    ]
    if missing:
        raise ShardError(
            f"shard {path}, sample {key!r}: no {' and no '.join(missing)} member (a sample needs {'/'.join(TARGET_EXTS)}, "
            f"{HINT_EXT} and {TEXT_EXT}, next to each other); write the shard again"
        )
    if any(members[f][1] == 0 for f in ("target", "hint")):
        raise ShardError(f"shard {path}, sample {key!r}: an empty image member; write the shard again")
    return members
