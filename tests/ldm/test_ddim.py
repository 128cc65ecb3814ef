import pytest
import torch

from ldm.models.diffusion.ddim import DDIMSampler, ddim_sample, ddim_timesteps, guided_denoiser


class CountingModel(torch.nn.Module):
    """A stand-in denoiser: ε = tanh(x · (cond)) so guidance and conditioning are visible."""

    def __init__(self):
        super().__init__()
        betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
        self.register_buffer("alphas_cumprod", torch.cumprod(1 - betas, 0).float())
        self.calls = 0

    def apply_model(self, x, t, cond):
        self.calls += 1
        return torch.tanh(x * cond["scale"] + t.view(-1, 1, 1, 1) / 1000)


def test_timesteps_follow_the_reference_offset():
    assert ddim_timesteps(50, 1000)[:3].tolist() == [1, 21, 41] and ddim_timesteps(50, 1000)[-1] == 981
    assert len(ddim_timesteps(30, 1000)) == 31  # 1000 // 30 = 33 → 31 steps, as the reference
    assert ddim_timesteps(3, 1000).tolist() == [1, 334, 667]  # the reference would index 1000 here
    with pytest.raises(ValueError):
        ddim_timesteps(0, 1000)


def test_deterministic_under_a_seed_with_eta():
    model = CountingModel()
    runs = [
        DDIMSampler(model).sample(
            10, 2, (4, 8, 8), {"scale": 1.0}, eta=0.5, generator=torch.Generator().manual_seed(7)
        )[0]
        for _ in range(2)
    ]
    assert torch.equal(runs[0], runs[1])
    other = DDIMSampler(model).sample(
        10, 2, (4, 8, 8), {"scale": 1.0}, eta=0.5, generator=torch.Generator().manual_seed(8)
    )[0]
    assert not torch.equal(runs[0], other)


def test_guidance_scale_one_is_the_conditional_prediction_only():
    model = CountingModel()
    x_T = torch.randn(1, 4, 8, 8)
    guided, _ = DDIMSampler(model).sample(
        5,
        1,
        (4, 8, 8),
        {"scale": 2.0},
        x_T=x_T,
        unconditional_guidance_scale=1.0,
        unconditional_conditioning={"scale": 0.0},
    )
    assert model.calls == 5
    plain, _ = DDIMSampler(model).sample(5, 1, (4, 8, 8), {"scale": 2.0}, x_T=x_T)
    assert torch.equal(guided, plain)
    DDIMSampler(model).sample(
        5,
        1,
        (4, 8, 8),
        {"scale": 2.0},
        x_T=x_T,
        unconditional_guidance_scale=3.0,
        unconditional_conditioning={"scale": 0.0},
    )
    assert model.calls == 5 + 5 + 10


def test_one_step_matches_the_ddim_update_by_hand():
    model = CountingModel()
    x_T = torch.randn(1, 4, 2, 2)
    out, inter = ddim_sample(lambda x, t: model.apply_model(x, t, {"scale": 1.0}), x_T, model.alphas_cumprod, steps=1)
    t = torch.tensor([1])
    eps = model.apply_model(x_T, t, {"scale": 1.0})
    a_t, a_prev = model.alphas_cumprod[1], model.alphas_cumprod[0]
    pred_x0 = (x_T - (1 - a_t).sqrt() * eps) / a_t.sqrt()
    torch.testing.assert_close(out, a_prev.sqrt() * pred_x0 + (1 - a_prev).sqrt() * eps)
    assert set(inter) == {"x_inter", "pred_x0"}


@pytest.mark.parametrize("eta", [-0.1, 1.5, float("nan")])
def test_eta_outside_zero_to_one_is_refused(eta):
    with pytest.raises(ValueError, match=r"eta must be in \[0, 1\]"):
        ddim_sample(lambda x, t: x, torch.zeros(1, 4, 2, 2), torch.linspace(0.99, 0.01, 1000), steps=2, eta=eta)


def test_a_non_finite_guidance_scale_is_refused():
    with pytest.raises(ValueError, match="guidance scale"):
        guided_denoiser(lambda x, t, c: x, {}, {}, float("nan"))


def test_guidance_runs_both_branches_as_one_batch_with_the_same_result():
    calls = []

    def apply_model(x, t, cond):
        calls.append(x.shape[0])
        return torch.tanh(x * cond["c_crossattn"][0].mean(dim=(1, 2)).view(-1, 1, 1, 1) + t.view(-1, 1, 1, 1) / 1000)

    cond, uncond = {"c_crossattn": [torch.full((2, 3, 4), 2.0)]}, {"c_crossattn": [torch.zeros(2, 3, 4)]}
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([10, 500])
    batched = guided_denoiser(apply_model, cond, uncond, 3.0)(x, t)
    assert calls == [4]  # one call over the CFG batch
    separate = apply_model(x, t, uncond) + 3.0 * (apply_model(x, t, cond) - apply_model(x, t, uncond))
    torch.testing.assert_close(batched, separate)
    calls.clear()
    guided_denoiser(apply_model, {**cond, "c_concat": [torch.ones(2, 3, 64, 64)]}, {**uncond, "c_concat": None}, 3.0)(
        x, t
    )
    assert calls == [2, 2]  # guess mode: the hint in one branch only, so two calls
