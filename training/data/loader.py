"""A resumable, rank-sharded stream of training samples.

Sample k of the run (k = 0, 1, 2, …, counted over all ranks) is item perm_e[k mod N] of epoch
e = k div N, where perm_e is a permutation seeded by (seed, e). Rank r of w takes k ≡ r (mod w). A run
resumed at global step s starts at k = s · batch · accumulate · w, so it sees exactly the samples an
uninterrupted run would have seen next.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from training.data.dataset import PairDataset
from training.data.latent_cache import CachedPairs


class EpochPermuted(Dataset):
    """Maps a run position k to (item, epoch) of the underlying dataset and tags the sample with k."""

    def __init__(self, dataset: PairDataset | CachedPairs, *, seed: int) -> None:
        self.dataset = dataset
        self.seed = seed
        self._perms: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.dataset)

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            self._perms = {epoch: np.random.default_rng([self.seed, epoch]).permutation(len(self.dataset))}
        return self._perms[epoch]

    def __getitem__(self, position: int) -> dict:
        epoch, offset = divmod(position, len(self.dataset))
        index = int(self._perm(epoch)[offset])
        return {**self.dataset.get(index, epoch), "index": index, "position": position}


class ShardedPositions(Sampler[int]):
    """Endless positions start + rank, start + rank + world, … (the stream is cut by max_steps)."""

    def __init__(self, *, start: int, rank: int, world_size: int) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.start, self.rank, self.world_size = start, rank, world_size

    def __iter__(self) -> Iterator[int]:
        position = self.start + self.rank
        while True:
            yield position
            position += self.world_size


def make_train_loader(
    dataset: PairDataset | CachedPairs,
    *,
    batch_size: int,
    seed: int,
    start_sample: int,
    rank: int,
    world_size: int,
    workers: int,
) -> DataLoader:
    """The per-rank DataLoader that resumes at `start_sample` (a position counted over all ranks)."""
    return DataLoader(
        EpochPermuted(dataset, seed=seed),
        batch_size=batch_size,
        sampler=ShardedPositions(start=start_sample, rank=rank, world_size=world_size),
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=torch.cuda.is_available(),
        drop_last=True,
    )
