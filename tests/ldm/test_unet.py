import json

import pytest
import torch
from repo_paths import architecture

from ldm.modules.diffusionmodules.openaimodel import UNetModel
from ldm.modules.diffusionmodules.util import timestep_embedding

TINY = dict(architecture("cldm_tiny.yaml"), out_channels=4)
SD15 = dict(architecture("cldm_v15.yaml"), out_channels=4)
SD21 = dict(architecture("cldm_v21.yaml"), out_channels=4)


def _manifest(repo_root, name, prefix):
    keys = json.loads((repo_root / "tests" / "data" / name).read_text())["keys"]
    return {k[len(prefix) :]: v for k, v in keys.items() if k.startswith(prefix)}


@pytest.mark.parametrize("params, manifest", [(SD15, "sd15_controlnet_keys.json"), (SD21, "sd21_controlnet_keys.json")])
def test_full_size_unet_matches_public_keys_and_shapes(repo_root, params, manifest):
    with torch.device("meta"):
        unet = UNetModel(**params)
    ours = {k: list(v.shape) for k, v in unet.state_dict().items()}
    assert ours == _manifest(repo_root, manifest, "model.diffusion_model.")


def test_timestep_embedding_is_cos_then_sin():
    t = torch.tensor([0, 10])
    emb = timestep_embedding(t, 8)
    freqs = torch.exp(-torch.log(torch.tensor(10000.0)) * torch.arange(4) / 4)
    expected = torch.cat([torch.cos(10 * freqs), torch.sin(10 * freqs)])
    torch.testing.assert_close(emb[1], expected)
    assert torch.equal(emb[0], torch.cat([torch.ones(4), torch.zeros(4)]))


def test_forward_shape_and_dependence_on_context():
    torch.manual_seed(0)
    unet = UNetModel(**TINY)
    for p in unet.parameters():  # zero-initialised output layers would hide the context otherwise
        torch.nn.init.normal_(p, std=0.05)
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([3, 500])
    c1, c2 = torch.randn(2, 5, 32), torch.randn(2, 5, 32)
    out = unet(x, t, c1)
    assert out.shape == (2, 4, 8, 8)
    assert not torch.allclose(out, unet(x, t, c2))


def test_checkpointing_gives_same_outputs_and_grads():
    torch.manual_seed(0)
    plain = UNetModel(**TINY)
    for p in plain.parameters():
        torch.nn.init.normal_(p, std=0.05)
    ckpt = UNetModel(**TINY, use_checkpoint=True)
    ckpt.load_state_dict(plain.state_dict())
    x, t, c = torch.randn(2, 4, 8, 8), torch.tensor([1, 999]), torch.randn(2, 5, 32)
    outs, grads = [], []
    for model in (plain, ckpt):
        out = model(x, t, c)
        out.square().mean().backward()
        outs.append(out.detach())
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(outs[0], outs[1])
    torch.testing.assert_close(grads[0], grads[1])


def test_bf16_autocast_runs_close_to_fp32():
    torch.manual_seed(0)
    unet = UNetModel(**TINY)
    for p in unet.parameters():
        torch.nn.init.normal_(p, std=0.05)
    x, t, c = torch.randn(1, 4, 8, 8), torch.tensor([10]), torch.randn(1, 5, 32)
    ref = unet(x, t, c)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = unet(x, t, c)
    assert low.dtype == torch.bfloat16
    assert (low.float() - ref).abs().max() < 0.1 * ref.abs().max()


@pytest.mark.parametrize(
    "bad, match",
    [
        (dict(num_heads=2), "exactly one"),
        (dict(use_spatial_transformer=False), "not supported"),
        (dict(legacy=True), "legacy"),
        (dict(model_channels=48), "multiple of 32"),
    ],
)
def test_bad_arguments_raise(bad, match):
    with pytest.raises(ValueError, match=match):
        UNetModel(**{**TINY, **bad})
