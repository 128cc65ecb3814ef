"""Precomputed VAE posteriors and text contexts, for datasets without augmentation.

Encoding every image and prompt once removes the VAE encoder and text encoder from each step. The
posterior (mean and log-variance) is stored, not a sample, so each step still draws a fresh latent as
training without the cache does. Stored in float16 as memory-mapped .npy files.
"""

from __future__ import annotations

import json
import logging
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from ldm.util import atomic_write
from training.dataset import PairDataset
from training.prompt_file import write_text_atomically

logger = logging.getLogger(__name__)

MANIFEST = "cache.json"


def _open(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    return np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=shape)


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
    with ExitStack() as stack:
        tmp = {name: stack.enter_context(atomic_write(folder / f"{name}.npy")) for name in ("moments", "contexts")}
        arrays: dict[str, np.ndarray] = {}
        for start in tqdm(range(0, n, batch_size), desc="latent cache", unit="batch"):
            items = [dataset.get(i, 0) for i in range(start, min(start + batch_size, n))]
            images = torch.from_numpy(np.stack([it["jpg"] for it in items])).permute(0, 3, 1, 2).to(model.device)
            posterior = model.encode_first_stage(images.to(next(model.first_stage_model.parameters()).dtype))
            rows = posterior.parameters.float().cpu().numpy()  # B×2C×h×w
            context = model.get_learned_conditioning(
                [dataset.rows[i]["prompt"] for i in range(start, start + len(items))]
            )  # B×L×D
            if not arrays:
                arrays = {
                    "moments": _open(tmp["moments"], (n, *rows.shape[1:])),
                    "contexts": _open(tmp["contexts"], (n, *context.shape[1:])),
                }
            arrays["moments"][start : start + len(items)] = rows
            arrays["contexts"][start : start + len(items)] = context.float().cpu().numpy()
        for array in arrays.values():
            array.flush()
    empty = model.get_learned_conditioning([""])[0].float().cpu().numpy()  # L×D
    with atomic_write(folder / "empty_context.npy") as tmp_empty, open(tmp_empty, "wb") as f:
        np.save(f, empty.astype(np.float16))
    write_text_atomically(manifest, json.dumps({"items": n}))  # written last: marks a complete cache
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
        return {
            "moments": np.asarray(self.moments[index], dtype=np.float32),
            "context": np.asarray(context, dtype=np.float32),
            "hint": item["hint"],
            "txt": item["txt"],
        }
