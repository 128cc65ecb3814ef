import re

import pytest
import torch
from repo_paths import TINY_CONFIG

from cldm.loading import load_base, load_config
from cldm.weights import build_control_init, load_state_dict, save_state, unet_twin
from tool_add_control import main
from training.run_plan import make_control_init

TINY = str(TINY_CONFIG)


@pytest.fixture
def sd_file(tiny_model, tmp_path):
    """A tiny SD checkpoint as real files hold it: no control_model, EMA extras, position_ids, no logvar."""
    torch.manual_seed(1)
    state = {}
    for k, v in tiny_model.state_dict().items():
        if k.startswith("control_model.") or k == "logvar":
            continue
        state[k] = torch.randn_like(v) if k.startswith("model.diffusion_model.") else v
    state["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.arange(77)[None]
    state["model_ema.decay"] = torch.tensor(0.9999)
    path = tmp_path / "sd.ckpt"
    torch.save({"state_dict": state}, path)
    return path, state


def test_twin_mapping():
    assert (
        unet_twin("control_model.input_blocks.1.0.in_layers.2.weight")
        == "model.diffusion_model.input_blocks.1.0.in_layers.2.weight"
    )
    with pytest.raises(ValueError):
        unet_twin("model.diffusion_model.out.0.weight")


def test_every_encoder_weight_is_copied_and_the_rest_kept_fresh(tiny_model, tiny_config, sd_file):
    path, sd_state = sd_file
    init = build_control_init(tiny_config, lambda m: load_base(m, path), seed=0)
    for key in init.copied:
        assert torch.equal(init.state[key], sd_state[unet_twin(key)])
    encoder = {
        k
        for k in tiny_model.state_dict()
        if k.startswith("control_model.") and k.split(".")[1] in ("time_embed", "input_blocks", "middle_block")
    }
    assert set(init.copied) == encoder
    assert {k.split(".")[1] for k in init.fresh} == {"input_hint_block", "zero_convs", "middle_block_out"}
    assert all(torch.count_nonzero(init.state[k]) == 0 for k in init.fresh if "zero_convs" in k)
    assert init.kept_fresh == ["logvar"]


@pytest.mark.parametrize("suffix", [".ckpt", ".safetensors"])
def test_tool_writes_a_loadable_checkpoint(tiny_model, sd_file, tmp_path, capsys, suffix):
    src, sd_state = sd_file
    out = tmp_path / f"control_ini{suffix}"
    assert main([str(src), str(out), "--config", TINY]) == 0
    printed = capsys.readouterr().out
    assert "copied" in printed and "control_model.input_hint_block" in printed and "logvar" in printed
    state = load_state_dict(out)
    tiny_model.load_state_dict(state, strict=True)
    key = "control_model.input_blocks.1.0.in_layers.2.weight"
    assert torch.equal(state[key], sd_state[unet_twin(key)])


def test_tool_refusals(sd_file, tmp_path, capsys):
    src, _ = sd_file
    existing = tmp_path / "exists.ckpt"
    existing.write_bytes(b"")
    for args, match in [
        ([str(tmp_path / "missing.ckpt"), str(tmp_path / "o.ckpt")], "does not exist"),
        ([str(src), str(existing)], "already exists"),
        ([str(src), str(tmp_path / "no_dir" / "o.ckpt")], "folder"),
        ([str(src), str(tmp_path / "o.bin")], "must end in"),
    ]:
        _refused([*args, "--config", TINY], match, capsys)
    diffusers = tmp_path / "sd-diffusers"
    (diffusers / "unet").mkdir(parents=True)
    _refused([str(diffusers), str(tmp_path / "o.ckpt"), "--config", TINY], "has no vae/ folder", capsys)
    (tmp_path / "photos").mkdir()
    _refused([str(tmp_path / "photos"), str(tmp_path / "o.ckpt"), "--config", TINY], "not a diffusers pipeline", capsys)
    assert not (tmp_path / "o.ckpt").exists()


def _refused(args, match, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and err.count("\n") == 0 and re.search(match, err), err


def test_tool_names_mismatches_and_points_sd2_files_at_the_sd2_config(sd_file, tmp_path, capsys):
    _, state = sd_file
    bad = dict(state)
    bad["model.diffusion_model.out.2.weight"] = torch.zeros(4, 64, 3, 3)
    torch.save({"state_dict": bad}, tmp_path / "bad.ckpt")
    _refused(
        [str(tmp_path / "bad.ckpt"), str(tmp_path / "o.ckpt"), "--config", TINY],
        r"out.2.weight: file \(4, 64, 3, 3\)",
        capsys,
    )
    sd2 = {"cond_stage_model.model.token_embedding.weight": torch.zeros(1), **state}
    torch.save({"state_dict": sd2}, tmp_path / "sd2.ckpt")
    _refused([str(tmp_path / "sd2.ckpt"), str(tmp_path / "o.ckpt"), "--config", TINY], "cldm_v21.yaml", capsys)
    assert not (tmp_path / "o.ckpt").exists()


def test_tool_output_depends_only_on_its_inputs_and_seed(sd_file, tmp_path):
    path, _ = sd_file
    outs = []
    for name, seed in (("a", "0"), ("b", "0"), ("c", "1")):
        torch.manual_seed(len(outs) + 100)  # whatever the caller's global RNG holds
        assert main([str(path), str(tmp_path / f"{name}.safetensors"), "--config", TINY, "--seed", seed]) == 0
        outs.append(load_state_dict(tmp_path / f"{name}.safetensors"))
    hint = "control_model.input_hint_block.0.weight"
    assert all(torch.equal(outs[0][k], outs[1][k]) for k in outs[0])
    assert not torch.equal(outs[0][hint], outs[2][hint])


def test_training_makes_the_same_initial_file_as_the_tool(sd_file, tmp_path):
    path, _ = sd_file
    assert main([str(path), str(tmp_path / "tool.safetensors"), "--config", TINY, "--seed", "3"]) == 0
    make_control_init(load_config(TINY)["model"], path, tmp_path / "train.safetensors", seed=3)
    tool, train = load_state_dict(tmp_path / "tool.safetensors"), load_state_dict(tmp_path / "train.safetensors")
    assert tool.keys() == train.keys() and all(torch.equal(tool[k], train[k]) for k in tool)


@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
def test_save_state_round_trips_tensors_and_metadata_and_leaves_no_temp_file(tmp_path, suffix):
    state = {"a.weight": torch.randn(3, 4).t(), "b": torch.arange(5)}  # a non-contiguous view too
    dst = tmp_path / f"out{suffix}"
    save_state(state, dst, metadata={"seed": "7"})
    loaded = load_state_dict(dst)
    assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], state[k]) for k in state)
    if suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(dst), "pt") as f:
            assert f.metadata() == {"seed": "7"}
    else:
        assert torch.load(dst)["metadata"] == {"seed": "7"}
    assert [p.name for p in tmp_path.iterdir()] == [dst.name]
