import json

import pytest
import torch

from ldm.models.autoencoder import AutoencoderKL
from ldm.modules.diffusionmodules.model import AttnBlock
from ldm.modules.distributions.distributions import DiagonalGaussianDistribution

SD15_DD = dict(
    double_z=True,
    z_channels=4,
    resolution=256,
    in_channels=3,
    out_ch=3,
    ch=128,
    ch_mult=[1, 2, 4, 4],
    num_res_blocks=2,
    attn_resolutions=[],
    dropout=0.0,
)
TINY_DD = dict(SD15_DD, ch=32, ch_mult=[1, 2], num_res_blocks=1, resolution=16, attn_resolutions=[8])


def test_sd15_vae_matches_public_keys(repo_root):
    keys = json.loads((repo_root / "tests/data/sd15_controlnet_keys.json").read_text())["keys"]
    expected = {k[len("first_stage_model.") :]: v for k, v in keys.items() if k.startswith("first_stage_model.")}
    with torch.device("meta"):
        vae = AutoencoderKL(ddconfig=SD15_DD, embed_dim=4, lossconfig={"target": "torch.nn.Identity"})
    assert {k: list(v.shape) for k, v in vae.state_dict().items()} == expected


@pytest.mark.parametrize("groups", [None, 8])
def test_norm_groups_reach_every_groupnorm(groups):
    dd = TINY_DD if groups is None else dict(TINY_DD, norm_groups=groups)
    vae = AutoencoderKL(ddconfig=dd, embed_dim=4)
    norms = [m for m in vae.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert len(norms) > 10 and {m.num_groups for m in norms} == {groups or 32}  # SD's 32 unless set


def test_encode_decode_shapes_and_posterior():
    torch.manual_seed(0)
    vae = AutoencoderKL(ddconfig=TINY_DD, embed_dim=4)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    post = vae.encode(x)
    assert post.mean.shape == (2, 4, 8, 8)
    z1 = post.sample(torch.Generator().manual_seed(3))
    z2 = post.sample(torch.Generator().manual_seed(3))
    assert torch.equal(z1, z2) and not torch.equal(z1, post.mode())
    assert torch.equal(post.mode(), post.mean)
    assert vae.decode(z1).shape == (2, 3, 16, 16)


def test_posterior_clamps_logvar_and_kl_is_zero_for_standard_normal():
    params = torch.cat([torch.zeros(1, 2, 2, 2), torch.full((1, 2, 2, 2), -100.0)], dim=1)
    assert DiagonalGaussianDistribution(params).logvar.min() == -30.0
    standard = DiagonalGaussianDistribution(torch.zeros(1, 4, 2, 2))
    assert torch.allclose(standard.kl(), torch.zeros(1))


def test_attn_block_equals_explicit_softmax():
    torch.manual_seed(0)
    block = AttnBlock(32).double()
    x = torch.randn(1, 32, 3, 3, dtype=torch.float64)
    h = block.norm(x)
    q, k, v = (f(h).flatten(2) for f in (block.q, block.k, block.v))  # B×C×L
    w = torch.softmax(q.transpose(1, 2) @ k * 32**-0.5, dim=-1)  # B×L×L
    expected = x + block.proj_out((v @ w.transpose(1, 2)).view(1, 32, 3, 3))
    torch.testing.assert_close(block(x), expected)


@pytest.mark.parametrize(
    "bad, match",
    [
        (dict(TINY_DD, chanels=3), "unknown keys"),
        (dict(TINY_DD, double_z=False), "double_z"),
        (dict(TINY_DD, norm_groups=24), "multiple of norm_groups"),
    ],
)
def test_bad_ddconfig_raises(bad, match):
    with pytest.raises(ValueError, match=match):
        AutoencoderKL(ddconfig=bad, embed_dim=4)


def test_vae_training_loss_config_is_refused():
    with pytest.raises(ValueError, match="does not train the autoencoder"):
        AutoencoderKL(ddconfig=TINY_DD, embed_dim=4, lossconfig={"target": "ldm.modules.losses.LPIPSWithDiscriminator"})


def test_a_checkpointed_decode_gives_the_same_image_and_gradient():
    torch.manual_seed(0)
    vae = AutoencoderKL(ddconfig=TINY_DD, embed_dim=4).requires_grad_(False)
    results = []
    for checkpointed in (False, True):
        z = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1)).requires_grad_(True)
        image = vae.decode(z, checkpointed=checkpointed)  # B×3×16×16
        (image**2).sum().backward()
        results.append((image.detach(), z.grad))
    (plain, plain_grad), (again, again_grad) = results
    assert plain.shape == (2, 3, 16, 16) and plain_grad.abs().sum() > 0
    torch.testing.assert_close(again, plain, rtol=0, atol=0)
    torch.testing.assert_close(again_grad, plain_grad, rtol=1e-6, atol=1e-7)
