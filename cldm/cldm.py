"""ControlLDM: Stable Diffusion with a ControlNet on its locked UNet (Zhang et al. 2023, §3–4).

`ControlNet` and `ControlledUnetModel` live in their own modules and are re-exported here so the
public class paths `cldm.cldm.ControlNet` / `cldm.cldm.ControlledUnetModel` in YAML configs work.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import pytorch_lightning as pl
import torch

from annotator.canny import DEFAULT_THRESHOLDS, CannyThresholds
from cldm.control_net import ControlNet
from cldm.controlled_unet import ControlledUnetModel
from cldm.edge_reward import REWARD_MAX_T, edge_reward, to_unit_range
from cldm.optimizer import LR_SCHEDULES, OPTIMIZERS, STATE_DTYPES, AdamW, GradientRelease, adamw_8bit
from cldm.text_image import text_as_images
from cldm.weights import CheckpointMismatchError, check_state_dict
from ldm.models.diffusion.ddim import DDIMSampler
from ldm.models.diffusion.ddpm import Cond, LatentDiffusion, batch_images
from ldm.util import instantiate_from_config

__all__ = ["ControlLDM", "ControlNet", "ControlledUnetModel"]

logger = logging.getLogger(__name__)

FROZEN_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def noise_seed(seed: int, step: int, micro_batch: int, rank: int) -> int:
    """A 64-bit generator seed, distinct for every (seed, step, micro-batch, rank) up to hash collisions (2^-64):
    a hash, since any packing of four unbounded integers into 64 bits collides somewhere."""
    if min(seed, step, micro_batch, rank) < 0:
        raise ValueError(f"noise_seed takes non-negative values, got {(seed, step, micro_batch, rank)}")
    digest = hashlib.blake2b(f"{seed},{step},{micro_batch},{rank}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


class ControlLDM(LatentDiffusion, pl.LightningModule):
    """Latent diffusion whose locked UNet is steered by a trainable ControlNet reading a hint image."""

    def __init__(
        self,
        *,
        control_stage_config: Mapping[str, Any],
        control_key: str = "hint",
        only_mid_control: bool = False,
        sd_locked: bool = True,
        learning_rate: float = 1e-5,
        control_scales: Sequence[float] | None = None,
        seed: int = 0,
        frozen_dtype: str = "float32",
        optimizer_state_dtype: str = "float32",
        gradient_release: bool = False,
        optimizer: str = "adamw",
        lr_schedule: str = "constant",
        reward_weight: float = 0.0,
        reward_max_t: int = REWARD_MAX_T,
        reward_thresholds: Sequence[int] | None = None,
        **ldm_params: Any,
    ) -> None:
        # **ldm_params are LatentDiffusion's keyword-only parameters; it rejects unknown names.
        # Arguments are checked before anything is built: a full-size build takes seconds and gigabytes.
        if frozen_dtype not in FROZEN_DTYPES:
            raise ValueError(f"frozen_dtype must be one of {sorted(FROZEN_DTYPES)}, got {frozen_dtype!r}")
        if optimizer_state_dtype not in STATE_DTYPES:
            raise ValueError(
                f"optimizer_state_dtype must be one of {sorted(STATE_DTYPES)}, got {optimizer_state_dtype!r}"
            )
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
        if optimizer == "adamw8bit" and (optimizer_state_dtype != "float32" or gradient_release):
            raise ValueError(
                "optimizer adamw8bit keeps its own 8-bit moments and steps after backward: "
                "leave optimizer_state_dtype at float32 and gradient_release off"
            )
        if lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {lr_schedule!r}")
        if not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        if learning_rate <= 0:
            raise ValueError(f"learning_rate must be positive, got {learning_rate}")
        if not (isinstance(reward_weight, int | float) and math.isfinite(reward_weight) and reward_weight >= 0):
            raise ValueError(f"reward_weight must be a number >= 0 (0: no reward), got {reward_weight!r}")
        super().__init__(**ldm_params)
        if not (isinstance(reward_max_t, int) and 0 <= reward_max_t < self.num_timesteps):
            raise ValueError(f"reward_max_t must be an int in [0, {self.num_timesteps}), got {reward_max_t!r}")
        if not isinstance(self.model.diffusion_model, ControlledUnetModel):
            raise ValueError(
                "unet_config must build cldm.cldm.ControlledUnetModel (the UNet that accepts control), "
                f"got {type(self.model.diffusion_model).__name__}"
            )
        # Memory saver: the frozen parts stored in the compute dtype of mixed-precision training. They are cast
        # before the ControlNet is built, so the fp32 UNet and the fp32 ControlNet never coexist.
        self.frozen_dtype = FROZEN_DTYPES[frozen_dtype]
        self.first_stage_model.to(self.frozen_dtype)
        self.cond_stage_model.to(self.frozen_dtype)
        self._lock_unet(sd_locked)
        self.control_model: ControlNet = instantiate_from_config(control_stage_config)
        n = self.control_model.num_outputs
        scales = [1.0] * n if control_scales is None else [float(s) for s in control_scales]
        if len(scales) != n:
            raise ValueError(f"control_scales needs {n} values (one per ControlNet output), got {len(scales)}")
        if not all(math.isfinite(x) for x in scales):
            raise ValueError(f"control_scales must be finite numbers, got {scales}")
        self.control_key = control_key
        self.only_mid_control = only_mid_control
        self.learning_rate = learning_rate
        self.lr_schedule = lr_schedule
        self.seed = seed
        self.control_scales = scales
        # ControlNet++'s reward stage (cldm/edge_reward.py): its weight, the largest t it is applied at, and the
        # canny thresholds of the data.
        self.reward_weight = float(reward_weight)
        self.reward_max_t = reward_max_t
        self.reward_thresholds = (
            DEFAULT_THRESHOLDS if reward_thresholds is None else CannyThresholds(*reward_thresholds)
        )
        # Memory savers of the optimizer (cldm/optimizer.py): bf16 moments, and the step inside backward.
        self.optimizer_state_dtype = STATE_DTYPES[optimizer_state_dtype]
        self.gradient_release = bool(gradient_release)
        self.optimizer_name = optimizer
        self.automatic_optimization = not self.gradient_release
        # Checkpoints hold only the trainable tensors; `on_load_checkpoint` checks them strictly.
        self.strict_loading = False

    def compile_networks(self, **options: Any) -> None:
        """torch.compile the ControlNet and the UNet in place (`nn.Module.compile`): their state-dict keys, and
        so every checkpoint, stay exactly as without it. `options` go to `torch.compile` (e.g. mode=...)."""
        self.control_model.compile(**options)
        self.model.diffusion_model.compile(**options)

    @property
    def sd_locked(self) -> bool:
        """Whether the whole SD UNet is locked (set at construction; the decoder trains when False)."""
        return self._sd_locked

    def _lock_unet(self, locked: bool) -> None:
        """Lock the whole SD UNet in `frozen_dtype`, or leave its decoder (output blocks and `out`) trainable in
        float32 for the optimizer, as in the paper's §4.4."""
        self._sd_locked = bool(locked)
        unet = self.model.diffusion_model
        unet.requires_grad_(False)
        unet.to(self.frozen_dtype)
        if not locked:
            for part in (unet.output_blocks, unet.out):
                part.requires_grad_(True)
                part.float()

    def train(self, mode: bool = True) -> ControlLDM:
        super().train(mode)
        self.first_stage_model.eval()  # frozen parts never switch to training behaviour
        return self

    def get_input(
        self, batch: Mapping[str, Any], k: str, bs: int | None = None, *, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, Cond]:
        z, cond = super().get_input(batch, k, bs, generator=generator)
        hint = batch_images(batch, self.control_key, low=0.0, high=1.0)  # B×3×8H×8W
        hint = (hint if bs is None else hint[:bs]).to(self.device)
        return z, {"c_crossattn": cond["c_crossattn"], "c_concat": [hint]}

    def apply_model(
        self, x_noisy: torch.Tensor, t: torch.Tensor, cond: Cond, *, control_scales: Sequence[float] | None = None
    ) -> torch.Tensor:
        """ε for latents B×C×H×W. `control_scales` (one per ControlNet residual) overrides the model's own
        `control_scales` for this call only, so samplers never change the model."""
        context = torch.cat(list(cond["c_crossattn"]), dim=1)  # B×L×D
        unet: ControlledUnetModel = self.model.diffusion_model
        if cond.get("c_concat") is None:
            return unet(x_noisy, t, context, control=None, only_mid_control=self.only_mid_control)
        scales = self.control_scales if control_scales is None else list(control_scales)
        hint = torch.cat(list(cond["c_concat"]), dim=1)  # B×3×8H×8W
        control = self.control_model(x_noisy, hint, t, context)
        if len(scales) != len(control):
            raise ValueError(
                f"control_scales has {len(scales)} values but the ControlNet returns {len(control)} residuals"
            )
        control = [c * scale for c, scale in zip(control, scales, strict=True)]
        return unet(x_noisy, t, context, control=control, only_mid_control=self.only_mid_control)  # B×C×H×W

    def get_unconditional_conditioning(self, n: int) -> torch.Tensor:
        return self.get_learned_conditioning([""] * n)  # B×L×D

    def step_generator(self, batch_idx: int) -> torch.Generator:
        """Randomness of one micro-batch, a function of (seed, step, micro-batch, rank) only, so a resumed run
        draws exactly what an uninterrupted one would have."""
        trainer = self._trainer
        accumulate = trainer.accumulate_grad_batches if trainer is not None else 1
        rank = trainer.global_rank if trainer is not None else 0
        key = noise_seed(self.seed, self.global_step, batch_idx % accumulate, rank)
        return torch.Generator(device=self.device).manual_seed(key)

    def training_loss(self, batch: Mapping[str, Any], batch_idx: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss of one micro-batch (images or cached latents) under the model's objective, plus the reward stage's
        when `reward_weight` > 0, with its timesteps and noise from `step_generator`."""
        generator = self.step_generator(batch_idx)
        z, cond = self.get_input(batch, self.first_stage_key, generator=generator)
        t = self.objective.timesteps(z.shape[0], self.num_timesteps, generator=generator, device=z.device)  # B
        noise = torch.randn(z.shape, device=z.device, generator=generator)  # B×C×H×W
        x_noisy = self.q_sample(z, t, noise)  # B×C×H×W
        eps = self.apply_model(x_noisy, t, cond)  # B×C×H×W
        loss, loss_dict = self.eps_loss(eps, noise, t)
        if self.reward_weight > 0:
            reward, reward_dict = self.edge_reward(z, x_noisy, t, eps)
            loss_dict = {**loss_dict, "train/loss_diffusion": loss.detach(), **reward_dict}
            loss = loss + self.reward_weight * reward
            loss_dict["train/loss"] = loss.detach()
        if not torch.isfinite(loss):
            # Raised before backward, so no optimizer step and no checkpoint ever sees the bad values.
            raise FloatingPointError(
                f"non-finite loss {loss.item()} at global step {self.global_step}, "
                f"batch {batch_idx}; lower the learning rate or check the data"
            )
        return loss, loss_dict

    def edge_reward(
        self, z: torch.Tensor, x_noisy: torch.Tensor, t: torch.Tensor, eps: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """ControlNet++'s reward on the samples noised to t <= reward_max_t (the others add nothing): their x_0 in one
        step from the controlled ε, decoded by the frozen VAE with the gradient through it (each decoder level
        recomputed in backward when the networks checkpoint theirs), scored by `edge_reward` against the
        training image (its latent `z` decoded: the latent cache holds no pixels), averaged over them."""
        rewarded = t <= self.reward_max_t  # B
        if not bool(rewarded.any()):  # one sync a step, instead of decoding the whole batch as ControlNet++ does
            return eps.new_zeros(()), {}
        x0 = self.predict_start(x_noisy[rewarded], t[rewarded], eps[rewarded])  # B'×C×H×W
        checkpointed = self.model.diffusion_model.spec.use_checkpoint  # as the networks are (--checkpointing)
        image = self.first_stage_model.decode(x0 / self.scale_factor, checkpointed=checkpointed)  # B'×3×8H×8W
        reference = self.decode_first_stage(z[rewarded])  # B'×3×8H×8W, without a gradient
        losses, f1 = edge_reward(to_unit_range(image), to_unit_range(reference), self.reward_thresholds)
        reward = losses.mean()
        return reward, {"train/loss_reward": reward.detach(), "train/reward_edge_f1": f1}

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor:
        loss, loss_dict = self.training_loss(batch, batch_idx)
        self.log_dict(loss_dict, prog_bar=True, on_step=True, batch_size=len(batch[self.control_key]))
        if self.gradient_release:
            optimizer = self.optimizers()
            self.manual_backward(loss)  # each parameter is updated, and its gradient freed, as it completes
            optimizer.step()  # no gradients are left: this only advances Lightning's step count
            scheduler = self.lr_schedulers()
            if scheduler is not None:  # manual optimisation steps its own schedule
                scheduler.step()
        return loss

    def trainable_state_keys(self) -> list[str]:
        """state_dict names of the trainable tensors: what a training checkpoint holds."""
        return [name for name, p in self.named_parameters() if p.requires_grad]

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        keep = set(self.trainable_state_keys())
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint["state_dict"]
        trainable = set(self.trainable_state_keys())
        model_state = {k: v for k, v in self.state_dict().items() if k in trainable}
        missing, unexpected = sorted(trainable - set(state)), sorted(set(state) - trainable)
        if missing or unexpected:
            raise CheckpointMismatchError(
                f"training checkpoint does not hold this model's trainable tensors (sd_locked={self.sd_locked}); "
                f"missing: {missing[:5]}, unexpected: {unexpected[:5]}"
            )
        check_state_dict(model_state, state)

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """The ControlNet, plus the UNet decoder (output blocks and `out`) when `sd_locked` is False."""
        params = list(self.control_model.parameters())
        if not self.sd_locked:
            unet = self.model.diffusion_model
            params += list(unet.output_blocks.parameters()) + list(unet.out.parameters())
        return params

    def configure_optimizers(self) -> torch.optim.Optimizer | dict[str, Any]:
        optimizer = self._make_optimizer(self.trainable_parameters())
        if self.lr_schedule == "constant":
            return optimizer
        # Cosine from learning_rate down to 0 at the run's last step: a high rate crosses the zero-convolution
        # start quickly, and the decay then settles the edges instead of leaving them at the rate's noise.
        # The factor is a function of the step alone, so a resumed run (its step restored) goes on along the
        # curve of its own max_steps.
        steps = self.trainer.max_steps
        if steps < 1:
            raise ValueError(f"lr_schedule {self.lr_schedule!r} needs the run's max_steps, got {steps}")
        logger.info("learning rate: cosine from %g to 0 over %d steps", self.learning_rate, steps)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, steps) / steps))
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_train_start(self) -> None:
        """Every step trains at this run's schedule, whatever a checkpoint restored: a finished cosine run extended
        with a larger max_steps restores the rate of its old last step (0), and a resume with another --lr restores
        the old rate. The rate is set again from the schedule at the restored step, by the same product LambdaLR
        computes, so an unchanged run resumes bit-exactly."""
        scheduler = self.lr_schedulers()
        for i, group in enumerate(self.trainer.optimizers[0].param_groups):  # configure_optimizers makes one
            if scheduler is None:
                rate = self.learning_rate
            else:
                scheduler.base_lrs[i] = self.learning_rate
                rate = self.learning_rate * scheduler.lr_lambdas[i](scheduler.last_epoch)
            if group["lr"] != rate:
                logger.info(
                    "learning rate at step %d: %g from this run's schedule (the checkpoint held %g)",
                    self.global_step,
                    rate,
                    group["lr"],
                )
                group["lr"] = rate

    def _make_optimizer(self, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
        logger.info(
            "optimising %d tensors, %.1fM parameters (sd_locked=%s)",
            len(params),
            sum(p.numel() for p in params) / 1e6,
            self.sd_locked,
        )
        if self.optimizer_name == "adamw8bit":
            logger.info("AdamW with 8-bit moments (torchao)")
            return adamw_8bit(params, self.learning_rate)
        if self.optimizer_state_dtype == torch.float32 and not self.gradient_release:
            # The fused kernel updates in one pass without per-step temporaries: faster and lighter than foreach.
            return torch.optim.AdamW(params, lr=self.learning_rate, fused=True)
        optimizer = AdamW(params, lr=self.learning_rate, state_dtype=self.optimizer_state_dtype)
        if self.gradient_release:
            self._gradient_release = GradientRelease(optimizer)
        logger.info(
            "AdamW with %s moments%s",
            self.optimizer_state_dtype,
            ", stepping inside backward (gradient release)" if self.gradient_release else "",
        )
        return optimizer

    @torch.no_grad()
    def log_images(
        self,
        batch: Mapping[str, Any],
        N: int = 4,
        n_row: int = 2,
        sample: bool = False,
        ddim_steps: int = 50,
        ddim_eta: float = 0.0,
        unconditional_guidance_scale: float = 9.0,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """Images for the logger, all B×3×H×W in [−1, 1]: reconstruction, control, prompt, samples."""
        z, cond = self.get_input(batch, self.first_stage_key, bs=N)
        hint, context = cond["c_concat"][0], cond["c_crossattn"][0]
        n = z.shape[0]
        log = {
            "reconstruction": self.decode_first_stage(z),
            "control": hint * 2.0 - 1.0,
            "conditioning": text_as_images(list(batch[self.cond_stage_key])[:n], tuple(hint.shape[-1:-3:-1])),
        }
        sampler = DDIMSampler(self)
        shape = tuple(z.shape[1:])
        full = {"c_concat": [hint], "c_crossattn": [context]}
        if sample:
            samples, _ = sampler.sample(ddim_steps, n, shape, full, eta=ddim_eta, generator=generator)
            log["samples"] = self.decode_first_stage(samples)
        if unconditional_guidance_scale > 1.0:
            # The hint stays in the unconditional branch, as in the paper's CFG setting.
            uncond = {"c_concat": [hint], "c_crossattn": [self.get_unconditional_conditioning(n)]}
            samples, _ = sampler.sample(
                ddim_steps,
                n,
                shape,
                full,
                eta=ddim_eta,
                unconditional_guidance_scale=unconditional_guidance_scale,
                unconditional_conditioning=uncond,
                generator=generator,
            )
            log[f"samples_cfg_scale_{unconditional_guidance_scale:.2f}"] = self.decode_first_stage(samples)
        return log

    def low_vram_shift(self, is_diffusing: bool) -> None:
        """Keep only the parts in use on the compute device: UNet + ControlNet while diffusing, else VAE + text."""
        compute, cpu = self.device, torch.device("cpu")
        diffusing_to, other_to = (compute, cpu) if is_diffusing else (cpu, compute)
        self.model.to(diffusing_to)
        self.control_model.to(diffusing_to)
        self.first_stage_model.to(other_to)
        self.cond_stage_model.to(other_to)
