"""prepare_dataset.ipynb runs headless end to end on a tiny tree, with parameters injected papermill-style."""

import json

import nbformat
import pytest
from nbclient import NotebookClient
from repo_paths import ROOT

from annotator.canny import CannyThresholds
from pairs.manifest import edge_thresholds
from training.data.shard_dataset import ShardPairs


@pytest.mark.slow
def test_notebook_executes_on_a_tiny_tree(dogs_tree, tmp_path):
    nb = nbformat.read(ROOT / "prepare_dataset.ipynb", as_version=4)
    params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1
    out = tmp_path / "prepared"
    params[0].source += (
        f"\nIMAGES_DIR = {str(dogs_tree['images'])!r}\nANNOTATIONS_DIR = {str(dogs_tree['annotations'])!r}"
        f"\nOUT_DIR = {str(out)!r}\nSIZE = 64\nWORKERS = 1\nCANNY = (50, 150)\nSHARD_SIZE = 2"
    )
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs), "the pair grid is shown as a picture"
    rows = [json.loads(line) for line in (out / "prompt.json").read_text().splitlines()]
    assert rows and all((out / r["source"]).is_file() for r in rows)
    assert (out / "quarantine.tsv").read_text().count("\n") == 4
    assert edge_thresholds(out) == CannyThresholds(50, 150)  # recorded for training, the evaluation and the demo
    assert len(ShardPairs(out / "shards")) == len(rows)  # and the shards hold every training pair


def test_notebook_is_committed_without_outputs():
    nb = nbformat.read(ROOT / "prepare_dataset.ipynb", as_version=4)
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in nb.cells if c.cell_type == "code")
