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

from cldm.weights import state_digest
from ldm.util import atomic_write, write_text_atomically
from training.data.dataset import PairDataset

logger = logging.getLogger(__name__)

MANIFEST = "cache.json"
CACHE_FORMAT = 2


def cache_key(model: torch.nn.Module, dataset: PairDataset) -> dict[str, object]:
    """What a cache holds latents of: the pairs (their list, prompts, sizes and modification times), the image size,
    and the exact VAE and text-encoder weights (their dtype included). Any change means other latents."""
    first = dataset.get(0, 0)["jpg"]  # H×W×3
    return {
        "format": CACHE_FORMAT,
        "items": len(dataset),
        "data": dataset.fingerprint(),
        "image_size": list(first.shape[:2]),
        "vae": state_digest(model.first_stage_model),
        "text_encoder": state_digest(model.cond_stage_model),
    }


def _cached_key(folder: Path) -> dict[str, object] | None:
    """The key a complete cache in `folder` was built for (None: no complete cache, or one from before keys)."""
    try:
        return json.loads((folder / MANIFEST).read_text()).get("key")
    except (OSError, ValueError, AttributeError):
        return None


def _open(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    return np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=shape)


@torch.no_grad()
def build_latent_cache(model: torch.nn.Module, dataset: PairDataset, folder: Path, *, batch_size: int = 8) -> Path:
    """Encode every item of `dataset` (epoch 0 draws) once. A complete cache is reused only when it was built from
    the same pairs, image size and weights (`cache_key`); otherwise it is built again, and the log says why."""
    folder = Path(folder)
    manifest = folder / MANIFEST
    if dataset.hflip:
        raise ValueError("cached latents cannot follow random flips: train with --no-hflip, or without the cache")
    key, cached = cache_key(model, dataset), _cached_key(folder)
    if cached == key:
        logger.info("reusing the latent cache %s (same pairs, image size and weights)", folder)
        return folder
    if manifest.exists():
        changed = [k for k in key if not isinstance(cached, dict) or cached.get(k) != key[k]]
        logger.warning(
            "the latent cache %s was built from other inputs (%s): building it again", folder, ", ".join(changed)
        )
        manifest.unlink()  # first: a rebuild cut short must never pass for the old cache
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
                [dataset.prompt(i) for i in range(start, start + len(items))]
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
    write_text_atomically(manifest, json.dumps({"items": n, "key": key}))  # written last: marks a complete cache
    logger.info("cached %d latents and contexts in %s", n, folder)
    return folder


class CachedPairs(Dataset):
    """PairDataset items with `moments` (the VAE posterior) and `context` in place of `jpg` and `txt`."""

    def __init__(self, dataset: PairDataset, folder: Path) -> None:
        cached = _cached_key(Path(folder))
        if cached is None or cached.get("data") != dataset.fingerprint():
            raise ValueError(
                f"the latent cache {folder} was not built from the pairs in {dataset.root}; build it again"
            )
        self.dataset = dataset
        self.moments = np.load(Path(folder) / "moments.npy", mmap_mode="r")
        self.contexts = np.load(Path(folder) / "contexts.npy", mmap_mode="r")
        self.empty = np.load(Path(folder) / "empty_context.npy")
        if len(self.moments) != len(dataset):
            raise ValueError(f"latent cache {folder} holds {len(self.moments)} items, the data {len(dataset)}")

    def __len__(self) -> int:
        return len(self.dataset)

    def get(self, index: int, epoch: int) -> dict:
        item = self.dataset.get_conditioning(index, epoch)  # the hint and prompt: the target is in `moments`
        context = self.empty if item["txt"] == "" else self.contexts[index]
        return {
            "moments": np.asarray(self.moments[index], dtype=np.float32),
            "context": np.asarray(context, dtype=np.float32),
            "hint": item["hint"],
            "txt": item["txt"],
        }
