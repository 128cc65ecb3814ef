import math

import torch

from ldm.models.diffusion.ddpm import make_beta_schedule


def test_schedule_buffers_match_hand_computation(tiny_model):
    betas = [(math.sqrt(0.00085) + (math.sqrt(0.012) - math.sqrt(0.00085)) * i / 999) ** 2 for i in range(1000)]
    acp, prod = [], 1.0
    for b in betas:
        prod *= 1 - b
        acp.append(prod)
    for t in (0, 1, 500, 999):
        assert tiny_model.betas[t].item() == torch.tensor(betas[t], dtype=torch.float32).item()
        torch.testing.assert_close(tiny_model.alphas_cumprod[t], torch.tensor(acp[t]), rtol=1e-6, atol=0)
        prev = 1.0 if t == 0 else acp[t - 1]
        var = betas[t] * (1 - prev) / (1 - acp[t])
        torch.testing.assert_close(tiny_model.posterior_variance[t], torch.tensor(var), rtol=1e-5, atol=0)
        torch.testing.assert_close(tiny_model.sqrt_recipm1_alphas_cumprod[t], torch.tensor(math.sqrt(1 / acp[t] - 1)))
    assert tiny_model.alphas_cumprod.dtype == torch.float32 and torch.equal(tiny_model.logvar, torch.zeros(1000))


def test_beta_schedule_is_linear_in_sqrt_space():
    betas = make_beta_schedule(10, 0.01, 0.04)
    roots = betas.sqrt()
    torch.testing.assert_close(roots[1:] - roots[:-1], torch.full((9,), (0.2 - 0.1) / 9, dtype=torch.float64))


def test_q_sample_and_loss_are_the_eps_mse(tiny_model):
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    t = torch.tensor([10, 900])
    a = tiny_model.alphas_cumprod[t].view(2, 1, 1, 1)
    torch.testing.assert_close(tiny_model.q_sample(x0, t, noise), a.sqrt() * x0 + (1 - a).sqrt() * noise)
    cond = {"c_crossattn": [tiny_model.get_learned_conditioning(["a", "b"])], "c_concat": None}
    loss, logs = tiny_model.p_losses(x0, cond, t, noise)
    eps = tiny_model.apply_model(tiny_model.q_sample(x0, t, noise), t, cond)
    torch.testing.assert_close(loss, (eps - noise).square().mean())
    assert set(logs) == {"train/loss_simple", "train/loss"}
