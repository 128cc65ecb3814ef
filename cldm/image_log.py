"""ImageLogger: image grids of reconstruction, control, prompt and CFG samples during training."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import torchvision
from PIL import Image
from pytorch_lightning.utilities import rank_zero_only

logger = logging.getLogger(__name__)


def to_grid(images: torch.Tensor, n_row: int) -> np.ndarray:
    """B×3×H×W in [−1, 1] → uint8 grid H'×W'×3."""
    grid = torchvision.utils.make_grid(images.detach().float().cpu().clamp(-1, 1), nrow=n_row)  # 3×H'×W'
    return ((grid.permute(1, 2, 0).numpy() + 1.0) * 127.5).round().astype(np.uint8)


def log_image(lightning_logger: Any, key: str, image: np.ndarray, step: int) -> None:
    """One H×W×3 uint8 image to the run's Lightning logger: TensorBoard's `add_image`, Weights & Biases'
    `log_image`; loggers that keep no images (CSV) get nothing."""
    if lightning_logger is None:
        return
    if hasattr(lightning_logger, "log_image"):  # WandbLogger
        lightning_logger.log_image(key=key, images=[image], step=step)
        return
    experiment = getattr(lightning_logger, "experiment", None)
    if hasattr(experiment, "add_image"):  # TensorBoardLogger's SummaryWriter
        experiment.add_image(key, image, step, dataformats="HWC")


class ImageLogger(pl.Callback):
    """Every `every` steps on rank 0: `model.log_images` → PNG grids in `folder` and the Lightning logger."""

    def __init__(
        self,
        folder: Path,
        *,
        every: int,
        max_images: int = 4,
        ddim_steps: int = 50,
        guidance_scale: float = 9.0,
        seed: int = 0,
    ) -> None:
        if every < 1:
            raise ValueError(f"image logging interval must be >= 1 step, got {every}")
        self.folder = Path(folder)
        self.every, self.max_images, self.ddim_steps = every, max_images, ddim_steps
        self.guidance_scale, self.seed = guidance_scale, seed
        self._last: int | None = None

    @rank_zero_only
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        if step % self.every or step == self._last:
            return
        self._last = step
        self.log_batch(trainer, pl_module, batch, step)

    def log_batch(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, step: int) -> list[Path]:
        was_training = pl_module.training
        pl_module.eval()
        # A fixed generator, so successive grids differ only because the weights changed.
        generator = torch.Generator(device=pl_module.device).manual_seed(self.seed)
        with torch.no_grad():
            images = pl_module.log_images(
                batch,
                N=self.max_images,
                ddim_steps=self.ddim_steps,
                unconditional_guidance_scale=self.guidance_scale,
                generator=generator,
            )
        pl_module.train(was_training)
        self.folder.mkdir(parents=True, exist_ok=True)
        written = []
        for key, value in images.items():
            grid = to_grid(value, n_row=self.max_images)
            path = self.folder / f"{key}_gs-{step:06d}_e-{trainer.current_epoch:04d}.png"
            Image.fromarray(grid).save(path)
            written.append(path)
            log_image(trainer.logger, f"train/{key}", grid, step)
        logger.info("image grids for step %d in %s", step, self.folder)
        return written
