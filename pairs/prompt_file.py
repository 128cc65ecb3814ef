"""The prepared-data format the original ControlNet tutorial reads: JSON Lines of {source, target, prompt}."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from ldm.util import write_text_atomically
from pairs.paths import within

PROMPT_FILE = "prompt.json"
VAL_PROMPT_FILE = "prompt_val.json"


def write_prompt_file(path: Path, rows: Iterable[dict[str, str]]) -> None:
    lines = [json.dumps({"source": r["source"], "target": r["target"], "prompt": r["prompt"]}) for r in rows]
    write_text_atomically(path, "".join(line + "\n" for line in lines))


def read_prompt_file(path: Path) -> list[dict[str, str]]:
    """Rows of a prompt file; a clear error names the file and line of anything malformed, and of a path that
    leaves the file's folder (pairs/paths.py: a prompt file names files beside it, never elsewhere)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text (byte {err.start}); save it as UTF-8 JSON Lines") from None
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{number}: not JSON ({err.msg})") from None
        if not isinstance(row, dict) or not {"source", "target", "prompt"} <= row.keys():
            raise ValueError(f"{path}:{number}: each line needs 'source', 'target' and 'prompt'")
        for key in ("source", "target", "prompt"):
            if not isinstance(row[key], str) or (key != "prompt" and not row[key].strip()):
                what = "text" if key == "prompt" else "a relative file path"
                raise ValueError(f"{path}:{number}: '{key}' must be {what}, got {row[key]!r}")
        for key in ("source", "target"):
            within(Path(path).parent, row[key], where=f"{path}:{number} '{key}'")
        rows.append(row)
    return rows
