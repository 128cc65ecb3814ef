import pytest
import torch
from batches import make_batch

from cldm.cldm import noise_seed
from cldm.sampling import guess_mode_scales


def _cond(model, batch):
    z, cond = model.get_input(batch, "jpg")
    return z, cond


def test_get_input_shapes_and_ranges(tiny_model):
    z, cond = _cond(tiny_model, make_batch())
    assert z.shape == (2, 4, 8, 8)
    assert cond["c_concat"][0].shape == (2, 3, 64, 64) and cond["c_crossattn"][0].shape == (2, 77, 32)


@pytest.mark.parametrize("key", ["hint", "jpg"])
def test_get_input_names_a_batch_entry_of_the_wrong_shape_or_kind(tiny_model, key):
    # Values are not read here (a device sync per step): the datasets make them in range, the pre-flight checks
    # every image. A wrong shape or kind is still named.
    batch = make_batch()
    batch[key] = batch[key][0, :, :, 0]  # H×W: no batch, no channels
    with pytest.raises(ValueError, match=rf"batch\['{key}'\] must be B×H×W×C"):
        tiny_model.get_input(batch, "jpg")
    batch[key] = [[0.0]]
    with pytest.raises(TypeError, match=rf"batch\['{key}'\] must be a tensor"):
        tiny_model.get_input(batch, "jpg")


def test_fresh_controlnet_predicts_exactly_the_locked_unet(tiny_model):
    torch.manual_seed(0)
    unet = tiny_model.model.diffusion_model
    with torch.no_grad():  # a "trained" SD UNet: no zero-initialised layers left
        for p in unet.parameters():
            p.normal_(std=0.05)
    z, cond = _cond(tiny_model, make_batch())
    t = torch.tensor([3, 800])
    x = torch.randn_like(z)
    with_hint = tiny_model.apply_model(x, t, cond)
    other_hint = tiny_model.apply_model(x, t, {**cond, "c_concat": [torch.rand_like(cond["c_concat"][0])]})
    without = tiny_model.apply_model(x, t, {**cond, "c_concat": None})
    plain = unet(x, t, cond["c_crossattn"][0])
    assert torch.equal(with_hint, without) and torch.equal(other_hint, without) and torch.equal(without, plain)


def _grads_after_step(model):
    torch.manual_seed(0)
    with torch.no_grad():
        for conv in model.control_model.zero_convs:  # make the control path carry signal
            conv[0].weight.normal_(std=0.1)
    loss = model.training_step(make_batch(), 0)
    loss.backward()
    return {n for n, p in model.named_parameters() if p.grad is not None}


def test_only_the_controlnet_gets_gradients_when_locked(tiny_model):
    names = _grads_after_step(tiny_model)
    assert names and all(n.startswith("control_model.") for n in names)
    trainable = {n for n, p in tiny_model.named_parameters() if p.requires_grad}
    assert all(n.startswith("control_model.") for n in trainable)
    opt = tiny_model.configure_optimizers()
    assert sum(p.numel() for g in opt.param_groups for p in g["params"]) == sum(
        p.numel() for p in tiny_model.control_model.parameters()
    )


def test_unlocking_adds_the_unet_decoder(build_tiny):
    model = build_tiny(sd_locked=False)
    names = _grads_after_step(model)
    assert any(n.startswith("model.diffusion_model.output_blocks.") for n in names)
    assert any(n.startswith("model.diffusion_model.out.") for n in names)
    assert not any(
        n.startswith(
            (
                "model.diffusion_model.input_blocks.",
                "model.diffusion_model.middle_block.",
                "first_stage_model.",
                "cond_stage_model.",
            )
        )
        for n in names
    )
    opt_params = {id(p) for g in model.configure_optimizers().param_groups for p in g["params"]}
    assert id(model.model.diffusion_model.out[2].weight) in opt_params
    assert not build_tiny(sd_locked=True).model.diffusion_model.out[2].weight.requires_grad


def test_sd_locked_is_fixed_at_construction(tiny_model):
    with pytest.raises(AttributeError):
        tiny_model.sd_locked = False


def test_control_scales_follow_the_architecture(tiny_model):
    n = tiny_model.control_model.num_outputs
    assert n == len(tiny_model.model.diffusion_model.input_blocks) + 1 and n != 13
    assert tiny_model.control_scales == [1.0] * n
    z, cond = _cond(tiny_model, make_batch())
    with pytest.raises(ValueError, match="control_scales"):
        tiny_model.apply_model(z, torch.tensor([1, 2]), cond, control_scales=[1.0] * 13)


def test_guess_mode_scales_each_residual(tiny_model):
    torch.manual_seed(0)
    with torch.no_grad():
        for p in tiny_model.model.diffusion_model.parameters():
            p.normal_(std=0.05)
    z, cond = _cond(tiny_model, make_batch())
    t = torch.tensor([1, 500])
    control = tiny_model.control_model(z, cond["c_concat"][0], t, cond["c_crossattn"][0])
    for conv in list(tiny_model.control_model.zero_convs) + [tiny_model.control_model.middle_block_out]:
        conv[0].bias.data.fill_(0.3)
    n = tiny_model.control_model.num_outputs
    scales = guess_mode_scales(0.7, n, guess_mode=True)
    assert scales[-1] == pytest.approx(0.7) and scales[0] == pytest.approx(0.7 * 0.825 ** (n - 1))
    control = tiny_model.control_model(z, cond["c_concat"][0], t, cond["c_crossattn"][0])
    scaled = [c * s for c, s in zip(control, scales, strict=True)]
    expected = tiny_model.model.diffusion_model(z, t, cond["c_crossattn"][0], control=scaled)
    torch.testing.assert_close(tiny_model.apply_model(z, t, cond, control_scales=scales), expected)
    assert tiny_model.control_scales == [1.0] * n  # the call's scales did not stick to the model
    assert not torch.allclose(tiny_model.apply_model(z, t, cond), expected)


def test_frozen_parts_stay_in_eval_mode(tiny_model):
    tiny_model.train()
    assert not tiny_model.first_stage_model.training and not tiny_model.cond_stage_model.training
    assert tiny_model.control_model.training


def test_log_images_returns_grids_in_range(tiny_model):
    logs = tiny_model.log_images(
        make_batch(),
        N=2,
        ddim_steps=2,
        sample=True,
        unconditional_guidance_scale=9.0,
        generator=torch.Generator().manual_seed(0),
    )
    assert set(logs) == {"reconstruction", "control", "conditioning", "samples", "samples_cfg_scale_9.00"}
    assert all(v.shape == (2, 3, 64, 64) for v in logs.values())
    assert logs["conditioning"].min() >= -1 and logs["conditioning"].max() <= 1 and logs["conditioning"].min() < 0


@pytest.mark.gpu
def test_low_vram_shift_keeps_only_the_running_parts_on_the_gpu(tiny_model):
    model = tiny_model.cuda()
    model.low_vram_shift(is_diffusing=True)
    assert model.model.diffusion_model.out[2].weight.is_cuda and model.control_model.zero_convs[0][0].weight.is_cuda
    assert not any(p.is_cuda for p in model.first_stage_model.parameters())
    model.low_vram_shift(is_diffusing=False)
    assert not any(p.is_cuda for p in model.model.parameters()) and not any(
        p.is_cuda for p in model.control_model.parameters()
    )
    assert all(p.is_cuda for p in model.first_stage_model.parameters())


@pytest.mark.parametrize(
    "bad, match",
    [
        (dict(use_ema=True), "use_ema"),
        (dict(conditioning_key="concat"), "crossattn"),
        (dict(learning_rate=0.0), "learning_rate"),
        (dict(lr_schedule="linear"), "lr_schedule"),
        (dict(control_scales=[1.0]), "control_scales"),
    ],
)
def test_bad_knobs_raise(build_tiny, bad, match):
    with pytest.raises(ValueError, match=match):
        build_tiny(**bad)


def test_frozen_parts_in_bf16_train_only_the_fp32_controlnet(build_tiny):
    model = build_tiny(frozen_dtype="bfloat16")
    assert {p.dtype for p in model.model.diffusion_model.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in model.first_stage_model.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in model.control_model.parameters()} == {torch.float32}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z, cond = model.get_input(make_batch(), "jpg")
        loss, _ = model.p_losses(z, cond, torch.tensor([5, 900]))
    loss.backward()
    assert torch.isfinite(loss)
    assert {n.split(".")[0] for n, p in model.named_parameters() if p.grad is not None} == {"control_model"}
    unlocked = build_tiny(frozen_dtype="bfloat16", sd_locked=False)
    assert unlocked.model.diffusion_model.out[2].weight.dtype == torch.float32
    assert unlocked.model.diffusion_model.input_blocks[0][0].weight.dtype == torch.bfloat16


def test_non_finite_loss_stops_before_the_optimizer_step(tiny_model):
    batch = make_batch()
    batch["jpg"][0, 0, 0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="global step 0, batch 7"):
        tiny_model.training_step(batch, 7)


def test_noise_seeds_differ_where_a_packing_would_collide():
    # A packing ((step·64 + micro-batch)·4096 + rank) gives these pairs one seed: same noise for two micro-batches.
    assert noise_seed(0, 0, 64, 0) != noise_seed(0, 1, 0, 0)
    assert noise_seed(0, 0, 0, 4096) != noise_seed(0, 0, 1, 0)
    draws = [
        torch.randn(4, generator=torch.Generator().manual_seed(noise_seed(0, *t))) for t in ((0, 64, 0), (1, 0, 0))
    ]
    assert not torch.equal(*draws)
    seeds = {noise_seed(s, t, m, r) for s in range(3) for t in range(50) for m in range(3) for r in range(3)}
    assert len(seeds) == 3 * 50 * 3 * 3 and all(0 <= k < 2**64 for k in seeds)
    assert noise_seed(3, 10, 2, 1) == noise_seed(3, 10, 2, 1)  # a function of its arguments only: resumes redraw
    with pytest.raises(ValueError):
        noise_seed(0, -1, 0, 0)
