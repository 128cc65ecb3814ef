"""The training Dataset over WebDataset shards (pairs/shards.py): the items, draws and interface of PairDataset,
read by seeking into the shards through their index, so any rank and any DataLoader worker reads any sample.

The run's loader (training/data/loader.py) asks for samples by their place in the run, so ranks and workers read
disjoint samples, an epoch covers each once, and a resumed run starts at the very sample where it stopped, as it
does over a folder. Memory holds the index (97 bytes a sample with 9-character keys) and one open file per shard
and worker.
"""

from __future__ import annotations

import copy
import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from annotator.util import UnreadableImage, read_rgb
from pairs.shards import INDEX_FILE, TEXT_EXT, ShardError, ShardIndex, expand_shards
from training.data.check_pairs import TAIL_BYTES
from training.data.dataset import conditioning_item, item_draws, training_item
from training.data.shard_fetch import URL_SCHEMES

PROBE_HEAD = 64 * 1024  # an image header (PNG's IHDR, JPEG's markers up to its frame) lies well within this
PROBE_TAIL = TAIL_BYTES  # where check_pairs looks for the end marker


def is_shard_source(data: str | Path) -> bool:
    """A folder of `*.tar` shards (without a prompt.json: that is a prepared folder), or a `{a..b}` spec."""
    text = str(data)
    if "{" in text and ".." in text:
        return True
    path = Path(text)
    return path.is_dir() and not (path / "prompt.json").is_file() and any(path.glob("*.tar"))


class ShardPairs(torch.utils.data.Dataset):
    """Items `dict(jpg=H×W×3 float32 in [−1, 1], txt=str, hint=H×W×3 float32 in [0, 1])`, as PairDataset's."""

    def __init__(self, data: str | Path, *, hflip: bool = False, empty_prompt_p: float = 0.0, seed: int = 0) -> None:
        text = str(data)
        if text.startswith((*URL_SCHEMES, "pipe:")):
            raise ShardError(
                f"{text}: shards are read from a local or mounted folder (a sample is one seek into its shard); "
                "training fetches http(s), s3:// and gs:// shards into OUTPUT/data first; mount or copy others"
            )
        self.shards = expand_shards(text)
        if not self.shards:
            raise ShardError(f"{text} names no *.tar shards")
        self.root = Path(text) if Path(text).is_dir() else Path(self.shards[0]).parent
        if not 0.0 <= empty_prompt_p <= 1.0:
            raise ValueError(f"empty_prompt_p must be in [0, 1], got {empty_prompt_p}")
        self.index = ShardIndex.of(self.shards, cache=self.root / INDEX_FILE)
        self.keep = np.arange(len(self.index))  # the samples trained on (all, unless some were left out)
        self.hflip, self.empty_prompt_p, self.seed, self.epoch = hflip, empty_prompt_p, seed, 0
        self._files: dict[int, object] = {}
        self._pid = os.getpid()

    def subset(self, keep: Sequence[int]) -> ShardPairs:
        kept = copy.copy(self)
        kept.keep = self.keep[np.asarray(keep, dtype=np.int64)]
        kept._files = {}
        return kept

    def fingerprint(self) -> str:
        """The shards' names, sizes and mtimes, and which of their samples are trained on (a subset left by
        --skip-bad is other data, even at the same count): what the latent cache and a resume check against."""
        kept = hashlib.sha256(np.ascontiguousarray(self.keep, dtype=np.int64).tobytes()).hexdigest()
        return f"{self.index.fingerprint()}:{kept}"

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.keep)

    def key(self, index: int) -> str:
        """The sample's shard and key, for messages."""
        i = int(self.keep[index])
        return f"{self.shards[self.index.shard[i]]}:{self.index.keys[i]}"

    def prompt(self, index: int) -> str:
        return self._text(int(self.keep[index]))

    def _file(self, shard: int):
        if os.getpid() != self._pid:  # a DataLoader worker: its own file handles, never the parent's
            self._files, self._pid = {}, os.getpid()
        f = self._files.get(shard)
        if f is None:
            f = self._files[shard] = open(self.shards[shard], "rb")  # noqa: SIM115 (kept open: one per shard)
        return f

    def _member(self, i: int, field: int) -> bytes:
        shard = int(self.index.shard[i])
        f = self._file(shard)
        f.seek(int(self.index.offsets[i, field]))
        data = f.read(int(self.index.sizes[i, field]))
        if len(data) != self.index.sizes[i, field]:
            raise ShardError(
                f"shard {self.shards[shard]} is shorter than its index says at {str(self.index.keys[i])!r}"
            )
        return data

    def member_ends(self, index: int) -> tuple[bytes, bytes]:
        """For the pre-flight check, which reads an image's header and its end marker: the (target, hint) bytes of
        sample `index`, whole when small, else their first PROBE_HEAD and last PROBE_TAIL bytes joined (a check
        of every sample then reads kilobytes of each, not the dataset)."""
        i = int(self.keep[index])
        return self._ends(i, 0), self._ends(i, 1)

    def _ends(self, i: int, field: int) -> bytes:
        size = int(self.index.sizes[i, field])
        if size <= PROBE_HEAD + PROBE_TAIL:
            return self._member(i, field)
        f = self._file(int(self.index.shard[i]))
        start = int(self.index.offsets[i, field])
        f.seek(start)
        head = f.read(PROBE_HEAD)
        f.seek(start + size - PROBE_TAIL)
        return head + f.read(PROBE_TAIL)

    def _image(self, i: int, field: int) -> np.ndarray:
        which = ("target", "hint.png")[field]
        try:
            return read_rgb(self._member(i, field))  # H×W×3 uint8
        except UnreadableImage as err:
            raise ShardError(
                f"{self._where(i)}: its {which} does not decode ({err.reason}); write the shard again, or train with "
                "--skip-bad"
            ) from None

    def _text(self, i: int) -> str:
        """The prompt member as text: UTF-8, as the pre-flight check reads it."""
        try:
            return self._member(i, 2).decode("utf-8")
        except UnicodeDecodeError as err:
            raise ShardError(
                f"{self._where(i)}: its {TEXT_EXT} is not UTF-8 text (byte {err.start}); write it as UTF-8, or train "
                "with --skip-bad"
            ) from None

    def _where(self, i: int) -> str:
        """Sample i of the index (not of `keep`) by shard and key, for messages."""
        return f"shard {self.shards[self.index.shard[i]]}, sample {str(self.index.keys[i])!r}"

    def read_pair(self, index: int) -> tuple[np.ndarray, np.ndarray, str]:
        """(target, hint, prompt) of sample `index`: H×W×3 uint8 images."""
        i = int(self.keep[index])
        return self._image(i, 0), self._image(i, 1), self._text(i)

    def __getitem__(self, index: int) -> dict:
        return self.get(index, self.epoch)

    def get(self, index: int, epoch: int) -> dict:
        """Item `index` with the flip/empty-prompt draws of `epoch` (the same draws as PairDataset's)."""
        target, hint, prompt = self.read_pair(index)
        if target.shape != hint.shape:
            raise ShardError(f"{self.key(index)}: target {target.shape} and hint {hint.shape} differ in size")
        draws = item_draws(self.seed, epoch, index, hflip=self.hflip, empty_prompt_p=self.empty_prompt_p)
        return training_item(target, hint, prompt, draws)

    def get_conditioning(self, index: int, epoch: int) -> dict:
        """Item `index`'s `hint` and `txt` only (what a step with cached latents reads): the target is not read."""
        i = int(self.keep[index])
        draws = item_draws(self.seed, epoch, index, hflip=self.hflip, empty_prompt_p=self.empty_prompt_p)
        return conditioning_item(self._image(i, 1), self._text(i), draws)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_files": {}}  # open files stay in their process
