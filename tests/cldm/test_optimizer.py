"""AdamW with low-precision moments and gradient release: same updates as torch's AdamW, less memory."""

from __future__ import annotations

import copy

import pytest
import torch

from cldm.optimizer import AdamW, GradientRelease


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.SiLU(), torch.nn.Linear(16, 4))


def _train(model: torch.nn.Module, optimizer: torch.optim.Optimizer, steps: int, *, release: bool = False) -> None:
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x, y = torch.randn(32, 8, generator=gen), torch.randn(32, 4, generator=gen)
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        if not release:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)


def test_fp32_moments_match_torch_adamw():
    ours, ref = _model(), _model()
    _train(ours, AdamW(ours.parameters(), lr=1e-2), 20)
    _train(ref, torch.optim.AdamW(ref.parameters(), lr=1e-2), 20)
    for a, b in zip(ours.parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_bf16_moments_are_stored_in_bf16_and_stay_close_to_fp32():
    ours, ref = _model(), _model()
    optimizer = AdamW(ours.parameters(), lr=1e-2, state_dtype=torch.bfloat16)
    _train(ours, optimizer, 20)
    _train(ref, torch.optim.AdamW(ref.parameters(), lr=1e-2), 20)
    assert all(s["exp_avg"].dtype == s["exp_avg_sq"].dtype == torch.bfloat16 for s in optimizer.state.values())
    assert all(p.dtype == torch.float32 for p in ours.parameters())
    for a, b in zip(ours.parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=2e-3)  # 20 steps of lr 1e-2: bf16 rounding, not drift
    assert any(not torch.equal(a, b) for a, b in zip(ours.parameters(), ref.parameters()))


def test_bf16_moments_survive_a_state_dict_round_trip():
    model = _model()
    optimizer = AdamW(model.parameters(), lr=1e-2, state_dtype=torch.bfloat16)
    _train(model, optimizer, 2)
    restored = AdamW(model.parameters(), lr=1e-2, state_dtype=torch.bfloat16)
    restored.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    for p in model.parameters():
        assert restored.state[p]["exp_avg"].dtype == torch.bfloat16
        assert torch.equal(restored.state[p]["exp_avg_sq"], optimizer.state[p]["exp_avg_sq"])


def test_loading_takes_the_saved_moments_without_a_copy_and_resumes_exactly():
    model, twin = _model(), _model()
    optimizer = AdamW(model.parameters(), lr=1e-2, state_dtype=torch.bfloat16)
    _train(model, optimizer, 2)
    twin.load_state_dict(model.state_dict())
    saved = copy.deepcopy(optimizer.state_dict())
    keys_before = {i: set(s) for i, s in saved["state"].items()}
    restored = AdamW(twin.parameters(), lr=1e-2, state_dtype=torch.bfloat16)
    restored.load_state_dict(saved)
    assert {i: set(s) for i, s in saved["state"].items()} == keys_before  # the caller's dict is left whole
    for i, p in enumerate(twin.parameters()):
        # the very tensors of the checkpoint: no fp32 copy at load (that doubled the moments' memory at resume)
        assert restored.state[p]["exp_avg"].data_ptr() == saved["state"][i]["exp_avg"].data_ptr()
        assert restored.state[p]["step"] == optimizer.state[list(model.parameters())[i]]["step"]
    _train(model, optimizer, 3)
    _train(twin, restored, 3)
    for a, b in zip(model.parameters(), twin.parameters()):
        assert torch.equal(a, b)


def test_bf16_moments_load_into_an_fp32_state_optimizer_as_fp32():
    model = _model()
    optimizer = AdamW(model.parameters(), lr=1e-2, state_dtype=torch.bfloat16)
    _train(model, optimizer, 1)
    restored = AdamW(model.parameters(), lr=1e-2)
    restored.load_state_dict(optimizer.state_dict())
    for p in model.parameters():
        assert restored.state[p]["exp_avg_sq"].dtype == torch.float32
        assert torch.equal(restored.state[p]["exp_avg_sq"], optimizer.state[p]["exp_avg_sq"].float())


def test_gradient_release_gives_the_same_weights_and_keeps_no_gradients():
    ours, ref = _model(), _model()
    release = GradientRelease(AdamW(ours.parameters(), lr=1e-2))
    _train(ours, release.optimizer, 10, release=True)
    _train(ref, AdamW(ref.parameters(), lr=1e-2), 10)
    assert all(p.grad is None for p in ours.parameters())
    for a, b in zip(ours.parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    release.remove()
    _train(ours, release.optimizer, 1, release=True)
    assert all(p.grad is not None for p in ours.parameters())  # hooks gone: gradients accumulate again


def test_gradient_release_after_a_resume_follows_the_learning_rate_of_the_live_groups():
    """A schedule writes its rate into `param_groups`; after `load_state_dict` those are new dicts."""
    first = _model()
    optimizer = AdamW(first.parameters(), lr=1e-2)
    _train(first, optimizer, 2)
    ours, ref = copy.deepcopy(first), copy.deepcopy(first)
    release = GradientRelease(AdamW(ours.parameters(), lr=1e-2))
    release.optimizer.load_state_dict(copy.deepcopy(optimizer.state_dict()))  # loading keeps the moments' storage
    reference = AdamW(ref.parameters(), lr=1e-2)
    reference.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    for opt in (release.optimizer, reference):
        opt.param_groups[0]["lr"] = 1e-3  # what a scheduler's step does
    _train(ours, release.optimizer, 3, release=True)
    _train(ref, reference, 3)
    for a, b in zip(ours.parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_bad_hyperparameters_are_refused():
    with pytest.raises(ValueError, match="lr"):
        AdamW(_model().parameters(), lr=0)
    with pytest.raises(ValueError, match="state_dtype"):
        AdamW(_model().parameters(), state_dtype=torch.float16)
