"""Which process is the run's global rank 0: the one module that answers it, for the code that runs before the
trainer exists (the lock, the data import, the initial weights, the latent cache) and for the callbacks inside it.

Before the process group exists, the answer is read from what each launcher sets:
- torchrun (and any launcher that sets it): RANK, the global rank;
- SLURM with one task per device (srun): SLURM_PROCID, when SLURM_NTASKS is above 1;
- Lightning's own launcher: NODE_RANK (torchrun's GROUP_RANK) and LOCAL_RANK, both 0 on rank 0, and checked
  under every launcher: inside a SLURM allocation of one task per node, Lightning starts the node's other
  devices itself, and they share that task's SLURM_PROCID.
Inside the trainer, Lightning's own `trainer.is_global_zero` answers (it knows the process group)."""

from __future__ import annotations

import os
from collections.abc import Mapping

import pytorch_lightning as pl


def global_rank(env: Mapping[str, str] | None = None) -> int | None:
    """The global rank a launcher gave this process, or None where only Lightning's launcher ran (it sets no global
    rank: see `is_global_zero`)."""
    env = os.environ if env is None else env
    if "RANK" in env:
        return int(env["RANK"])
    if "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
        return int(env["SLURM_PROCID"])
    return None


def is_global_zero(trainer: pl.Trainer | None = None, *, env: Mapping[str, str] | None = None) -> bool:
    """Whether this process is the run's global rank 0 (one process per run is)."""
    if trainer is not None:
        return trainer.is_global_zero
    env = os.environ if env is None else env
    node = int(env.get("NODE_RANK", env.get("GROUP_RANK", "0")))
    return global_rank(env) in (None, 0) and node == 0 and int(env.get("LOCAL_RANK", "0")) == 0
