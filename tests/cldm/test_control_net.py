import json

import pytest
import torch
from repo_paths import architecture

from cldm.control_net import ControlNet
from cldm.controlled_unet import ControlledUnetModel
from ldm.modules.diffusionmodules.openaimodel import UNetModel

ARCH = architecture("cldm_tiny.yaml")
SD15 = architecture("cldm_v15.yaml")
SD21 = architecture("cldm_v21.yaml")


def _randomise(module, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return module


def _inputs():
    g = torch.Generator().manual_seed(1)
    return (
        torch.randn(2, 4, 8, 8, generator=g),
        torch.rand(2, 3, 64, 64, generator=g),
        torch.tensor([5, 700]),
        torch.randn(2, 7, 32, generator=g),
    )


@pytest.mark.parametrize("params, manifest", [(SD15, "sd15_controlnet_keys.json"), (SD21, "sd21_controlnet_keys.json")])
def test_full_size_controlnet_matches_public_keys(repo_root, params, manifest):
    keys = json.loads((repo_root / "tests/data" / manifest).read_text())["keys"]
    expected = {k[len("control_model.") :]: v for k, v in keys.items() if k.startswith("control_model.")}
    with torch.device("meta"):
        net = ControlNet(hint_channels=3, **params)
    assert {k: list(v.shape) for k, v in net.state_dict().items()} == expected
    assert net.num_outputs == 13


def test_one_residual_per_skip_plus_middle_with_matching_shapes():
    unet = UNetModel(out_channels=4, **ARCH)
    net = ControlNet(hint_channels=3, **ARCH)
    x, hint, t, ctx = _inputs()
    outs = net(x, hint, t, ctx)
    feats, h = [], x
    emb = unet.embed_time(t)
    for block in unet.input_blocks:
        h = block(h, emb, ctx)
        feats.append(h.shape)
    feats.append(unet.middle_block(h, emb, ctx).shape)
    assert [o.shape for o in outs] == feats
    assert len(outs) == net.num_outputs == len(unet.input_blocks) + 1


def test_fresh_controlnet_outputs_are_zero_and_leave_the_unet_unchanged():
    unet = _randomise(ControlledUnetModel(out_channels=4, **ARCH))
    net = ControlNet(hint_channels=3, **ARCH)
    for name, p in net.named_parameters():  # everything but the zero convolutions may be random
        if "zero_convs" not in name and "middle_block_out" not in name and name != "input_hint_block.14.weight":
            p.data.normal_(std=0.05)
    x, hint, t, ctx = _inputs()
    control = net(x, hint, t, ctx)
    assert all(torch.count_nonzero(c) == 0 for c in control)
    plain = UNetModel(out_channels=4, **ARCH)
    plain.load_state_dict(unet.state_dict())
    assert torch.equal(unet(x, t, ctx, control=control), plain(x, t, ctx))


def test_control_list_is_not_consumed_and_mid_only_uses_last():
    unet = _randomise(ControlledUnetModel(out_channels=4, **ARCH))
    net = _randomise(ControlNet(hint_channels=3, **ARCH), seed=1)
    x, hint, t, ctx = _inputs()
    control = net(x, hint, t, ctx)
    before = [c.clone() for c in control]
    full = unet(x, t, ctx, control=control)
    assert len(control) == len(before) and all(torch.equal(a, b) for a, b in zip(control, before))
    mid_only = unet(x, t, ctx, control=control, only_mid_control=True)
    zeros_but_mid = [torch.zeros_like(c) for c in control[:-1]] + [control[-1]]
    assert torch.equal(mid_only, unet(x, t, ctx, control=zeros_but_mid))
    assert not torch.allclose(full, mid_only)


def test_hint_must_be_eight_times_the_latent():
    net = ControlNet(hint_channels=3, **ARCH)
    x, _, t, ctx = _inputs()
    with pytest.raises(ValueError, match="8H"):
        net(x, torch.rand(2, 3, 32, 32), t, ctx)


def test_gradients_reach_hint_encoder_once_zero_convs_are_nonzero():
    net = ControlNet(hint_channels=3, **ARCH)
    x, hint, t, ctx = _inputs()
    sum(o.sum() for o in net(x, hint, t, ctx)).backward()
    # Zero convs get gradient at step 0 (their input is non-zero); that is what lets training start.
    assert net.zero_convs[0][0].weight.grad.abs().sum() > 0
