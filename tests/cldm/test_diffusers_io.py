"""Diffusers folders in and out: a pipeline folder becomes the same model, a ControlNet goes both ways, and every
foreign or broken input is one clear line with nothing written."""

import json

import pytest
import torch
from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
from repo_paths import TINY_CONFIG
from transformers import CLIPTextConfig, CLIPTextModel

from cldm import convert
from cldm.diffusers_io import save_diffusers_controlnet
from cldm.loading import load_model
from cldm.weights import load_state_dict
from tool_add_control import main as add_control

TINY = str(TINY_CONFIG)


def _build(cls, config, seed):
    torch.manual_seed(seed)
    model = cls(**{k: v for k, v in config.items() if not k.startswith("_")})
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(std=0.05)
    return model.eval()


@pytest.fixture
def pipeline(tiny_model, tmp_path):
    """A diffusers SD pipeline folder at the tiny architecture with random weights, as save_pretrained writes it."""
    folder = tmp_path / "sd-pipeline"
    parts = {
        "unet": _build(UNet2DConditionModel, convert.diffusers_unet_config(tiny_model), 1),
        "vae": _build(AutoencoderKL, convert.diffusers_vae_config(tiny_model), 2),
        "controlnet": _build(ControlNetModel, convert.diffusers_controlnet_config(tiny_model), 3),
    }
    for name, model in parts.items():
        model.save_pretrained(tmp_path / name if name == "controlnet" else folder / name)
    torch.manual_seed(4)
    text = CLIPTextModel(CLIPTextConfig(**convert.clip_text_config(tiny_model))).eval()
    text.save_pretrained(folder / "text_encoder")
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    return folder, parts | {"text_encoder": text}


def _check_same_as_diffusers(model, parts, steps=(10, 700)):
    g = torch.Generator().manual_seed(0)
    x, hint = torch.randn(2, 4, 8, 8, generator=g), torch.rand(2, 3, 64, 64, generator=g)  # B×C×H×W, B×3×8H×8W
    ids = model.cond_stage_model.tokenize(["a red circle", "a blue circle on green"])
    with torch.no_grad():
        context = model.cond_stage_model.transformer(ids)  # B×L×D
        theirs = parts["text_encoder"](ids).last_hidden_state
        assert (context - theirs).abs().max() <= 1e-4 * context.abs().max()
        for step in steps:
            t = torch.full((2,), step)
            eps = model.apply_model(x, t, {"c_concat": [hint], "c_crossattn": [context]})
            down, mid = parts["controlnet"](
                x, t, encoder_hidden_states=context, controlnet_cond=hint, return_dict=False
            )
            ref = parts["unet"](
                x,
                t,
                encoder_hidden_states=context,
                down_block_additional_residuals=down,
                mid_block_additional_residual=mid,
            ).sample
            assert (eps - ref).abs().max() <= 1e-4 * ref.abs().max()
        image = torch.rand(1, 3, 64, 64, generator=g) * 2 - 1  # B×3×H×W
        z = model.first_stage_model.encode(image).mean
        assert (z - parts["vae"].encode(image).latent_dist.mean).abs().max() <= 1e-4 * z.abs().max()
        decoded = model.first_stage_model.decode(z)
        assert (decoded - parts["vae"].decode(z).sample).abs().max() <= 1e-4 * decoded.abs().max()


def test_a_pipeline_folder_and_a_diffusers_controlnet_load_as_the_same_model(pipeline, tmp_path):
    folder, parts = pipeline
    model, description = load_model(TINY, base=folder, control=tmp_path / "controlnet")
    assert "sd-pipeline" in description
    _check_same_as_diffusers(model.eval(), parts)


def test_fp16_and_bin_variants_load_too(pipeline, tmp_path):
    folder, parts = pipeline
    parts["unet"].half().save_pretrained(folder / "unet", variant="fp16")
    (folder / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    parts["vae"].save_pretrained(folder / "vae", safe_serialization=False)
    (folder / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    model, _ = load_model(TINY, base=folder)
    assert model.model.diffusion_model.input_blocks[0][0].weight.dtype == torch.float32  # fp16 values, fp32 model
    assert torch.equal(
        model.state_dict()["model.diffusion_model.input_blocks.0.0.weight"], parts["unet"].conv_in.weight.float()
    )


def test_tool_add_control_takes_a_pipeline_folder_and_a_controlnet_to_fine_tune(pipeline, tmp_path, capsys):
    folder, parts = pipeline
    out = tmp_path / "init.safetensors"
    assert add_control([str(folder), str(out), "--config", TINY, "--control-from", str(tmp_path / "controlnet")]) == 0
    assert "the ControlNet comes from" in capsys.readouterr().out
    model, _ = load_model(TINY, ckpt=out)
    _check_same_as_diffusers(model.eval(), parts, steps=(400,))
    plain = tmp_path / "plain.safetensors"
    assert add_control([str(folder), str(plain), "--config", TINY]) == 0  # the ControlNet copied from the UNet
    state = load_state_dict(plain)
    assert torch.equal(
        state["control_model.input_blocks.0.0.weight"], state["model.diffusion_model.input_blocks.0.0.weight"]
    )


def test_an_exported_controlnet_loads_in_diffusers_and_comes_back_bit_exact(tiny_model, tmp_path):
    with torch.no_grad():
        for p in tiny_model.control_model.parameters():
            p.normal_(std=0.05)
    state = {k: v for k, v in tiny_model.state_dict().items() if k.startswith("control_model.")}
    folder = save_diffusers_controlnet(tiny_model, tmp_path / "exported")
    loaded, info = ControlNetModel.from_pretrained(folder, output_loading_info=True)
    assert not any(info.values()), info
    model, _ = load_model(TINY, control=folder)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())


@pytest.mark.parametrize(
    "case, message",
    [
        ("sd2_unet", "cross_attention_dim=1024, but the config needs 32 (an SD2.x model"),
        ("sdxl_unet", "cross_attention_dim=2048, but the config needs 32 (an SDXL model"),
        ("no_text_encoder", "has no text_encoder/ folder"),
        ("truncated_unet", "damaged or incomplete"),
    ],
)
def test_a_foreign_or_broken_pipeline_is_one_line_and_nothing_is_written(pipeline, tmp_path, capsys, case, message):
    folder, _ = pipeline
    if case.endswith("_unet") and case != "truncated_unet":
        config = json.loads((folder / "unet/config.json").read_text())
        config["cross_attention_dim"] = 1024 if case == "sd2_unet" else 2048
        (folder / "unet/config.json").write_text(json.dumps(config))
    elif case == "no_text_encoder":
        for f in (folder / "text_encoder").iterdir():
            f.unlink()
        (folder / "text_encoder").rmdir()
    else:
        weights = folder / "unet/diffusion_pytorch_model.safetensors"
        weights.write_bytes(weights.read_bytes()[:-1000])
    out = tmp_path / "init.safetensors"
    assert add_control([str(folder), str(out), "--config", TINY]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and message in err and err.count("\n") == 0, err
    assert not out.exists()


def test_a_lora_or_a_controlnet_for_another_base_is_refused_by_name(tiny_model, tmp_path, capsys):
    from safetensors.torch import save_file

    lora = tmp_path / "dog_lora.safetensors"
    save_file({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 32)}, str(lora))
    assert add_control([str(lora), str(tmp_path / "o.safetensors"), "--config", TINY]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "dog_lora.safetensors" in err and err.count("\n") == 0
    assert not (tmp_path / "o.safetensors").exists()
    with pytest.raises(ValueError, match="dog_lora.safetensors: .*LoRA adapter weights"):
        load_model(TINY, control=lora)
    sd2 = tmp_path / "controlnet_sd21"
    _build(
        ControlNetModel, {**convert.diffusers_controlnet_config(tiny_model), "cross_attention_dim": 1024}, 5
    ).save_pretrained(sd2)
    with pytest.raises(ValueError, match="controlnet_sd21 holds a ControlNet with cross_attention_dim=1024"):
        load_model(TINY, control=sd2)


def test_a_scheduler_that_disagrees_with_the_config_is_reported(pipeline, caplog):
    folder, _ = pipeline
    (folder / "scheduler").mkdir()
    (folder / "scheduler/scheduler_config.json").write_text(
        json.dumps(
            {"num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.012, "beta_schedule": "scaled_linear"}
        )
    )
    with caplog.at_level("WARNING"):
        load_model(TINY, base=folder)
    assert "beta_start: 0.0001" in caplog.text


def test_no_weight_loader_takes_a_config_dict_beside_the_model():
    """The architecture comes from the model itself (its UNetSpec, the VAE's ddconfig), never a YAML dict passed
    along with it, which could disagree with the model in hand."""
    import inspect

    from cldm import diffusers_io, loading

    loaders = [loading.load_base, loading.load_control, diffusers_io.load_pipeline]
    loaders += [diffusers_io.load_diffusers_controlnet, diffusers_io.save_diffusers_controlnet]
    assert all("model_config" not in inspect.signature(f).parameters for f in loaders)
    assert all(
        "model_config" not in inspect.signature(getattr(convert, n)).parameters
        for n in dir(convert)
        if callable(getattr(convert, n)) and not n[0].isupper()
    )
