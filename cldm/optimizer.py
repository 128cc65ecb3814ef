"""AdamW (Loshchilov & Hutter 2019) with low-precision moments and an optional step inside the backward pass.

Memory savers for the ControlNet's optimizer, all off by default:

- `state_dtype=torch.bfloat16` stores the two moment estimates in bf16 (half of fp32 AdamW's state);
  each update is computed in fp32 from them, so only the stored moments are rounded.
- `GradientRelease` updates each parameter as soon as its gradient is complete during backward and
  frees that gradient at once ("gradient release"), so the whole-model gradient never exists.
- `adamw_8bit` is torchao's 8-bit AdamW (block-wise quantised moments, a quarter of fp32's state), which
  runs on CUDA and on CPU alike.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

STATE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
OPTIMIZERS = ("adamw", "adamw8bit")
LR_SCHEDULES = ("constant", "cosine")
CHUNK = 1 << 16  # elements per slice of the update
MOMENTS = ("exp_avg", "exp_avg_sq")


def adamw_8bit(params: list[torch.nn.Parameter], lr: float) -> torch.optim.Optimizer:
    """torchao's AdamW8bit with torch AdamW's defaults (betas 0.9/0.999, weight decay 1e-2)."""
    from torchao.optim import AdamW8bit  # imported on use: torchao loads its kernels at import

    return AdamW8bit(params, lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2)


class AdamW(torch.optim.Optimizer):
    """Decoupled-weight-decay Adam whose moments are stored in `state_dtype` and updated in fp32."""

    def __init__(
        self,
        params: Iterable[torch.nn.Parameter] | Iterable[dict],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        *,
        state_dtype: torch.dtype = torch.float32,
    ) -> None:
        if lr <= 0 or eps <= 0 or weight_decay < 0 or not all(0 <= b < 1 for b in betas):
            raise ValueError(
                f"need lr > 0, eps > 0, weight_decay >= 0, betas in [0, 1); got lr={lr}, eps={eps}, "
                f"weight_decay={weight_decay}, betas={betas}"
            )
        if state_dtype not in STATE_DTYPES.values():
            raise ValueError(f"state_dtype must be one of {sorted(STATE_DTYPES)}, got {state_dtype}")
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))
        self.state_dtype = state_dtype
        self._group_of = {p: g for g in self.param_groups for p in g["params"]}

    @torch.no_grad()
    def step(self, closure=None) -> torch.Tensor | None:  # noqa: ANN001 (torch's signature)
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    self._update(p, group)
        return loss

    def load_state_dict(self, state_dict: dict) -> None:
        # torch would cast every loaded state tensor to its parameter's dtype: bf16 moments would come back
        # as fp32 copies (twice their size, all at once, at resume). The moments are set aside, the rest
        # loaded by torch, and the moments put back in their storage dtype: no copy when that already fits.
        saved = state_dict["state"]
        rest = {i: {k: v for k, v in s.items() if k not in MOMENTS} for i, s in saved.items()}
        super().load_state_dict({**state_dict, "state": rest})
        # torch loads into new group dicts: step_param must read those (a schedule writes its lr there).
        self._group_of = {p: g for g in self.param_groups for p in g["params"]}
        param_of = {
            i: p
            for saved_group, group in zip(state_dict["param_groups"], self.param_groups)
            for i, p in zip(saved_group["params"], group["params"])
        }
        for i, s in saved.items():
            p = param_of[i]
            for key in MOMENTS:
                if key in s:
                    self.state[p][key] = s[key].to(device=p.device, dtype=self.state_dtype)

    @torch.no_grad()
    def step_param(self, p: torch.nn.Parameter) -> None:
        """Update one parameter from its gradient (the gradient-release path)."""
        if p.grad is not None:
            self._update(p, self._group_of[p])

    def _update(self, p: torch.nn.Parameter, group: dict) -> None:
        state = self.state[p]
        if not state:
            state["step"] = torch.zeros((), dtype=torch.float32)
            state["exp_avg"] = torch.zeros_like(p, dtype=self.state_dtype, memory_format=torch.contiguous_format)
            state["exp_avg_sq"] = torch.zeros_like(p, dtype=self.state_dtype, memory_format=torch.contiguous_format)
        state["step"] += 1
        beta1, beta2 = group["betas"]
        step = float(state["step"])
        bias1, bias2_sqrt = 1 - beta1**step, math.sqrt(1 - beta2**step)
        # Δ = lr/b1 · m / (√(v/b2) + ε) = (lr·√b2/b1) · m / (√v + ε√b2), with b1, b2 the bias corrections.
        hyper = (
            beta1,
            beta2,
            group["eps"] * bias2_sqrt,
            -group["lr"] * bias2_sqrt / bias1,
            1 - group["lr"] * group["weight_decay"],
        )
        flat = (
            [t.view(-1) for t in (p.data, p.grad, state["exp_avg"], state["exp_avg_sq"])]
            if p.is_contiguous() and p.grad.is_contiguous()
            else None
        )
        if flat is None:
            _adamw_slice(p.data, p.grad, state["exp_avg"], state["exp_avg_sq"], *hyper)
            return
        # Slices small enough for the fp32 temporaries to stay in cache: the update makes ~10 passes.
        for start in range(0, flat[0].numel(), CHUNK):
            _adamw_slice(*(t[start : start + CHUNK] for t in flat), *hyper)


def _adamw_slice(
    p: torch.Tensor,
    grad: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    beta1: float,
    beta2: float,
    eps: float,
    step_size: float,
    decay: float,
) -> None:
    grad = grad.float()
    m = exp_avg.float().lerp_(grad, 1 - beta1)
    v = exp_avg_sq.float().mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    exp_avg.copy_(m)
    exp_avg_sq.copy_(v)
    denom = v.sqrt().add_(eps)  # out of place: with fp32 states, v is the stored second moment itself
    p.mul_(decay).addcdiv_(m.to(p.dtype), denom.to(p.dtype), value=step_size)


class GradientRelease:
    """Steps `optimizer` per parameter from a post-accumulate-grad hook and drops the gradient right after.

    Valid only when one backward pass makes one optimizer step on one process: with gradient
    accumulation the hook would step on partial gradients, and under DDP before the all-reduce.
    """

    def __init__(self, optimizer: AdamW) -> None:
        self.optimizer = optimizer
        self.handles = [
            p.register_post_accumulate_grad_hook(self._release)
            for group in optimizer.param_groups
            for p in group["params"]
        ]

    def _release(self, p: torch.Tensor) -> None:
        self.optimizer.step_param(p)
        p.grad = None

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []
