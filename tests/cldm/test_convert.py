"""cldm/convert.py against diffusers and transformers: the same weights give the same outputs, both ways."""

import pytest
import torch
from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel

from cldm import convert
from ldm.util import instantiate_from_config


def _randomised(model, seed=0, *, parts=None):
    """Random weights everywhere in `parts` (default: the whole model; no zero convolutions left), so every
    tensor's mapping matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for part in parts or [model]:
            for p in part.parameters():
                p.normal_(std=0.05, generator=g)
    return model.eval()


def _diffusers(cls, config, state=None):
    """A diffusers model of `config`; given `state`, built without initialising and then holding those tensors."""
    kwargs = {k: v for k, v in config.items() if not k.startswith("_")}
    if state is None:
        return cls(**kwargs).eval()
    with torch.device("meta"):
        model = cls(**kwargs)
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval()


def _close(ours, theirs, scale):
    assert (ours - theirs).abs().max() <= 1e-4 * scale, ((ours - theirs).abs().max(), scale)


def _check_controlled_eps(model, steps=(3, 801)):
    state = model.state_dict()
    controlnet_state = convert.controlnet_to_diffusers(state, model)
    controlnet = _diffusers(ControlNetModel, convert.diffusers_controlnet_config(model), controlnet_state)
    unet = _diffusers(
        UNet2DConditionModel, convert.diffusers_unet_config(model), convert.unet_to_diffusers(state, model)
    )
    g = torch.Generator().manual_seed(1)
    h, b = 8, len(steps)  # one sample per timestep, so that one pass checks them all
    x = torch.randn(b, 4, h, h, generator=g)  # B×C×H×W
    hint = torch.rand(b, 3, 8 * h, 8 * h, generator=g)  # B×3×8H×8W
    context = torch.randn(b, 77, model.control_model.spec.context_dim, generator=g)  # B×L×D
    t = torch.tensor(steps)  # B
    with torch.no_grad():
        ours = model.control_model(x, hint, t, context)
        down, mid = controlnet(x, t, encoder_hidden_states=context, controlnet_cond=hint, return_dict=False)
        assert len(ours) == len(down) + 1
        scale = max(float(r.abs().max()) for r in ours)
        for a, b_ in zip(ours, [*down, mid]):
            _close(a, b_, scale)
        eps = model.apply_model(x, t, {"c_concat": [hint], "c_crossattn": [context]})  # the whole controlled ε
        theirs = unet(
            x,
            t,
            encoder_hidden_states=context,
            down_block_additional_residuals=down,
            mid_block_additional_residual=mid,
        ).sample
        _close(eps, theirs, float(eps.abs().max()))


def test_controlnet_and_unet_exports_match_diffusers(tiny_model):
    _check_controlled_eps(_randomised(tiny_model))


def test_vae_with_fewer_norm_groups_matches_diffusers(tiny_config):
    tiny_config["params"]["first_stage_config"]["params"]["ddconfig"]["norm_groups"] = 8  # as cldm_toy.yaml
    torch.manual_seed(0)
    model = _randomised(instantiate_from_config(tiny_config))
    vae = _diffusers(AutoencoderKL, convert.diffusers_vae_config(model))
    assert vae.config.norm_num_groups == 8
    vae.load_state_dict(convert.vae_to_diffusers(model.state_dict(), model), strict=True)
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(2))  # B×4×h×w
    with torch.no_grad():
        decoded = model.first_stage_model.decode(z)
        _close(decoded, vae.decode(z).sample, float(decoded.abs().max()))


def test_vae_and_text_encoder_exports_match_diffusers_and_transformers(tiny_model, tmp_path):
    model = _randomised(tiny_model)
    state = model.state_dict()
    vae = _diffusers(AutoencoderKL, convert.diffusers_vae_config(model))
    vae.load_state_dict(convert.vae_to_diffusers(state, model), strict=True)
    image = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(2)) * 2 - 1  # B×3×H×W
    with torch.no_grad():
        ours = model.first_stage_model.encode(image).mean
        _close(ours, vae.encode(image).latent_dist.mean, float(ours.abs().max()))
        decoded = model.first_stage_model.decode(ours)
        _close(decoded, vae.decode(ours).sample, float(decoded.abs().max()))
    for hub_layout in (True, False):  # the hub's `text_model.*` files, and transformers 5's own layout
        folder = tmp_path / f"text_encoder_{hub_layout}"
        CLIPTextConfig(**convert.clip_text_config(model)).save_pretrained(folder)
        save_file(
            convert.text_encoder_to_transformers(state, model, hub_layout=hub_layout),
            str(folder / "model.safetensors"),
        )
        text, info = CLIPTextModel.from_pretrained(folder, output_loading_info=True)
        assert not info["missing_keys"] and not info["unexpected_keys"], info
        ids = model.cond_stage_model.tokenize(["a red circle on a blue background"])
        with torch.no_grad():
            ours = model.cond_stage_model.transformer(ids)
            _close(ours, text(ids).last_hidden_state, float(ours.abs().max()))


def test_ldm_to_diffusers_and_back_is_bit_exact(tiny_model):
    state = _randomised(tiny_model).state_dict()
    back = {}
    for to, back_from in (
        (convert.unet_to_diffusers, convert.unet_from_diffusers),
        (convert.controlnet_to_diffusers, convert.controlnet_from_diffusers),
        (convert.vae_to_diffusers, convert.vae_from_diffusers),
        (convert.text_encoder_to_transformers, convert.text_encoder_from_transformers),
    ):
        back |= back_from(to(state, tiny_model), tiny_model)
    from ldm.models.diffusion.ddpm import SCHEDULE_BUFFERS

    assert set(back) == set(state) - set(SCHEDULE_BUFFERS)  # everything but the schedule, which is the config's
    assert all(torch.equal(back[k], state[k]) for k in back)


def test_weights_for_another_architecture_are_named(tiny_model):
    dstate = convert.controlnet_to_diffusers(tiny_model.state_dict(), tiny_model)
    dstate["controlnet_down_blocks.99.weight"] = torch.zeros(1)
    del dstate["controlnet_mid_block.weight"]
    with pytest.raises(convert.ConversionError, match=r"missing \['controlnet_mid_block.weight'\].*99"):
        convert.controlnet_from_diffusers(dstate, tiny_model)


def test_the_sd21_text_encoder_is_refused_with_a_reason(repo_root):
    from cldm.loading import load_config

    with torch.device("meta"):  # the architecture alone: nothing allocated
        model = instantiate_from_config(load_config(repo_root / "models/cldm_v21.yaml")["model"])
    with pytest.raises(convert.ConversionError, match="OpenCLIP"):
        convert.clip_text_config(model)
    assert convert.diffusers_unet_config(model)["attention_head_dim"] == [5, 10, 20, 20]
    assert convert.diffusers_unet_config(model)["use_linear_projection"] is True


@pytest.mark.slow
def test_the_sd15_architecture_matches_diffusers(repo_root):
    from cldm.loading import create_model

    with torch.device("meta"):  # no initialisation: the ControlNet and UNet are filled below, the rest is not used
        model = create_model(repo_root / "models/cldm_v15.yaml")
    model = model.to_empty(device="cpu")
    _check_controlled_eps(_randomised(model, parts=[model.control_model, model.model.diffusion_model]), steps=(3, 801))
