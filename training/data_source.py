"""What --data names, made readable by the run: a prepared folder or WebDataset shards are read where they are; a
Hugging Face dataset is imported, and shards named by URL are fetched, once into OUTPUT/data."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from pairs.prompt_file import PROMPT_FILE
from pairs.shards import ShardError
from training.common.run_lock import RunFolderLocked
from training.data.dataset import PairDataset
from training.data.hf_import import import_hf, recorded_source
from training.data.hf_source import Columns, HFDataError, is_hf_dataset
from training.data.shard_dataset import ShardPairs, is_shard_source
from training.data.shard_fetch import fetch_shards, is_url_spec
from training.settings import TrainSettings

logger = logging.getLogger(__name__)

IMPORT_DIR = "data"  # OUTPUT/data: a Hugging Face --data imported, or URL shards fetched


class DataSourceError(ValueError):
    """--data cannot be brought in; the message says what and what to do."""


def open_pairs(settings: TrainSettings) -> PairDataset | ShardPairs:
    """The training pairs of `settings.data` (a prepared folder or shards: see `import_data` for the others)."""
    kind = ShardPairs if is_shard_source(settings.data) else PairDataset
    return kind(settings.data, hflip=settings.hflip, empty_prompt_p=settings.empty_prompt_p, seed=settings.seed)


def import_data(settings: TrainSettings, *, rank_zero: bool) -> TrainSettings:
    """A Hugging Face dataset given as `data` (local, or hf:ID), imported once into the prepared folder
    OUTPUT/data (training/data/hf_import.py, which refuses a folder imported from other data); the settings with
    that folder as the data. The other ranks find rank 0's import."""
    if is_url_spec(settings.data):
        return _fetched(settings)
    folder = Path(settings.output) / IMPORT_DIR
    if not is_hf_dataset(settings.data):
        if recorded_source(folder) == settings.data and not Path(settings.data).exists():
            logger.warning(
                "%s is no longer there; training on its finished import in %s (the run record checks that these are "
                "the pairs the run trained on)",
                settings.data,
                folder,
            )
            return dataclasses.replace(settings, data=str(folder))
        return settings
    columns = Columns(settings.image_column, settings.conditioning_image_column, settings.caption_column)
    try:
        if rank_zero:
            import_hf(settings.data, folder, columns=columns, skip_bad=settings.skip_bad)
        elif not (folder / PROMPT_FILE).is_file():
            raise DataSourceError(
                f"{settings.data} is not imported into {folder} yet: where the ranks start together (torchrun, "
                f"srun), import it once first: python -m training.data.hf_import {settings.data} {folder}"
            )
    except (HFDataError, RunFolderLocked) as err:
        raise DataSourceError(f"data: {err}") from None
    except OSError as err:  # a full or read-only disk: the rows already imported stay, and a re-run goes on
        raise _cannot_write(err, folder, settings.data, "import") from None
    logger.info("training on %s as imported into %s", settings.data, folder)
    return dataclasses.replace(settings, data=str(folder))


def _fetched(settings: TrainSettings) -> TrainSettings:
    """Shards named by URL, fetched once into OUTPUT/data (training/data/shard_fetch.py); the ranks of a node take turns,
    and the first fetches."""
    folder = Path(settings.output) / IMPORT_DIR
    try:
        fetch_shards(settings.data, folder)
    except ShardError as err:
        raise DataSourceError(f"data: {err}") from None
    except OSError as err:  # a full or read-only disk: the files already fetched stay, and a re-run goes on
        raise _cannot_write(err, folder, settings.data, "fetch") from None
    logger.info("training on %s as fetched into %s", settings.data, folder)
    return dataclasses.replace(settings, data=str(folder))


def _cannot_write(err: OSError, folder: Path, data: str, phase: str) -> DataSourceError:
    """A disk that failed while `data` was brought into `folder` (phase: import or fetch), as one line."""
    doing = {"import": "importing", "fetch": "fetching"}[phase]
    return DataSourceError(
        f"data: cannot write {err.filename or folder} ({err.strerror}) while {doing} {data} into {folder}; free "
        f"space (or fix the folder) and run again: the {phase} goes on where it stopped"
    )
