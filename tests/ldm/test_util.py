"""ldm.util.atomic_write: a failed write leaves the old file whole and nothing beside it."""

import os

import pytest

from ldm.util import atomic_write
from training.run_build import write_config


def test_a_write_that_fails_half_way_keeps_the_old_file(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("old: 1\n")
    with pytest.raises(OSError, match="disk full"), atomic_write(path) as tmp:
        tmp.write_text("new: ")  # half written...
        raise OSError("disk full")  # ...when the disk fills up
    assert path.read_text() == "old: 1\n" and os.listdir(tmp_path) == ["config.yaml"]


def test_a_finished_write_replaces_the_file_under_a_per_process_temp_name(tmp_path):
    path = tmp_path / "config.yaml"
    with atomic_write(path) as tmp:
        assert tmp.parent == tmp_path and str(os.getpid()) in tmp.name
        tmp.write_text("new: 2\n")
    assert path.read_text() == "new: 2\n" and os.listdir(tmp_path) == ["config.yaml"]
    write_config(path, {"model": {"target": "x"}})
    assert path.read_text() == "model:\n  target: x\n"
