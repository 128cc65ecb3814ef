"""The training objectives: x0 weighting is the MSE of the x0 the ε prediction implies, Min-SNR caps the weight of
the low-noise steps, cubic sampling draws towards high noise, and the default draws exactly what training drew
before the objectives existed (a resumed old run stays bit-exact)."""

import pytest
import torch

from ldm.models.diffusion.ddpm import make_beta_schedule
from ldm.models.diffusion.objectives import Objective

T = 1000


@pytest.fixture(scope="module")
def alphas_cumprod():
    return torch.cumprod(1.0 - make_beta_schedule(T, 0.00085, 0.012), dim=0).float()  # the SD schedule, T


def test_x0_weighting_is_the_mse_of_the_implied_x0(alphas_cumprod):
    g = torch.Generator().manual_seed(0)
    t = torch.tensor([0, 10, 250, 500, 750, 999])  # B
    x0, noise, eps_hat = (torch.randn(6, 4, 8, 8, generator=g, dtype=torch.float64) for _ in range(3))
    a = alphas_cumprod.double()[t].view(-1, 1, 1, 1)
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
    x0_hat = (x_t - (1 - a).sqrt() * eps_hat) / a.sqrt()
    x0_mse = ((x0_hat - x0) ** 2).mean(dim=[1, 2, 3])  # B
    eps_mse = ((eps_hat - noise) ** 2).mean(dim=[1, 2, 3])  # B
    weights = Objective("x0").weights(alphas_cumprod, t).double()
    torch.testing.assert_close(weights * eps_mse, x0_mse, rtol=1e-5, atol=0)
    assert weights[-1] > 100 > 1e-3 > weights[0]  # at SD's ends: high noise weighs 10^5 times low noise


def test_min_snr_caps_the_low_noise_weights_and_leaves_the_high_noise_ones(alphas_cumprod):
    t = torch.arange(T)
    w = Objective("min-snr", min_snr_gamma=5.0).weights(alphas_cumprod, t)
    snr = alphas_cumprod / (1 - alphas_cumprod)
    assert torch.all(w[snr <= 5] == 1.0) and torch.all(w[snr > 5] < 1.0)
    torch.testing.assert_close(w[snr > 5], (5.0 / snr[snr > 5]).float())
    assert torch.all(w[1:] >= w[:-1])  # more noise, no less weight
    assert torch.equal(Objective("eps").weights(alphas_cumprod, t), torch.ones(T))


def test_uniform_draws_what_training_drew_before_and_cubic_draws_towards_high_noise():
    before = torch.randint(0, T, (4096,), generator=torch.Generator().manual_seed(3))
    now = Objective().timesteps(4096, T, generator=torch.Generator().manual_seed(3), device=torch.device("cpu"))
    assert torch.equal(before, now)
    cubic = Objective(timestep_sampling="cubic").timesteps(
        100_000, T, generator=torch.Generator().manual_seed(0), device=torch.device("cpu")
    )
    assert cubic.dtype == torch.int64 and 0 <= int(cubic.min()) and int(cubic.max()) <= T - 1
    # P(t ≥ T/2) = P(u³ ≤ 1/2) = 2^(−1/3) ≈ 0.794 for cubic, 0.5 for uniform
    assert (cubic >= T // 2).float().mean().item() == pytest.approx(2 ** (-1 / 3), abs=0.01)
    again = Objective(timestep_sampling="cubic").timesteps(
        100_000, T, generator=torch.Generator().manual_seed(0), device=torch.device("cpu")
    )
    assert torch.equal(cubic, again)


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"loss_weighting": "v"}, "loss_weighting"),
        ({"timestep_sampling": "logit"}, "timestep_sampling"),
        ({"min_snr_gamma": 0.0}, "min_snr_gamma"),
    ],
)
def test_an_unknown_objective_is_refused_by_name(fields, named):
    with pytest.raises(ValueError, match=named):
        Objective(**fields)
