import copy
import json
import socket

import pytest
import torch

from cldm.model import create_model, load_state_dict
from cldm.weights import CheckpointMismatchError, UnsafeCheckpointError, load_weights, load_weights_from_file
from ldm.models.diffusion.ddpm import SCHEDULE_BUFFERS


@pytest.mark.parametrize(
    "config, manifest", [("cldm_v15.yaml", "sd15_controlnet_keys.json"), ("cldm_v21.yaml", "sd21_controlnet_keys.json")]
)
def test_full_model_state_dict_matches_the_public_format(repo_root, config, manifest, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("building a model must not touch the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    expected = json.loads((repo_root / "tests/data" / manifest).read_text())
    with torch.device("meta"):
        model = create_model(repo_root / "models" / config)
    state = model.state_dict()
    assert {k: list(v.shape) for k, v in state.items()} == expected["keys"]
    assert {k: str(v.dtype).removeprefix("torch.") for k, v in state.items()} == expected["dtypes"]
    counts = expected["meta"]["counts"]
    assert sum(p.numel() for p in model.control_model.parameters()) == counts["control_model"]
    assert sum(p.numel() for p in model.parameters()) == counts["total_params"]


def _real_file_state(model):
    """The tiny model's state as a real SD/ControlNet file holds it: position_ids, EMA entries, no logvar."""
    state = {k: v.clone() for k, v in model.state_dict().items() if k != "logvar"}
    state["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.arange(77)[None]
    state["model_ema.diffusion_modelinput_blocks00weight"] = torch.zeros(1)
    state["model_ema.decay"] = torch.tensor(0.9999)
    return state


def test_real_file_extras_load_without_silent_loss(tiny_model):
    state = _real_file_state(tiny_model)
    for v in state.values():
        if v.is_floating_point():
            v.add_(1.0)
    schedule = {k: tiny_model.state_dict()[k].clone() for k in SCHEDULE_BUFFERS if k in state}
    report = load_weights(tiny_model, state)
    assert report.kept_fresh == ["logvar"] and len(report.dropped_extras) == 3
    loaded = tiny_model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items() if k in loaded and k not in SCHEDULE_BUFFERS)
    # The diffusion schedule is the config's, whatever the file holds.
    assert schedule and all(torch.equal(loaded[k], v) for k, v in schedule.items())


def test_unknown_and_missing_keys_are_listed(tiny_model):
    state = _real_file_state(tiny_model)
    state["control_model.some_new_block.weight"] = torch.zeros(1)
    del state["control_model.zero_convs.0.0.bias"]
    state["model.diffusion_model.out.2.bias"] = torch.zeros(7)
    with pytest.raises(CheckpointMismatchError) as err:
        load_weights(tiny_model, state)
    message = str(err.value)
    assert "control_model.some_new_block.weight" in message and "control_model.zero_convs.0.0.bias" in message
    assert "model.diffusion_model.out.2.bias: file (7,)" in message


def test_control_only_file_loads_on_top(tiny_model):
    control = {k: v + 1 for k, v in tiny_model.state_dict().items() if k.startswith("control_model.")}
    load_weights(tiny_model, control, prefixes=("control_model.",))
    assert torch.equal(tiny_model.control_model.zero_convs[0][0].bias, control["control_model.zero_convs.0.0.bias"])
    with pytest.raises(CheckpointMismatchError, match="unexpected"):
        load_weights(
            tiny_model, {**control, "model.diffusion_model.out.2.bias": torch.zeros(4)}, prefixes=("control_model.",)
        )


@pytest.mark.parametrize("suffix", [".ckpt", ".pth", ".safetensors"])
def test_save_load_round_trip(tiny_model, tmp_path, suffix):
    state = tiny_model.state_dict()
    path = tmp_path / f"model{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save({"state_dict": state}, path)
    loaded = load_state_dict(path)
    assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], state[k]) for k in state)


def test_pickle_with_objects_needs_explicit_trust(tmp_path):
    path = tmp_path / "odd.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "callbacks": {"cfg": _Custom()}}, path)
    with pytest.raises(UnsafeCheckpointError, match=r"holds Python objects besides tensors \(test_model_io._Custom\)"):
        load_state_dict(path)
    assert torch.equal(load_state_dict(path, trusted=True)["w"], torch.zeros(1))


class _Custom:
    pass


def test_missing_file_and_unknown_extension(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_state_dict(tmp_path / "nope.ckpt")
    (tmp_path / "w.npz").write_bytes(b"x")
    with pytest.raises(ValueError, match="extension"):
        load_state_dict(tmp_path / "w.npz")


def test_missing_config_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="models/"):
        create_model(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  target: cldm.cldm.NoSuchModel\n")
    with pytest.raises(ValueError, match="NoSuchModel"):
        create_model(bad)


@pytest.mark.parametrize("write", ["safetensors", "zip pickle", "legacy pickle"])
def test_shapes_only_gives_meta_tensors_of_the_same_names_shapes_and_dtypes(tmp_path, write):
    state = {
        "control_model.w": torch.randn(3, 5),
        "model.h": torch.zeros(2, dtype=torch.bfloat16),
        "cond_stage_model.ids": torch.arange(7),
    }
    if write == "safetensors":
        from safetensors.torch import save_file

        path = tmp_path / "w.safetensors"
        save_file(state, str(path))
    else:  # the legacy (torch < 1.6) format cannot be memory-mapped and is read whole instead
        path = tmp_path / "w.ckpt"
        torch.save({"state_dict": state}, path, _use_new_zipfile_serialization=write == "zip pickle")
    shapes = load_state_dict(path, shapes_only=True)
    assert shapes.keys() == state.keys()
    for k, v in state.items():
        assert shapes[k].is_meta and shapes[k].shape == v.shape and shapes[k].dtype == v.dtype


def _write(state, path):
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save({"state_dict": state}, path)
    return path


@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
def test_loading_a_file_in_chunks_equals_loading_it_whole(tiny_model, tmp_path, suffix):
    state = _real_file_state(tiny_model)
    for v in state.values():
        if v.is_floating_point():
            v.add_(torch.randn_like(v))
    path = _write(state, tmp_path / f"w{suffix}")
    whole = copy.deepcopy(tiny_model)
    expected = load_weights(whole, state)
    report = load_weights_from_file(tiny_model, path, chunk_bytes=4096)  # many chunks
    assert (report.loaded, report.kept_fresh, sorted(report.dropped_extras)) == (
        expected.loaded,
        expected.kept_fresh,
        sorted(expected.dropped_extras),
    )
    ours, theirs = tiny_model.state_dict(), whole.state_dict()
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)


def test_a_file_that_does_not_fit_leaves_the_model_untouched(tiny_model, tmp_path):
    state = _real_file_state(tiny_model)
    state = {k: v + 1 if v.is_floating_point() else v for k, v in state.items()}
    state["model.diffusion_model.out.2.bias"] = torch.zeros(7)
    before = copy.deepcopy(tiny_model.state_dict())
    with pytest.raises(CheckpointMismatchError, match="model.diffusion_model.out.2.bias: file"):
        load_weights_from_file(tiny_model, _write(state, tmp_path / "w.safetensors"), chunk_bytes=4096)
    assert all(torch.equal(v, before[k]) for k, v in tiny_model.state_dict().items())


def test_ignored_file_keys_are_neither_loaded_nor_unexpected(tiny_model, tmp_path):
    state = {k: v + 1 for k, v in _real_file_state(tiny_model).items() if v.is_floating_point()}
    control_before = tiny_model.control_model.zero_convs[0][0].bias.clone()
    path = _write({**state, "control_model.zero_convs.0.0.bias": control_before + 5}, tmp_path / "w.safetensors")
    load_weights_from_file(tiny_model, path, exclude=("control_model.",), ignore=("control_model.",))
    assert torch.equal(tiny_model.control_model.zero_convs[0][0].bias, control_before)
    assert torch.equal(tiny_model.model.diffusion_model.out[2].bias, state["model.diffusion_model.out.2.bias"])
