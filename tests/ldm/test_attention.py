import torch

from ldm.modules.attention import CrossAttention, SpatialTransformer


def test_sdpa_attention_equals_explicit_softmax():
    torch.manual_seed(0)
    attn = CrossAttention(16, context_dim=8, heads=2, dim_head=4).double()
    x, ctx = torch.randn(2, 5, 16, dtype=torch.float64), torch.randn(2, 3, 8, dtype=torch.float64)
    q = attn.to_q(x).view(2, 5, 2, 4).transpose(1, 2)
    k = attn.to_k(ctx).view(2, 3, 2, 4).transpose(1, 2)
    v = attn.to_v(ctx).view(2, 3, 2, 4).transpose(1, 2)
    weights = torch.softmax(q @ k.transpose(-1, -2) * 4**-0.5, dim=-1)
    expected = attn.to_out((weights @ v).transpose(1, 2).reshape(2, 5, 8))
    torch.testing.assert_close(attn(x, ctx), expected)


def test_fresh_spatial_transformer_is_identity():
    block = SpatialTransformer(32, n_heads=2, d_head=16, depth=1, context_dim=8)
    x = torch.randn(1, 32, 4, 4)
    assert torch.equal(block(x, torch.randn(1, 3, 8)), x)
