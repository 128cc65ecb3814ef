"""Paths that come from data (prompt-file rows, shard member names, a dataset's image paths, a server's held-out
list) stay inside the folder they belong to: one check that every reader and writer of such a path calls, so a
prompt file or a tar can never name where a file is read from or written to outside its root."""

from __future__ import annotations

import functools
import os
from pathlib import Path


@functools.lru_cache(maxsize=1024)
def _real_folder(path: str) -> str:
    return os.path.realpath(path)


class DataPathError(ValueError):
    """A path named by data leaves its root; the message names where it came from and the path."""


def relative_name(rel: str, *, where: str, inside: str = "its folder", absolute_ok: bool = False) -> str:
    """`rel` with `/` separators, refused with DataPathError when it is empty, absolute or climbs out with `..`:
    the check of the name alone, for a name that is not yet a file (a shard key); `within` adds the file system's
    view (symbolic links)."""
    text = rel.replace("\\", "/")
    absolute = text.startswith("/") or (len(text) > 1 and text[1] == ":")
    if not text or (absolute and not absolute_ok) or ".." in text.split("/"):
        raise DataPathError(
            f"{where}: {rel!r} is not a relative path inside {inside}; data may only name files inside its own folder"
        )
    return text


def within(root: str | Path, rel: str, *, where: str, absolute_ok: bool = False) -> Path:
    """`root / rel`, refused with DataPathError when `rel` is absolute, climbs out with `..`, or reaches outside
    `root` through a symbolic link (the path as the file system resolves it must stay under `root`). `absolute_ok`
    admits an absolute path that lies under `root` (what the datasets library writes into a dataset's cells)."""
    text = relative_name(rel, where=where, inside=str(root), absolute_ok=absolute_ok)
    path = os.path.join(root, text)
    real_root = _real_folder(str(root))
    # A folder's real path is resolved once (a prompt file names thousands of files in a few folders); the file
    # itself is resolved only when it is a link.
    folder, name = os.path.split(path)
    real = os.path.realpath(path) if os.path.islink(path) else os.path.join(_real_folder(folder), name)
    if real != real_root and not real.startswith(real_root.rstrip(os.sep) + os.sep):
        raise DataPathError(
            f"{where}: {rel!r} leads outside {root} (to {real}, through a symbolic link); data may only name files "
            "inside its own folder"
        )
    return Path(path)
