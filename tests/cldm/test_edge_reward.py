"""ControlNet++'s reward on canny edges: zero where the edges match, and a gradient that reaches the ControlNet only."""

import pytest
import torch
from batches import make_batch

from annotator.canny import DEFAULT_THRESHOLDS
from cldm.edge_reward import edge_reward


def _squares(n: int = 2, size: int = 32) -> torch.Tensor:
    """B×3×H×W images in [0, 1]: a filled grey square per sample on black."""
    images = torch.zeros(n, 3, size, size)
    for i in range(n):
        images[i, :, 6 + i : size - 8, 6 + i : size - 8] = 0.8
    return images


def test_the_reward_is_zero_with_a_zero_gradient_where_the_edges_match():
    references = _squares()
    images = references.clone().requires_grad_(True)
    loss, _ = edge_reward(images, references, DEFAULT_THRESHOLDS)
    loss.sum().backward()
    assert loss.shape == (2,) and torch.equal(loss, torch.zeros(2))
    assert torch.equal(images.grad, torch.zeros_like(images))
    # the square two pixels off: a loss, and a gradient that moves it
    moved = torch.roll(references, shifts=2, dims=3).requires_grad_(True)
    loss, _ = edge_reward(moved, references, DEFAULT_THRESHOLDS)
    loss.sum().backward()
    assert (loss > 0).all() and moved.grad.abs().sum() > 0


def test_the_logged_f1_is_one_where_the_edges_match_and_low_where_they_moved():
    references = _squares()
    assert edge_reward(references, references, DEFAULT_THRESHOLDS)[1] == 1.0
    assert edge_reward(torch.roll(references, shifts=(3, 3), dims=(2, 3)), references, DEFAULT_THRESHOLDS)[1] < 0.2


def _trained(model):
    """No zero-initialised layer left (a trained SD UNet, zero convolutions that carry signal), so gradients flow."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.model.diffusion_model.parameters():
            p.normal_(std=0.05)
        for conv in model.control_model.zero_convs:
            conv[0].weight.normal_(std=0.1)
    return model


@pytest.mark.parametrize("reward_weight", [0.0, 1.0])
def test_the_reward_gradient_reaches_the_controlnet_and_not_the_vae_or_the_unet(build_tiny, reward_weight):
    model = _trained(build_tiny(reward_weight=reward_weight, reward_max_t=999))  # every sample rewarded
    batch = make_batch(n=2, size=64)
    loss, logged = model.training_loss(batch, 0)
    loss.backward()
    control = {n: p.grad for n, p in model.control_model.named_parameters()}
    assert any(g is not None and g.abs().sum() > 0 for g in control.values())
    frozen = [*model.first_stage_model.parameters(), *model.model.diffusion_model.parameters()]
    assert all(p.grad is None for p in frozen)
    assert ("train/loss_reward" in logged) == (reward_weight > 0)


def test_the_reward_adds_its_weighted_loss_and_changes_the_controlnet_gradient(build_tiny):
    plain, rewarded = _trained(build_tiny()), build_tiny(reward_weight=2.0, reward_max_t=999)
    rewarded.load_state_dict(plain.state_dict())
    batch = make_batch(n=2, size=64)
    loss_plain, _ = plain.training_loss(batch, 0)
    loss, logged = rewarded.training_loss(batch, 0)
    # the same draws: the diffusion part is the plain loss, and the total adds 2 × the reward
    assert torch.equal(logged["train/loss_diffusion"], loss_plain.detach())
    torch.testing.assert_close(loss.detach(), loss_plain.detach() + 2.0 * logged["train/loss_reward"])
    assert logged["train/loss_reward"] > 0
    loss_plain.backward()
    loss.backward()
    grads = [(a.grad, b.grad) for a, b in zip(plain.control_model.parameters(), rewarded.control_model.parameters())]
    assert any(a is not None and not torch.equal(a, b) for a, b in grads)


def test_samples_noised_past_reward_max_t_are_not_rewarded(build_tiny):
    model = build_tiny(reward_weight=1.0, reward_max_t=0)
    x = torch.randn(2, 4, 8, 8)
    reward, logged = model.edge_reward(x, x, torch.tensor([5, 900]), torch.randn_like(x))
    assert reward.item() == 0.0 and logged == {}


@pytest.mark.parametrize(
    ("params", "name"),
    [({"reward_weight": -1.0}, "reward_weight"), ({"reward_max_t": 1000}, "reward_max_t")],
)
def test_bad_reward_settings_are_refused_by_name(build_tiny, params, name):
    with pytest.raises(ValueError, match=name):
        build_tiny(**params)
