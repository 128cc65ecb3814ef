"""Checkpoint writing: streamed to disk, atomic, and nothing of an older checkpoint lost on failure."""

import pickle

import pytest
import torch

from training.checkpoint import StreamingCheckpointIO, list_checkpoints


def test_streaming_checkpoint_io_round_trips_and_leaves_only_the_file(tmp_path):
    io = StreamingCheckpointIO()
    ckpt = {"state_dict": {"control_model.w": torch.randn(4, 4).bfloat16()}, "global_step": 7}
    path = tmp_path / "checkpoints" / "step-0000007.ckpt"  # the folder does not exist yet
    io.save_checkpoint(ckpt, path)
    loaded = io.load_checkpoint(path)  # mapped, with the safe unpickler
    assert loaded["global_step"] == 7
    assert torch.equal(loaded["state_dict"]["control_model.w"], ckpt["state_dict"]["control_model.w"])
    assert [p.name for p in path.parent.iterdir()] == [path.name]
    assert list_checkpoints(path.parent) == [path]


class Unpicklable:
    def __reduce__(self):
        raise pickle.PicklingError("this object refuses to be pickled")


def test_a_failed_save_keeps_the_previous_file_and_leaves_no_temp_file(tmp_path):
    io = StreamingCheckpointIO()
    path = tmp_path / "step-0000001.ckpt"
    io.save_checkpoint({"global_step": 1}, path)
    before = path.read_bytes()
    with pytest.raises(pickle.PicklingError):
        io.save_checkpoint({"global_step": 2, "bad": Unpicklable()}, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_storage_options_are_refused(tmp_path):
    with pytest.raises(TypeError, match="storage_options"):
        StreamingCheckpointIO().save_checkpoint({}, tmp_path / "x.ckpt", storage_options={"a": 1})


def test_loading_a_missing_checkpoint_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="step-0000009.ckpt"):
        StreamingCheckpointIO().load_checkpoint(tmp_path / "step-0000009.ckpt")


def test_before_rename_sees_a_whole_file_that_does_not_have_its_name_yet(tmp_path):
    path, seen = tmp_path / "step-0000001.ckpt", []

    def enter(target):
        temp = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
        seen.append((target, target.exists(), len(temp) == 1 and torch.load(temp[0], weights_only=True)["x"]))

    StreamingCheckpointIO(before_rename=enter).save_checkpoint({"x": 3}, path)
    assert seen == [(path, False, 3)] and torch.load(path, weights_only=True) == {"x": 3}
