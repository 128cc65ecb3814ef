"""Guardrails against a run that trains nothing: after the first optimizer step the ControlNet's weights must have
changed (and, from a pretrained start, gradient must have reached it); the zero-convolution weight norm and the
ControlNet's gradient norm are logged as the run goes."""

from __future__ import annotations

import logging
import math

import pytorch_lightning as pl
import torch

logger = logging.getLogger(__name__)

FP16_GRACE_STEPS = 20  # fp16 loss scaling may skip the first steps (inf gradients) before it settles


class TrainingStalled(RuntimeError):
    """The first optimizer steps left the trainable weights as they were; the message names the likely cause."""


def _checksums(params: list[torch.nn.Parameter]) -> torch.Tensor:
    """P×2 float64: each tensor's sum and sum of squares, a cheap witness that its values changed."""
    if not params:
        return torch.zeros(0, 2, dtype=torch.float64)
    with torch.no_grad():
        return torch.stack([torch.stack([p.double().sum(), p.double().square().sum()]) for p in params]).cpu()  # P×2


def _norm(tensors: list[torch.Tensor]) -> float:
    return float(torch.nn.utils.get_total_norm(tensors)) if tensors else 0.0


class LearningCheck:
    """`expect_gradient`: the run starts from pretrained SD weights, so the ControlNet must receive gradient (a freshly
    initialised SD passes none through its zero output layer: that run only exercises the pipeline).
    `training.run_events.RunEvents` calls `start`, `before_optimizer_step` and, at each step boundary, `check`."""

    def __init__(self, *, expect_gradient: bool, log_every: int, fp16: bool = False) -> None:
        self.expect_gradient, self.log_every = expect_gradient, max(1, log_every)
        self.grace = FP16_GRACE_STEPS if fp16 else 1
        self._start = 0
        self._before: torch.Tensor | None = None
        self._first_grad_norm: float | None = None
        self._first_lrs: list[float] | None = None
        self._checked = False

    def start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = trainer.global_step
        self._before = _checksums(self._trainable(pl_module))

    def before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        first = self._first_grad_norm is None
        if self._first_lrs is None:  # the rates the first step is taken at, for the diagnosis
            self._first_lrs = [float(g["lr"]) for g in optimizer.param_groups]
        if not (first or trainer.global_step % self.log_every == 0):
            return
        grads = [p.grad for p in pl_module.control_model.parameters() if p.grad is not None]
        if not grads:  # gradient release has already applied and freed them
            return
        norm = _norm(grads)
        if first:
            self._first_grad_norm = norm
        pl_module.log("train/control_grad_norm", norm, on_step=True, on_epoch=False, rank_zero_only=True)

    def check(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """At a step boundary: log the zero convolutions' norm, and raise TrainingStalled if nothing is learned."""
        step = trainer.global_step
        if step % self.log_every == 0:
            norm = _norm(pl_module.control_model.zero_conv_parameters())
            pl_module.log("train/zero_conv_norm", norm, on_step=True, on_epoch=False, rank_zero_only=True)
        if self._checked or step == self._start:
            return
        if self.expect_gradient and self._first_grad_norm == 0.0:
            raise TrainingStalled(
                "no gradient reached the ControlNet in the first step: the SD UNet's output layer is zero, so the "
                "initial checkpoint was not made from pretrained SD weights; make it with tool_add_control.py from a "
                "real SD checkpoint"
            )
        if not torch.equal(_checksums(self._trainable(pl_module)), self._before):
            self._checked = True
            return
        if step - self._start >= self.grace:
            raise TrainingStalled(
                f"the ControlNet's weights did not change in the first {step - self._start} optimizer step(s): "
                f"{self._cause(trainer, pl_module)}"
            )

    @staticmethod
    def _trainable(pl_module: pl.LightningModule) -> list[torch.nn.Parameter]:
        return [p for p in pl_module.parameters() if p.requires_grad]

    def _cause(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> str:
        if not self._trainable(pl_module):
            return "the model has no trainable parameters (check sd_locked and that the ControlNet is not frozen)"
        lrs = self._first_lrs or [g["lr"] for o in trainer.optimizers for g in o.param_groups]
        if not lrs or all(float(lr) == 0.0 for lr in lrs):
            return f"the learning rate is 0 (at step {self._start + 1}; check --lr and --lr-schedule)"
        if self._first_grad_norm is not None and not math.isfinite(self._first_grad_norm):
            return "the gradients are not finite, so the optimizer skipped its steps (lower the learning rate)"
        if self._first_grad_norm == 0.0:
            return "no gradient reached the ControlNet"
        if self.grace > 1:
            return "fp16 loss scaling skipped every step (inf gradients): use --precision bf16-mixed or 32"
        return "the optimizer does not hold the ControlNet's parameters"
