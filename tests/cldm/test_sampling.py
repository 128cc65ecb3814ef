import pytest
import torch

from cldm.sampling import guess_mode_scales, images_to_uint8, sample


def _trained_looking(model):
    torch.manual_seed(0)
    with torch.no_grad():  # non-zero zero-convs and UNet: the hint now changes the prediction
        for p in list(model.model.diffusion_model.parameters()) + list(model.control_model.parameters()):
            p.normal_(std=0.05)
    return model


def _sample(model, hint, scales, **kw):
    n = hint.shape[0]
    return sample(
        model,
        hint,
        ["a red circle"] * n,
        [""] * n,
        control_scales=scales,
        steps=3,
        guidance_scale=4.0,
        generator=torch.Generator().manual_seed(5),
        **kw,
    )


def test_the_hint_steers_at_strength_one_and_is_ignored_at_zero(tiny_model):
    model = _trained_looking(tiny_model).eval()
    n = model.control_model.num_outputs
    hint_a, hint_b = torch.zeros(1, 3, 64, 64), torch.ones(1, 3, 64, 64)
    assert not torch.equal(_sample(model, hint_a, [1.0] * n), _sample(model, hint_b, [1.0] * n))
    assert torch.equal(_sample(model, hint_a, [0.0] * n), _sample(model, hint_b, [0.0] * n))


def test_sampling_never_changes_the_models_control_scales(tiny_model):
    model = _trained_looking(tiny_model).eval()
    n = model.control_model.num_outputs
    before = list(model.control_scales)
    images = _sample(model, torch.rand(2, 3, 64, 64), guess_mode_scales(0.5, n, guess_mode=True), hint_in_uncond=False)
    assert model.control_scales == before
    assert images.shape == (2, 3, 64, 64)
    assert [im.shape for im in images_to_uint8(images)] == [(64, 64, 3)] * 2


def test_one_prompt_per_hint(tiny_model):
    with pytest.raises(ValueError, match="one prompt"):
        sample(tiny_model, torch.rand(2, 3, 64, 64), ["a"], ["", ""], control_scales=[1.0], steps=1, guidance_scale=1.0)


def test_guess_mode_scales_follow_the_number_of_outputs():
    assert guess_mode_scales(1.0, 13, guess_mode=True)[0] == pytest.approx(0.825**12)
    assert guess_mode_scales(0.5, 5, guess_mode=True)[-1] == 0.5
    assert guess_mode_scales(0.7, 5, guess_mode=False) == [0.7] * 5


def test_non_finite_control_scales_are_refused(tiny_model):
    n = tiny_model.control_model.num_outputs
    with pytest.raises(ValueError, match="finite"):
        _sample(tiny_model, torch.rand(1, 3, 64, 64), [float("nan")] * n)
