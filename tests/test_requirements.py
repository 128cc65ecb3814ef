"""Every third-party import is listed in the requirements, and every listed package is used or explained.

This reads the source and the requirement files, not the installed venv, so a missing install step
cannot hide behind a warm environment.
"""

from __future__ import annotations

import ast
import functools
import os
import importlib.metadata
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SKIP_DIRS = {".venv", ".git", "__pycache__", ".pytest_cache", "lightning_logs", "image_log"}
RUNTIME_FILE = ROOT / "requirements.txt"
DEV_FILE = ROOT / "requirements-dev.txt"


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_entries(path: Path) -> list[tuple[str, list[str]]]:
    """(normalised distribution name, comment lines directly above it) for each requirement line."""
    entries: list[tuple[str, list[str]]] = []
    comments: list[str] = []
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line.startswith("#"):
            comments.append(line)
            continue
        if not line or line.startswith("-r"):
            comments = []
            continue
        name = re.split(r"[<>=!~\[; ]", line, maxsplit=1)[0]
        entries.append((_normalise(name), comments))
        comments = []
    return entries


def _local_modules() -> set[str]:
    names = {p.stem for p in ROOT.glob("*.py")} | {"conftest", "batches"}
    names |= {p.name for p in ROOT.iterdir() if p.is_dir() and not p.name.startswith(".")}
    return names


def _python_files(under: Path) -> list[Path]:
    found = []
    for folder, dirs, files in os.walk(under):
        dirs[:] = [d for d in dirs if d not in SKIP_DIRS and not d.startswith(".")]
        found += [Path(folder) / f for f in files if f.endswith(".py")]
    return found


def _notebook_sources() -> list[tuple[Path, str]]:
    import json

    out = []
    for nb in ROOT.glob("*.ipynb"):
        cells = json.loads(nb.read_text())["cells"]
        code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
        # Jupyter magics and shell escapes are not Python.
        code = "\n".join(line for line in code.splitlines() if not line.lstrip().startswith(("%", "!")))
        out.append((nb, code))
    return out


def _optional_imports(tree: ast.AST) -> set[int]:
    """ids of import nodes inside `try:` blocks that catch ImportError: optional extras, not requirements."""
    optional: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try) and any(
                isinstance(h.type, ast.Name) and h.type.id in ("ImportError", "ModuleNotFoundError") for h in node.handlers):
            optional |= {id(n) for stmt in node.body for n in ast.walk(stmt) if isinstance(n, (ast.Import, ast.ImportFrom))}
    return optional


def _imported_top_modules(source: str, path: Path) -> set[str]:
    tree = ast.parse(source, filename=str(path))
    optional = _optional_imports(tree)
    mods: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in optional:
            continue
        if isinstance(node, ast.Import):
            mods |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            mods.add(node.module.split(".")[0])
    return mods


def _third_party(mods: set[str]) -> set[str]:
    local = _local_modules()
    return {m for m in mods if m not in sys.stdlib_module_names and m not in local and m != "__future__"}


@functools.lru_cache(maxsize=1)
def _module_to_distributions() -> dict[str, list[str]]:
    return importlib.metadata.packages_distributions()


def _distributions_for(module: str) -> set[str]:
    mapping = _module_to_distributions()
    return {_normalise(d) for d in mapping.get(module, [module])}


def _imports_by_scope() -> tuple[dict[str, list[Path]], dict[str, list[Path]]]:
    runtime: dict[str, list[Path]] = {}
    tests: dict[str, list[Path]] = {}
    sources = [(p, p.read_text()) for p in _python_files(ROOT)] + _notebook_sources()
    for path, text in sources:
        # Tests, benchmarks and the notebook (run in Jupyter, a dev extra) may use the dev requirements.
        dev_only = path.suffix == ".ipynb" or any(path.is_relative_to(ROOT / d) for d in ("tests", "bench"))
        scope = tests if dev_only else runtime
        for mod in _third_party(_imported_top_modules(text, path)):
            scope.setdefault(mod, []).append(path.relative_to(ROOT))
    return runtime, tests


def test_every_third_party_import_is_a_listed_requirement() -> None:
    runtime_listed = {name for name, _ in _requirement_entries(RUNTIME_FILE)}
    dev_listed = runtime_listed | {name for name, _ in _requirement_entries(DEV_FILE)}
    runtime, tests = _imports_by_scope()
    problems = []
    for scope, listed, file in ((runtime, runtime_listed, RUNTIME_FILE), (tests, dev_listed, DEV_FILE)):
        for mod, paths in sorted(scope.items()):
            if not _distributions_for(mod) & listed:
                problems.append(f"{mod} (imported by {paths[0]}) is not listed in {file.name}")
    assert not problems, "\n".join(problems)


def test_listed_packages_are_imported_or_explained() -> None:
    runtime, tests = _imports_by_scope()
    imported = set()
    for mod in runtime.keys() | tests.keys():
        imported |= _distributions_for(mod)
    unexplained = [
        f"{name} in {file.name}"
        for file in (RUNTIME_FILE, DEV_FILE)
        for name, comments in _requirement_entries(file)
        if name not in imported and not comments
    ]
    assert not unexplained, "listed but never imported, and no comment above it says why: " + ", ".join(unexplained)


@pytest.mark.parametrize("source, expected", [("import torch.nn as nn\nfrom PIL import Image", {"torch", "PIL"}),
                                              ("from . import x\nimport os", {"os"}),
                                              ("try:\n    import bnb\nexcept ImportError:\n    bnb = None", set()),
                                              ("try:\n    import bnb\nexcept OSError:\n    pass", {"bnb"})])
def test_import_scanner_finds_top_level_modules(source: str, expected: set[str]) -> None:
    assert _imported_top_modules(source, Path("x.py")) == expected


def test_unlisted_import_is_caught(tmp_path: Path) -> None:
    """The check itself must be able to fail: a package nobody lists is reported."""
    mods = _third_party(_imported_top_modules("import definitely_not_listed_pkg", tmp_path / "x.py"))
    listed = {name for name, _ in _requirement_entries(RUNTIME_FILE)}
    assert mods == {"definitely_not_listed_pkg"}
    assert not _distributions_for("definitely_not_listed_pkg") & listed
