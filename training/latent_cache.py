"""Precomputed VAE posteriors and text contexts, for datasets without augmentation.

Encoding every image and prompt once removes the VAE encoder and text encoder from each step. The
posterior (mean and log-variance) is stored, not a sample, so each step still draws a fresh latent as
training without the cache does. Stored in float16 as memory-mapped .npy files.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from training.dataset import PairDataset

logger = logging.getLogger(__name__)

MANIFEST = "cache.json"


def _open(folder: Path, name: str, shape: tuple[int, ...]) -> np.ndarray:
    return np.lib.format.open_memmap(folder / f".{name}.npy.tmp", mode="w+", dtype=np.float16, shape=shape)


@torch.no_grad()
def build_latent_cache(model: torch.nn.Module, dataset: PairDataset, folder: Path, *, batch_size: int = 8) -> Path:
    """Encode every item of `dataset` (epoch 0 draws) once; reuse an existing complete cache of the same size."""
    folder = Path(folder)
    manifest = folder / MANIFEST
    if manifest.is_file() and json.loads(manifest.read_text())["items"] == len(dataset):
        return folder
    if dataset.hflip:
        raise ValueError("cached latents cannot follow random flips: train with --no-hflip, or without the cache")
    folder.mkdir(parents=True, exist_ok=True)
    n = len(dataset)
    moments = contexts = None
    for start in tqdm(range(0, n, batch_size), desc="latent cache", unit="batch"):
        items = [dataset.get(i, 0) for i in range(start, min(start + batch_size, n))]
        images = torch.from_numpy(np.stack([it["jpg"] for it in items])).permute(0, 3, 1, 2).to(model.device)
        posterior = model.encode_first_stage(images.to(next(model.first_stage_model.parameters()).dtype))
        rows = posterior.parameters.float().cpu().numpy()  # B×2C×h×w
        context = model.get_learned_conditioning([dataset.rows[i]["prompt"] for i in range(start, start + len(items))])
        if moments is None:
            moments = _open(folder, "moments", (n, *rows.shape[1:]))
            contexts = _open(folder, "contexts", (n, *context.shape[1:]))
        moments[start: start + len(items)] = rows
        contexts[start: start + len(items)] = context.float().cpu().numpy()
    empty = model.get_learned_conditioning([""])[0].float().cpu().numpy()
    np.save(folder / "empty_context.npy", empty.astype(np.float16))
    for array, name in ((moments, "moments"), (contexts, "contexts")):
        array.flush()
        os.replace(folder / f".{name}.npy.tmp", folder / f"{name}.npy")
    manifest.write_text(json.dumps({"items": n}))  # written last: marks a complete cache
    logger.info("cached %d latents and contexts in %s", n, folder)
    return folder


class CachedPairs(Dataset):
    """PairDataset items with `moments` (the VAE posterior) and `context` in place of `jpg` and `txt`."""

    def __init__(self, dataset: PairDataset, folder: Path) -> None:
        self.dataset = dataset
        self.moments = np.load(Path(folder) / "moments.npy", mmap_mode="r")
        self.contexts = np.load(Path(folder) / "contexts.npy", mmap_mode="r")
        self.empty = np.load(Path(folder) / "empty_context.npy")
        if len(self.moments) != len(dataset):
            raise ValueError(f"latent cache {folder} holds {len(self.moments)} items, the data {len(dataset)}")

    def __len__(self) -> int:
        return len(self.dataset)

    def get(self, index: int, epoch: int) -> dict:
        item = self.dataset.get(index, epoch)
        context = self.empty if item["txt"] == "" else self.contexts[index]
        return {"moments": np.asarray(self.moments[index], dtype=np.float32),
                "context": np.asarray(context, dtype=np.float32), "hint": item["hint"], "txt": item["txt"]}
