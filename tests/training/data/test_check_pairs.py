"""The pre-flight check of training pairs: every way a pair breaks training is found from headers and trailers."""

import io
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from pairs.prompt_file import read_prompt_file
from training.data.check_pairs import check_pairs, image_size, size_multiple


def _jpeg(size=(64, 64)) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (*size[::-1], 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


@pytest.fixture
def broken(toy_data, tmp_path):
    """A copy of the toy set whose first four pairs are broken, one way each."""
    root = tmp_path / "data"
    shutil.copytree(toy_data, root)
    rows = read_prompt_file(root / "prompt.json")
    (root / rows[0]["target"]).write_bytes((root / rows[0]["target"]).read_bytes()[:-200])  # cut short
    (root / rows[1]["source"]).write_text("not a picture")
    Image.new("RGB", (128, 64)).save(root / rows[2]["target"])  # PNG of another size
    (root / "target/odd.jpg").write_bytes(_jpeg((72, 72)))
    (root / "source/odd.png").write_bytes(_png((72, 72)))
    rows[3] = {**rows[3], "source": "source/odd.png", "target": "target/odd.jpg"}
    (root / "prompt.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root, rows


def _png(size) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size).save(buf, "PNG")
    return buf.getvalue()


def test_each_broken_pair_is_found_with_its_reason(broken):
    root, rows = broken
    bad = check_pairs(root, rows, multiple=64)
    assert [b.index for b in bad] == [0, 1, 2, 3]
    reasons = [b.reason for b in bad]
    assert "truncated PNG" in reasons[0] and "not an image" in reasons[1]
    assert "hint is 64×64 but its target is 128×64" in reasons[2] and "multiples of 64" in reasons[3]


def test_whole_files_pass_and_a_cut_jpeg_does_not(tmp_path):
    path = tmp_path / "a.jpg"
    path.write_bytes(_jpeg((96, 64)))
    assert image_size(path) == (96, 64)
    path.write_bytes(_jpeg()[:-300])
    with pytest.raises(ValueError, match="truncated JPEG"):
        image_size(path)


def test_the_multiple_follows_the_config(tiny_config, repo_root):
    from cldm.loading import load_config

    assert size_multiple(load_config(repo_root / "models/cldm_v15.yaml")["model"]) == 64
    assert size_multiple(tiny_config) == 16
