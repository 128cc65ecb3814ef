"""The toy_data base pretraining: SD's key layout, each phase trains only its parts, and the committed base fits."""

from __future__ import annotations

import re

import pytest
import torch
from repo_paths import ROOT
from repo_paths import TINY_CONFIG as TINY
from repo_paths import TOY_CONFIG as TOY

from cldm.loading import create_model, load_base, load_config
from cldm.weights import build_control_init, check_state_dict, load_state_dict
from ldm.models.diffusion.ddpm import LatentDiffusion
from tool_train_toy_base import base_state
from tool_train_toy_base import main as train_base_main
from training.toy_base import (
    PhaseSettings,
    ToyStream,
    autoencoder_loss,
    base_model_config,
    build_base,
    encode_posteriors,
    latent_std,
    load_toy_images,
    start_with_small_posterior_variance,
    train_autoencoder,
    train_denoiser,
)


def test_base_config_is_plain_latent_diffusion_with_the_controlled_unets_keys():
    config = load_config(TOY)["model"]
    with torch.device("meta"):
        base = build_base(config)
        control = create_model(TOY)
    assert type(base) is LatentDiffusion and type(base.model.diffusion_model).__name__ == "UNetModel"
    expected = {k: v for k, v in control.state_dict().items() if not k.startswith("control_model.")}
    assert {k: v.shape for k, v in base.state_dict().items()} == {k: v.shape for k, v in expected.items()}
    assert "control_stage_config" not in base_model_config(config)["params"]


def test_autoencoder_phase_lowers_its_loss_and_leaves_it_frozen(toy_data):
    torch.manual_seed(0)
    ae = build_base(load_config(TINY)["model"]).first_stage_model
    images, _ = load_toy_images(toy_data)
    assert images.shape == (len(images), 3, 64, 64) and images.min() >= -1 and images.max() <= 1

    def loss() -> float:
        with torch.no_grad():
            return autoencoder_loss(
                ae, images[:8], kl_weight=1e-6, edge_weight=1.0, generator=torch.Generator().manual_seed(0)
            ).item()

    before = loss()
    train_autoencoder(ae, images, PhaseSettings(steps=30, batch_size=8, lr=2e-3), log=lambda _: None)
    assert loss() < 0.8 * before
    assert not any(p.requires_grad for p in ae.parameters()) and not ae.training


def test_autoencoder_loss_adds_the_weighted_mse_of_the_same_reconstruction(toy_data):
    torch.manual_seed(0)
    ae = build_base(load_config(TINY)["model"]).first_stage_model
    x = load_toy_images(toy_data)[0][:4]  # 4×3×64×64

    def loss(mse_weight: float) -> torch.Tensor:
        with torch.no_grad():
            generator = torch.Generator().manual_seed(0)
            return autoencoder_loss(ae, x, kl_weight=1e-6, edge_weight=1.0, mse_weight=mse_weight, generator=generator)

    with torch.no_grad():
        recon = ae(x, generator=torch.Generator().manual_seed(0))[0]
    mse = torch.nn.functional.mse_loss(recon, x)
    assert mse > 0.01
    torch.testing.assert_close(loss(2.0) - loss(0.0), 2.0 * mse)


def test_autoencoder_phase_on_a_fresh_stream_is_seeded(toy_data):
    def trained() -> dict[str, torch.Tensor]:
        torch.manual_seed(0)
        ae = build_base(load_config(TINY)["model"]).first_stage_model
        start_with_small_posterior_variance(ae)
        train_autoencoder(ae, ToyStream(64, seed=3), PhaseSettings(steps=3, batch_size=2, lr=1e-3), log=lambda _: None)
        return ae.state_dict()

    first, second = trained(), trained()
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_a_fresh_encoder_starts_with_a_nearly_deterministic_posterior(toy_data):
    torch.manual_seed(0)
    ae = build_base(load_config(TINY)["model"]).first_stage_model
    images, _ = load_toy_images(toy_data)
    assert ae.encode(images[:2]).std.mean() > 0.3  # SD's init: the samples are mostly noise
    start_with_small_posterior_variance(ae)
    assert ae.encode(images[:2]).std.max() < 0.05


def test_toy_stream_gives_new_circles_each_batch_and_the_same_ones_for_the_same_seed():
    a, prompts = ToyStream(64, seed=1).batch(3)
    assert a.shape == (3, 3, 64, 64) and a.min() >= -1 and a.max() <= 1 and len(prompts) == 3
    stream = ToyStream(64, seed=1)
    assert torch.equal(stream.batch(3)[0], a) and not torch.equal(stream.batch(3)[0], a)


def test_latent_std_is_the_spread_of_the_posterior_means_not_the_log_variances():
    mean = torch.randn(16, 4, 8, 8) * 3.0
    logvar = torch.full_like(mean, -20.0)
    assert latent_std(torch.cat([mean, logvar], dim=1)) == pytest.approx(float(mean.std()))


def test_encode_posteriors_matches_the_autoencoder_whatever_the_chunk_size(toy_data):
    torch.manual_seed(0)
    ae = build_base(load_config(TINY)["model"]).first_stage_model
    images, _ = load_toy_images(toy_data)
    whole = encode_posteriors(ae, images, batch_size=len(images))
    assert whole.shape[0] == len(images) and whole.shape[1] == 2 * ae.post_quant_conv.in_channels
    torch.testing.assert_close(encode_posteriors(ae, images, batch_size=3), whole, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(whole, ae.encode(images).parameters)


def test_denoiser_phase_trains_unet_and_text_encoder_but_not_the_autoencoder(toy_data):
    torch.manual_seed(0)
    model = build_base(load_config(TINY)["model"])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    images, prompts = load_toy_images(toy_data)
    posteriors = encode_posteriors(model.first_stage_model, images)
    losses = train_denoiser(
        model, posteriors, prompts, PhaseSettings(steps=3, batch_size=4, lr=1e-3), log=lambda _: None
    )
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
    after = model.state_dict()
    changed = {k.split(".")[0] for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"model", "cond_stage_model"}
    assert not any(p.requires_grad for p in model.parameters())


def test_saved_base_is_an_sd_style_checkpoint_for_tool_add_control(toy_data, tmp_path, capsys):
    out = tmp_path / "base.safetensors"
    args = [
        "--config",
        str(TINY),
        "--data",
        str(toy_data),
        "--ae-steps",
        "2",
        "--unet-steps",
        "2",
        "--ae-batch-size",
        "4",
        "--unet-batch-size",
        "4",
        "--unet-images",
        "8",
        "--any-scale-factor",
        "--work-dir",
        str(tmp_path / "work"),
        "--out",
    ]
    assert train_base_main(args + [str(out)]) == 0
    state = load_state_dict(out)
    model = create_model(TINY)
    config = load_config(TINY)["model"]
    init = build_control_init(config, lambda m: load_base(m, out), seed=0)  # what tool_add_control.py runs
    assert init.copied and not any(k.startswith("control_model.") for k in state)
    assert state["model.diffusion_model.out.2.weight"].dtype == torch.float16
    assert state["alphas_cumprod"].dtype == torch.float32  # the schedule stays exact
    assert torch.equal(state["alphas_cumprod"], model.alphas_cumprod)
    # A rerun (e.g. after an interruption in phase 2) reuses the finished autoencoder.
    capsys.readouterr()
    assert train_base_main(args + [str(tmp_path / "again.safetensors")]) == 0
    assert "reusing" in capsys.readouterr().out
    again = load_state_dict(tmp_path / "again.safetensors")
    assert all(torch.equal(again[k], v) for k, v in state.items() if k.startswith("first_stage_model."))
    # From scratch with the same seed: the same file, tensor for tensor.
    args[args.index("--work-dir") + 1] = str(tmp_path / "work2")
    assert train_base_main(args + [str(tmp_path / "fresh.safetensors")]) == 0
    fresh = load_state_dict(tmp_path / "fresh.safetensors")
    assert fresh.keys() == state.keys() and all(torch.equal(fresh[k], v) for k, v in state.items())


def test_base_state_keeps_buffers_in_fp32(tiny_model):
    state = base_state(tiny_model)
    assert state["betas"].dtype == torch.float32 and state["model.diffusion_model.out.2.bias"].dtype == torch.float16


def test_committed_toy_base_fits_the_toy_config():
    path = ROOT / "models/toy_base.safetensors"
    assert path.stat().st_size <= 25e6, "the committed base must stay small (25 MB at most)"
    with torch.device("meta"):
        model = create_model(TOY)
    check_state_dict(model.state_dict(), load_state_dict(path), exclude=("control_model.",))


def test_score_prints_the_round_trip_and_where_the_colour_is_lost(toy_data, capsys):
    assert train_base_main(["--score", str(ROOT / "models/toy_base.safetensors"), "--data", str(toy_data)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"round trip on 2 held-out targets: edge F1 [\d.]+ \(pixel-exact\)", out), out
    for part in ("fill", "background"):
        counts = re.search(rf"fill colour kept, by {part}: (.*)", out)
        assert counts is not None, out
        assert sum(int(n) for n in re.findall(r"\d+/(\d+)", counts[1])) == 2, out  # every held-out target, once
