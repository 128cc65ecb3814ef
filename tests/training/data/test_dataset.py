import json

import numpy as np
import pytest

from training.data.dataset import PairDataset
from training.data.toy_data import write_toy_dataset


def test_items_have_documented_keys_dtypes_and_ranges(toy_data):
    item = PairDataset(toy_data)[0]
    assert set(item) == {"jpg", "txt", "hint"}
    assert item["jpg"].dtype == np.float32 and item["jpg"].shape == (64, 64, 3)
    assert -1.0 <= item["jpg"].min() and item["jpg"].max() <= 1.0 and item["jpg"].min() < 0
    assert item["hint"].dtype == np.float32 and item["hint"].shape == (64, 64, 3)
    assert set(np.unique(item["hint"])) <= {0.0, 1.0} and item["hint"].max() == 1.0
    assert item["txt"].startswith("a ") and "circle" in item["txt"]


def test_flip_keeps_image_and_hint_in_sync(toy_data):
    plain, flipped = PairDataset(toy_data), PairDataset(toy_data, hflip=True, seed=1)
    outcomes = set()
    for i in range(len(plain)):
        a, b = plain[i], flipped[i]
        same = np.array_equal(a["jpg"], b["jpg"])
        assert same == np.array_equal(a["hint"], b["hint"])
        if not same:
            assert np.array_equal(a["jpg"][:, ::-1], b["jpg"]) and np.array_equal(a["hint"][:, ::-1], b["hint"])
        outcomes.add(same)
    assert outcomes == {True, False}


def test_empty_prompt_probability_and_reproducibility(toy_data):
    ds = PairDataset(toy_data, empty_prompt_p=0.5, seed=7)
    prompts = [ds[i]["txt"] for i in range(len(ds))]
    assert "" in prompts and any(prompts)
    assert prompts == [PairDataset(toy_data, empty_prompt_p=0.5, seed=7)[i]["txt"] for i in range(len(ds))]
    ds.set_epoch(1)
    assert [ds[i]["txt"] for i in range(len(ds))] != prompts


def test_missing_files_are_named_at_construction(toy_data, tmp_path):
    rows = [json.loads(line) for line in (toy_data / "prompt.json").read_text().splitlines()]
    broken = tmp_path / "broken"
    broken.mkdir()
    rows[0]["target"] = "target/gone.png"
    (broken / "prompt.json").write_text("".join(json.dumps(r) + "\n" for r in rows[:1]))
    with pytest.raises(FileNotFoundError, match="target/gone.png"):
        PairDataset(broken)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        PairDataset(tmp_path / "nowhere")


def test_toy_data_is_deterministic_by_seed(tmp_path):
    a = write_toy_dataset(tmp_path / "a", n=5, seed=1)
    b = write_toy_dataset(tmp_path / "b", n=5, seed=1)
    c = write_toy_dataset(tmp_path / "c", n=5, seed=2)
    files = sorted(p.relative_to(a) for p in a.rglob("*.png"))
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    assert (a / "prompt.json").read_text() == (b / "prompt.json").read_text() != (c / "prompt.json").read_text()
