"""The training Dataset over a prepared folder (prompt.json + source/ + target/), as the ControlNet tutorial reads it."""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from annotator.util import read_rgb
from pairs.prompt_file import PROMPT_FILE, read_prompt_file


def pairs_fingerprint(root: Path, rows: Sequence[Mapping[str, str]]) -> str:
    """A digest of prompt-file rows (paths and prompts) and of each file's size and modification time (see
    `PairDataset.fingerprint`)."""
    digest = hashlib.sha256()
    for row in rows:
        digest.update(json.dumps([row["source"], row["target"], row["prompt"]]).encode())
        for rel in (row["source"], row["target"]):
            stat = (root / rel).stat()
            digest.update(f"{stat.st_size}:{stat.st_mtime_ns};".encode())
    return digest.hexdigest()


class PairDataset(torch.utils.data.Dataset):
    """Items `dict(jpg=H×W×3 float32 in [−1, 1], txt=str, hint=H×W×3 float32 in [0, 1])`.

    `hflip` flips image and hint together (p = 0.5); `empty_prompt_p` replaces the prompt by "" (the
    paper uses 0.5 so the ControlNet learns to read the hint without text). Both draw from a generator
    seeded by (seed, epoch, index): call `set_epoch` each epoch for fresh draws, reproducibly.
    """

    def __init__(
        self,
        root: str | Path,
        *,
        prompt_file: str = PROMPT_FILE,
        hflip: bool = False,
        empty_prompt_p: float = 0.0,
        seed: int = 0,
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(
                f"data folder {self.root} does not exist; prepare it with "
                "`python -m training.data.prepare_dogs` or `python -m training.data.toy_data`"
            )
        path = self.root / prompt_file
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist; a prepared folder holds {PROMPT_FILE} (JSON Lines)")
        if not 0.0 <= empty_prompt_p <= 1.0:
            raise ValueError(f"empty_prompt_p must be in [0, 1], got {empty_prompt_p}")
        self.rows = read_prompt_file(path)
        if not self.rows:
            raise ValueError(f"{path} lists no pairs")
        missing = [f for r in self.rows for f in (r["source"], r["target"]) if not (self.root / f).is_file()]
        if missing:
            raise FileNotFoundError(
                f"{path} names {len(missing)} missing files under {self.root}, first: " + ", ".join(missing[:5])
            )
        self.hflip = hflip
        self.empty_prompt_p = empty_prompt_p
        self.seed = seed
        self.epoch = 0
        self._fingerprint: str | None = None

    def subset(self, keep: Sequence[int]) -> PairDataset:
        """The same dataset over the rows `keep` only (e.g. without pairs that failed the check)."""
        kept = copy.copy(self)
        kept.rows = [self.rows[i] for i in keep]
        kept._fingerprint = None
        return kept

    def fingerprint(self) -> str:
        """A digest of the rows (paths and prompts) and of each file's size and modification time: what the latent
        cache and a resumed run check the data against. A copy that keeps modification times (`cp -p`, `rsync -a`)
        keeps it; stat is used rather than the bytes so that a check of 20,000 pairs takes a moment, not minutes.
        Computed once per dataset object: the run record, the cache key and the cache check of one start share it."""
        if self._fingerprint is not None:
            return self._fingerprint
        self._fingerprint = pairs_fingerprint(self.root, self.rows)
        return self._fingerprint

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def prompt(self, index: int) -> str:
        return self.rows[index]["prompt"]

    def __len__(self) -> int:
        return len(self.rows)

    def _read(self, rel: str) -> np.ndarray:
        return read_rgb(self.root / rel)  # H×W×3 uint8

    def __getitem__(self, index: int) -> dict:
        return self.get(index, self.epoch)

    def get(self, index: int, epoch: int) -> dict:
        """Item `index` with the flip/empty-prompt draws of `epoch`."""
        row = self.rows[index]
        target, hint = self._read(row["target"]), self._read(row["source"])
        if target.shape != hint.shape:
            raise ValueError(f"{row['target']} {target.shape} and {row['source']} {hint.shape} differ in size")
        draws = item_draws(self.seed, epoch, index, hflip=self.hflip, empty_prompt_p=self.empty_prompt_p)
        return training_item(target, hint, row["prompt"], draws)

    def get_conditioning(self, index: int, epoch: int) -> dict:
        """Item `index`'s `hint` and `txt` only (what a step with cached latents reads): the target is not read."""
        row = self.rows[index]
        draws = item_draws(self.seed, epoch, index, hflip=self.hflip, empty_prompt_p=self.empty_prompt_p)
        return conditioning_item(self._read(row["source"]), row["prompt"], draws)


def item_draws(seed: int, epoch: int, index: int, *, hflip: bool, empty_prompt_p: float) -> tuple[bool, bool]:
    """(flip, empty prompt) of item `index` in `epoch`, from a generator seeded by (seed, epoch, index)."""
    rng = np.random.default_rng([seed, epoch, index])
    flip = hflip and rng.random() < 0.5
    return flip, rng.random() < empty_prompt_p


def training_item(target: np.ndarray, hint: np.ndarray, prompt: str, draws: tuple[bool, bool]) -> dict:
    """The training format of a pair (H×W×3 uint8 images) with its (flip, empty prompt) draws applied:
    `jpg` in [−1, 1], `hint` in [0, 1], `txt`. Shared by every dataset kind, so their items are equal."""
    target = target[:, ::-1] if draws[0] else target
    return {
        "jpg": np.ascontiguousarray(target, dtype=np.float32) / 127.5 - 1.0,
        **conditioning_item(hint, prompt, draws),
    }


def conditioning_item(hint: np.ndarray, prompt: str, draws: tuple[bool, bool]) -> dict:
    """`hint` (H×W×3 uint8 → [0, 1]) and `txt` of an item with its (flip, empty prompt) draws applied."""
    flip, empty = draws
    hint = hint[:, ::-1] if flip else hint
    return {"txt": "" if empty else prompt, "hint": np.ascontiguousarray(hint, dtype=np.float32) / 255.0}


MyDataset = PairDataset  # the original tutorial's name
