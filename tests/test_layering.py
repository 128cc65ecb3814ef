"""Imports run one way: `ldm` below `cldm`, and neither, nor `annotator`, `pairs` or `evaluation`, imports
`training/`, so training can use the scoring without a circle."""

import ast
from pathlib import Path

import pytest
from repo_paths import ROOT

# package -> the first-party packages it must never import
FORBIDDEN = {
    "ldm": {"cldm", "training", "evaluation", "demo", "pairs"},
    "annotator": {"cldm", "training", "evaluation", "demo", "pairs"},
    "pairs": {"cldm", "training", "evaluation", "demo"},
    "cldm": {"training", "evaluation", "demo"},
    "evaluation": {"training", "demo"},
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_import_runs_upward(package):
    wrong = {
        str(path.relative_to(ROOT)): sorted(_imports(path) & FORBIDDEN[package])
        for path in (ROOT / package).rglob("*.py")
    }
    assert not {k: v for k, v in wrong.items() if v}
