"""Imports run one way, for every package: `ldm` below `cldm`; neither, nor `annotator`, `pairs` or `evaluation`,
imports `training/`, so training can use the scoring without a circle; `training` and `demo` (the two
applications) import neither each other nor the benchmarks; `bench` sits on top and no package imports it."""

import ast
from pathlib import Path

import pytest
from repo_paths import ROOT

# package -> the first-party packages it must never import
FORBIDDEN = {
    "ldm": {"cldm", "training", "evaluation", "demo", "pairs", "bench"},
    "annotator": {"cldm", "training", "evaluation", "demo", "pairs", "bench"},
    "pairs": {"cldm", "training", "evaluation", "demo", "bench"},
    "cldm": {"training", "evaluation", "demo", "bench"},
    "evaluation": {"training", "demo", "bench"},
    "training": {"demo", "bench"},
    "demo": {"training", "bench"},
    "bench": set(),  # on top: it may import every package, and none imports it (checked above)
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


def test_every_package_is_covered_and_no_package_imports_a_script():
    packages = {p.parent.name for p in ROOT.glob("*/__init__.py")}
    assert packages == set(FORBIDDEN), f"give {sorted(packages ^ set(FORBIDDEN))} their rules"
    scripts = {p.stem for p in ROOT.glob("*.py")}
    wrong = {
        str(path.relative_to(ROOT)): sorted(_imports(path) & scripts)
        for package in FORBIDDEN
        if package != "bench"  # the benchmarks time the scripts' own main()
        for path in (ROOT / package).rglob("*.py")
    }
    assert not {k: v for k, v in wrong.items() if v}
