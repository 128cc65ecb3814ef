"""What a run folder holds and where it came from: `OUTPUT/run.json` names the run (a fresh id at every fresh
start), the data and initial weights it trains on, the settings it started with, and every checkpoint it wrote
with that checkpoint's parent. Resume, rotation and `last` read this record, never a folder listing, so files of
another run in the same folder are never counted, resumed or deleted.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ldm.util import write_text_atomically

logger = logging.getLogger(__name__)

RUN_FILE = "run.json"
RECORD_FORMAT = 1
CHUNK_BYTES = 8 << 20


class RunRecordError(ValueError):
    """A run record that is damaged, or that does not match what a resume is given; the message says what to do."""


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class FileRecord:
    """A file as it was when the run started: its content hash, and the size and mtime that spare rehashing it."""

    path: str
    size: int
    mtime_ns: int
    sha256: str

    @classmethod
    def of(cls, path: Path) -> FileRecord:
        stat = Path(path).stat()
        return cls(str(path), stat.st_size, stat.st_mtime_ns, file_sha256(Path(path)))

    def matches(self, path: Path) -> bool:
        """Whether `path` holds the same bytes (hashed again only when its size or mtime changed, e.g. a copy)."""
        stat = Path(path).stat()
        if (stat.st_size, stat.st_mtime_ns) == (self.size, self.mtime_ns):
            return True
        return stat.st_size == self.size and file_sha256(Path(path)) == self.sha256


@dataclass
class CheckpointEntry:
    """One resumable checkpoint of the run and the one it continued from (a path, for a branch's first)."""

    name: str
    step: int
    parent: str | None


@dataclass
class RunRecord:
    """The identity of one run and its lineage of checkpoints (see the module docstring)."""

    run_id: str
    data: str  # PairDataset.fingerprint() of the pairs trained on
    data_root: str
    init: FileRecord | None  # the initial ControlLDM weights; the frozen parts reload from it at every resume
    settings: dict[str, Any]  # the resolved config the run started with
    parent: dict[str, Any] | None = None  # a branch: {"run_id", "checkpoint", "step"} it started from
    checkpoints: list[CheckpointEntry] = field(default_factory=list)
    format: int = RECORD_FORMAT

    @classmethod
    def new(cls, *, data: str, data_root: str, settings: dict[str, Any], parent: dict[str, Any] | None) -> RunRecord:
        return cls(uuid.uuid4().hex, data, data_root, None, settings, parent)

    @classmethod
    def read(cls, folder: Path) -> RunRecord | None:
        path = Path(folder) / RUN_FILE
        if not path.is_file():
            return None
        try:
            raw = json.loads(path.read_text())
            if raw.get("format") != RECORD_FORMAT:
                raise ValueError(f"format {raw.get('format')!r}, expected {RECORD_FORMAT}")
            raw["init"] = FileRecord(**raw["init"]) if raw.get("init") else None
            raw["checkpoints"] = [CheckpointEntry(**c) for c in raw.get("checkpoints", [])]
            return cls(**raw)
        except (OSError, UnicodeDecodeError, ValueError, TypeError, KeyError) as err:
            raise RunRecordError(
                f"{path} is damaged ({err}); it says which run the folder's checkpoints belong to. Restore it, or "
                f"continue in a new folder: --resume-from {Path(folder) / 'checkpoints'}/step-N.ckpt --output NEW"
            ) from None

    def write(self, folder: Path) -> None:
        write_text_atomically(Path(folder) / RUN_FILE, json.dumps(asdict(self), indent=1) + "\n")

    def newest_first(self) -> list[CheckpointEntry]:
        return sorted(self.checkpoints, key=lambda c: c.step, reverse=True)

    def parent_of(self, name: str) -> str | None:
        """What checkpoint `name` continues from: the run's newest other one, or for a branch's first, where it
        started."""
        others = [c.name for c in self.checkpoints if c.name != name]
        return others[-1] if others else (self.parent or {}).get("checkpoint")

    def add(self, name: str, step: int) -> CheckpointEntry:
        """Record a checkpoint; one of the same name (the same step, written again) is replaced."""
        entry = CheckpointEntry(name, step, self.parent_of(name))
        self.checkpoints = [*(c for c in self.checkpoints if c.name != name), entry]
        return entry

    def continue_from(self, name: str) -> None:
        """Resuming `name`: checkpoints recorded after it (damaged ones that `last` skipped) leave the lineage."""
        kept = [c for c in self.checkpoints if c.step <= next(c.step for c in self.checkpoints if c.name == name)]
        dropped = [c.name for c in self.checkpoints if c not in kept]
        if dropped:
            logger.warning("the run goes on from %s; it leaves %s, which it will write again", name, dropped)
        self.checkpoints = kept

    def changed_settings(self, settings: dict[str, Any]) -> list[str]:
        """'key: old -> new' for every setting that differs from the run's start (flattened, dotted keys)."""
        before, now = _flatten(self.settings), _flatten(settings)
        return [
            f"{k}: {before.get(k)!r} -> {now.get(k)!r}"
            for k in sorted(before.keys() | now.keys())
            if before.get(k) != now.get(k)
        ]


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(node, dict):
        return {prefix.rstrip("."): node}
    flat: dict[str, Any] = {}
    for key, value in node.items():
        flat |= _flatten(value, f"{prefix}{key}.")
    return flat
