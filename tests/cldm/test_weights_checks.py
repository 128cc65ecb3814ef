"""Weight files that would break a run or make black images are refused with the file and the keys named."""

import pytest
import torch
from repo_paths import TINY_CONFIG

from cldm.loading import load_model
from cldm.weights import (
    CheckpointMismatchError,
    CorruptCheckpointError,
    NonFiniteWeightsError,
    UnsafeCheckpointError,
    load_state_dict,
    load_weights_from_file,
    save_state,
)
from tool_add_control import main as add_control


@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
def test_a_file_cut_short_is_named_as_damaged(tiny_model, tmp_path, suffix):
    path = tmp_path / f"model{suffix}"
    save_state(tiny_model.state_dict(), path)
    path.write_bytes(path.read_bytes()[:-5000])
    for read in (
        lambda: load_state_dict(path),
        lambda: load_state_dict(path, shapes_only=True),
        lambda: load_weights_from_file(tiny_model, path),
    ):
        with pytest.raises(CorruptCheckpointError, match=f"{path.name} cannot be read: the file is damaged"):
            read()


def test_garbage_is_named_as_damaged_and_every_tool_says_so_in_one_line(tmp_path, capsys):
    path = tmp_path / "v1-5-pruned.ckpt"
    path.write_bytes(b"not a checkpoint" * 100)
    with pytest.raises(CorruptCheckpointError, match="v1-5-pruned.ckpt"):
        load_state_dict(path)
    assert add_control([str(path), str(tmp_path / "out.ckpt"), "--config", str(TINY_CONFIG)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "damaged" in err and err.count("\n") == 0
    assert not (tmp_path / "out.ckpt").exists()


def test_integer_weights_are_refused(tiny_model, tmp_path):
    state = tiny_model.state_dict()
    key = "control_model.zero_convs.0.0.weight"
    state[key] = state[key].to(torch.int8)
    save_state(state, tmp_path / "int8.safetensors")
    with pytest.raises(CheckpointMismatchError, match=f"not floating point.*{key}: torch.int8"):
        load_weights_from_file(tiny_model, tmp_path / "int8.safetensors")


def test_nan_weights_are_refused_with_their_keys_unless_allowed(tiny_model, tmp_path):
    state = tiny_model.state_dict()
    state["control_model.input_hint_block.0.weight"][0, 0, 0, 0] = float("nan")
    state["model.diffusion_model.out.2.bias"][0] = float("inf")
    save_state(state, tmp_path / "nan.safetensors")
    with pytest.raises(NonFiniteWeightsError, match="2 tensors.*input_hint_block.0.weight.*--allow-nonfinite"):
        load_model(TINY_CONFIG, ckpt=tmp_path / "nan.safetensors")
    model, _ = load_model(TINY_CONFIG, ckpt=tmp_path / "nan.safetensors", allow_nonfinite=True)
    assert torch.isnan(model.control_model.input_hint_block[0].weight).any()


def test_a_bf16_file_keeps_the_fp32_schedule_of_the_config(tiny_model, tmp_path):
    expected = tiny_model.alphas_cumprod.clone()
    save_state({k: v.to(torch.bfloat16) for k, v in tiny_model.state_dict().items()}, tmp_path / "bf16.safetensors")
    assert load_state_dict(tmp_path / "bf16.safetensors")["alphas_cumprod"].dtype == torch.bfloat16
    model, _ = load_model(TINY_CONFIG, ckpt=tmp_path / "bf16.safetensors")
    assert model.alphas_cumprod.dtype == torch.float32 and torch.equal(model.alphas_cumprod, expected)
    assert model.alphas_cumprod[1] < 1.0  # bf16 rounds it to 1.0, and DDIM then divides 0 by 0


class _RunsACommand:
    def __reduce__(self):
        import os

        return os.system, ("echo this must never run",)


@pytest.mark.parametrize("zipped", [True, False], ids=["zip", "legacy"])
def test_a_pickle_that_runs_a_command_is_named_as_such_not_as_damaged(tmp_path, zipped):
    path = tmp_path / "model.ckpt"
    payload = {"state_dict": {"w": torch.zeros(1)}, "payload": _RunsACommand()}
    torch.save(payload, path, _use_new_zipfile_serialization=zipped)
    for shapes_only in (False, True):
        with pytest.raises(UnsafeCheckpointError, match=r"would call (posix|nt)\.system, which runs commands"):
            load_state_dict(path, shapes_only=shapes_only)


def test_a_whole_pickled_module_is_named_not_called_damaged(tmp_path):
    path = tmp_path / "model.pth"
    torch.save(torch.nn.Linear(2, 2), path)  # torch.save(model), not its state_dict: a common mistake
    with pytest.raises(UnsafeCheckpointError, match=r"holds Python objects besides tensors \(torch\.nn\.modules"):
        load_state_dict(path)


def test_a_safetensors_file_named_ckpt_is_told_to_be_renamed(tiny_model, tmp_path):
    path = tmp_path / "model.ckpt"
    save_state(tiny_model.state_dict(), tmp_path / "model.safetensors")
    (tmp_path / "model.safetensors").rename(path)
    with pytest.raises(
        CorruptCheckpointError, match="is a safetensors file named .ckpt: rename it to model.safetensors"
    ):
        load_state_dict(path, shapes_only=True)


@pytest.mark.parametrize("zipped", [True, False], ids=["zip", "legacy"])
def test_a_pickle_cut_short_anywhere_is_named_as_damaged(tmp_path, zipped):
    whole = tmp_path / "whole.ckpt"
    torch.save(
        {"state_dict": {"w": torch.arange(300.0), "b": torch.ones(3)}}, whole, _use_new_zipfile_serialization=zipped
    )
    data = whole.read_bytes()
    cut = tmp_path / "cut.ckpt"
    for length in sorted({1, 8, 20, 64, 100, 200, 300, 500, *range(0, len(data), max(1, len(data) // 40))} - {0}):
        cut.write_bytes(data[:length])
        for shapes_only in (False, True):
            with pytest.raises(CorruptCheckpointError, match="cut.ckpt"):
                load_state_dict(cut, shapes_only=shapes_only)


def test_a_refusal_is_named_after_torchao_registered_its_dtypes_as_safe(tmp_path):
    import torchao.quantization.quant_primitives  # noqa: F401 (registers torch.float8_e4m3fn and others as safe)

    path = tmp_path / "model.pth"
    torch.save(torch.nn.Linear(2, 2), path)
    with pytest.raises(UnsafeCheckpointError, match="torch.nn.modules.linear.Linear"):
        load_state_dict(path)
