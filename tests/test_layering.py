"""Imports run one way, for every package: `ldm` below `cldm`; neither, nor `annotator`, `pairs` or `evaluation`,
imports `training/`, so training can use the scoring without a circle; `training` and `demo` (the two
applications) import neither each other nor the benchmarks; `bench` sits on top and no package imports it.
Inside `training`, the data package (`training.data`) and what both sides share (`training.common`) never import
the run's machinery."""

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


# subpackage of training -> the parts of training it may import (itself included)
TRAINING_BELOW_THE_RUN = {
    "common": {"common"},
    "data": {"data", "common"},
}


def _training_parts(path: Path) -> set[str]:
    """The parts of `training` a file imports: `training.data.x` -> data, `training.run` -> run."""
    tree = ast.parse(path.read_text(), str(path))
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
            if node.module == "training":
                names += [f"training.{alias.name}" for alias in node.names]
    return {name.split(".")[1] for name in names if name.startswith("training.")}


@pytest.mark.parametrize("part", sorted(TRAINING_BELOW_THE_RUN))
def test_data_and_common_never_import_the_run(part):
    wrong = {
        str(path.relative_to(ROOT)): sorted(_training_parts(path) - TRAINING_BELOW_THE_RUN[part])
        for path in (ROOT / "training" / part).rglob("*.py")
    }
    assert not {k: v for k, v in wrong.items() if v}


def test_the_rule_sees_a_run_import(tmp_path):
    """The check above reads `from training import run` and `import training.settings` as imports of the run."""
    probe = tmp_path / "probe.py"
    probe.write_text("import training.settings\nfrom training import run\nfrom training.data import dataset\n")
    assert _training_parts(probe) == {"settings", "run", "data"}
