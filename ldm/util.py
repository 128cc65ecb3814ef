"""Build objects from `{target, params}` config nodes (like EDM's `construct_class_by_name`), and write files
atomically (and check, before long work, that they can be written)."""

from __future__ import annotations

import csv
import errno
import importlib
import io
import logging
import os
import re
import shutil
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil

logger = logging.getLogger(__name__)

FULL_DISK_BYTES = 1 << 20  # a failed write with less than this left free was a full disk
TEMP_NAME = re.compile(r"^\..+\.(\d+)\.tmp$")  # what `atomic_write` names its temporary files


def get_obj_from_str(path: str) -> Any:
    """Import `package.module.Name` and return `Name`."""
    module_name, _, attr = path.rpartition(".")
    if not module_name:
        raise ValueError(f"target {path!r} must be a dotted path such as 'cldm.cldm.ControlLDM'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"target {path!r}: cannot import module {module_name!r} ({err})") from err
    if not hasattr(module, attr):
        raise ValueError(f"target {path!r}: module {module_name!r} has no attribute {attr!r}")
    return getattr(module, attr)


def instantiate_from_config(config: Mapping[str, Any]) -> Any:
    """Instantiate `config["target"]` with keyword arguments `config["params"]`."""
    if not isinstance(config, Mapping) or "target" not in config:
        raise ValueError(f"expected a config node with a 'target' key, got {config!r}")
    params = config.get("params") or {}
    if not isinstance(params, Mapping):
        raise ValueError(f"'params' of {config['target']} must be a mapping, got {type(params).__name__}")
    cls = get_obj_from_str(str(config["target"]))
    try:
        return cls(**{str(k): v for k, v in params.items()})
    except TypeError as err:
        raise ValueError(f"cannot build {config['target']} from params {sorted(params)}: {err}") from err


@contextmanager
def atomic_write(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; once the body has written it, fsync it and rename it over `path`.

    A crash or an exception leaves `path` as it was (or absent) and no temporary file behind. The temporary
    name carries the process id, so processes writing the same file (DDP ranks) never share one.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except Exception as err:
        # torch.save and safetensors report a full disk as RuntimeError / SafetensorError without an errno: say it.
        if not isinstance(err, OSError) and shutil.disk_usage(tmp.parent).free < FULL_DISK_BYTES:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from err
        raise
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomically(path: str | Path, text: str) -> None:
    """A crash never leaves a half-written file (see `atomic_write`)."""
    with atomic_write(path) as tmp:
        tmp.write_text(text)


def write_bytes_atomically(path: str | Path, data: bytes) -> None:
    with atomic_write(path) as tmp:
        tmp.write_bytes(data)


def tsv_text(rows: Iterable[Sequence[str]]) -> str:
    """Tab-separated rows, quoted where a field holds a tab, a quote or a newline (a file name may)."""
    buf = io.StringIO()
    csv.writer(buf, delimiter="\t", lineterminator="\n").writerows(rows)
    return buf.getvalue()


class UnwritableOutput(ValueError):
    """An output path that cannot be written; the message names it and says why."""


def check_writable(path: str | Path, *, folder: bool = False) -> Path:
    """Check, before any long work, that `path` (a file, or with `folder` a folder) can be written: its folder is
    made if missing and a probe file is written and removed there. UnwritableOutput says what stands in the way
    (a file where a folder should be, a read-only disk, a full one)."""
    path = Path(path)
    where = path if folder else path.parent
    if folder and path.exists() and not path.is_dir():
        raise UnwritableOutput(f"{path} is a file, not a folder; choose another output folder")
    if not folder and path.is_dir():
        raise UnwritableOutput(f"{path} is a folder; give a file name")
    try:
        where.mkdir(parents=True, exist_ok=True)
        probe = where / f".write-check.{os.getpid()}.tmp"
        probe.write_bytes(b"0" * 4096)
        probe.unlink()
    except OSError as err:
        raise UnwritableOutput(
            f"cannot write {path} ({err.strerror}); choose a writable place with free space"
        ) from None
    return path


def remove_stale_temp_files(folder: str | Path) -> list[Path]:
    """Delete the temporary files under `folder` that `atomic_write` left when its process was killed (SIGKILL,
    a crash, a lost node): a checkpoint's is as large as the checkpoint. Files of a process still alive on this
    host are kept. Call it while holding the folder (e.g. under the run lock)."""
    removed = []
    for path in Path(folder).rglob(".*.tmp"):
        match = TEMP_NAME.match(path.name)
        if match and path.is_file() and not psutil.pid_exists(int(match.group(1))):
            path.unlink(missing_ok=True)
            removed.append(path)
    if removed:
        logger.warning("removed %d temporary files left by an interrupted write, first: %s", len(removed), removed[0])
    return removed


def replace_folder(new: str | Path, dst: str | Path) -> None:
    """Put the finished folder `new` in the place of `dst` (a set of files written whole, such as a shard set): the
    old `dst` is moved aside, `new` renamed in, and the old one removed, so `dst` is never a mix of the two."""
    new, dst = Path(new), Path(dst)
    old = dst.with_name(f".{dst.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if dst.exists():
        os.replace(dst, old)
    os.replace(new, dst)
    shutil.rmtree(old, ignore_errors=True)
