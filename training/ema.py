"""An exponential moving average of the ControlNet's weights (`--ema-decay`): after every optimizer step,
ema ← decay · ema + (1 − decay) · θ (the first step copies θ). torch's own `AveragedModel` with
`get_ema_multi_avg_fn` keeps it (one fused lerp over all tensors, and a state_dict that checkpoints hold), so we
write only where it is used: `training.run_events.RunEvents` updates it at each step boundary, checkpoints carry it,
and the monitor, best/ and the exports read the averaged weights through `applied`."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

import pytorch_lightning as pl
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

logger = logging.getLogger(__name__)

CHECKPOINT_KEY = "cutenet_ema"  # the EMA's state in a training checkpoint


class ControlEMA:
    def __init__(self, pl_module: pl.LightningModule, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"the EMA decay must lie in (0, 1), got {decay}")
        self.decay = decay
        self.average = AveragedModel(
            pl_module.control_model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=False
        )
        self.average.requires_grad_(False)

    def update(self, pl_module: pl.LightningModule) -> None:
        """One optimizer step's update (the first copies the weights)."""
        if next(self.average.parameters()).device != pl_module.device:
            self.average.to(pl_module.device)
        self.average.update_parameters(pl_module.control_model)

    def state_dict(self) -> dict[str, Any]:
        return self.average.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.average.load_state_dict(state)

    @contextmanager
    def applied(self, pl_module: pl.LightningModule) -> Iterator[None]:
        """The model with the averaged ControlNet in place of the trained one, for scoring and exports (no copy:
        the module is swapped, then put back). Before the first update the average is the starting ControlNet."""
        trained = pl_module.control_model
        averaged = self.average.module.to(pl_module.device)
        pl_module.control_model = averaged
        try:
            yield
        finally:
            pl_module.control_model = trained

    @property
    def steps(self) -> int:
        return int(self.average.n_averaged)


def ema_applied(ema: ControlEMA | None, pl_module: pl.LightningModule) -> AbstractContextManager:
    """`ema.applied(pl_module)`, or nothing to apply when EMA is off."""
    return nullcontext() if ema is None else ema.applied(pl_module)
