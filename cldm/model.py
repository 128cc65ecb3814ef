"""Build a ControlLDM from a YAML config and read checkpoint files (.ckpt/.pth/.safetensors)."""

from __future__ import annotations

import logging
import pickle
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from ldm.util import instantiate_from_config

logger = logging.getLogger(__name__)


def load_config(config_path: str | Path) -> dict[str, Any]:
    """Read a model YAML (`model: {target, params}`) into plain containers."""
    path = Path(config_path)
    if not path.is_file():
        raise FileNotFoundError(f"model config {path} does not exist; the configs ship in models/ "
                                "(cldm_v15.yaml, cldm_v21.yaml, cldm_tiny.yaml)")
    config = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    if not isinstance(config, dict) or "model" not in config:
        raise ValueError(f"{path}: expected a top-level 'model:' node with 'target' and 'params'")
    return config


def create_model(config_path: str | Path) -> Any:
    """Instantiate the `model` node of a config (a ControlLDM for the configs in models/), on CPU in fp32."""
    model = instantiate_from_config(load_config(config_path)["model"])
    logger.info("built %s from %s", type(model).__name__, config_path)
    return model


SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                      "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
                      "U8": torch.uint8, "BOOL": torch.bool}


def load_state_dict(path: str | Path, location: str | torch.device = "cpu", *, trusted: bool = False,
                    shapes_only: bool = False) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint file; `.ckpt`/`.pth` are unwrapped from `['state_dict']` when present.

    Pickles load with `weights_only=True`. `trusted=True` allows full unpickling, which can run code
    from the file: use it only for files from a source you trust. `shapes_only=True` returns `meta`
    tensors of the right names, shapes and dtypes without reading the data (the safetensors header, or
    a memory-mapped pickle whose storages are never touched): enough to check a 5.7 GB file against a
    config in a moment.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors import safe_open
        from safetensors.torch import load_file

        if not shapes_only:
            return load_file(str(path), device=str(location))
        with safe_open(str(path), framework="pt") as f:
            slices = {k: f.get_slice(k) for k in f.keys()}  # header entries: no data read
            return {k: torch.empty(s.get_shape(), dtype=SAFETENSORS_DTYPES[s.get_dtype()], device="meta")
                    for k, s in slices.items()}
    state = _pickle_state(path, location, trusted=trusted, mmap=shapes_only)
    if shapes_only:
        return {k: torch.empty_like(v, device="meta") for k, v in state.items()}
    return state


def iter_tensor_chunks(path: str | Path, keys: Sequence[str], location: str | torch.device = "cpu", *,
                       trusted: bool = False, chunk_bytes: int = 256 << 20) -> Iterator[dict[str, torch.Tensor]]:
    """The tensors `keys` of a checkpoint file, about `chunk_bytes` at a time, so that copying a file into
    a model needs the model plus one chunk rather than the model plus the whole file. A safetensors file
    is read tensor by tensor; a pickle is memory-mapped (file-backed pages instead of anonymous memory)."""
    path = Path(path)
    if path.suffix.lower() == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt", device=str(location)) as f:
            yield from _chunks(keys, f.get_tensor, chunk_bytes)
        return
    state = _pickle_state(path, location, trusted=trusted, mmap=True)
    yield from _chunks(keys, state.__getitem__, chunk_bytes)


def _chunks(keys: Sequence[str], get: Callable[[str], torch.Tensor], chunk_bytes: int
            ) -> Iterator[dict[str, torch.Tensor]]:
    chunk: dict[str, torch.Tensor] = {}
    size = 0
    for key in keys:
        chunk[key] = get(key)
        size += chunk[key].nbytes
        if size >= chunk_bytes:
            yield chunk
            chunk, size = {}, 0
    if chunk:
        yield chunk


def _pickle_state(path: Path, location: str | torch.device, *, trusted: bool, mmap: bool) -> dict[str, torch.Tensor]:
    if path.suffix.lower() not in (".ckpt", ".pth", ".pt", ".bin"):
        raise ValueError(f"{path}: unknown checkpoint extension {path.suffix.lower()!r}; "
                         "use .ckpt, .pth or .safetensors")
    try:
        data = _load_pickle(path, location, weights_only=not trusted, mmap=mmap)
    except pickle.UnpicklingError as err:
        raise ValueError(f"{path} holds Python objects besides tensors, so it cannot be loaded safely "
                         f"(weights_only=True). If you trust its source, pass trusted=True "
                         f"(load_state_dict(path, trusted=True)). Detail: {str(err).splitlines()[0]}") from err
    state = data.get("state_dict", data) if isinstance(data, dict) else data
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} does not hold a state_dict of tensors (top-level keys: {list(data)[:5]})")
    return state


def _load_pickle(path: Path, location: str | torch.device, *, weights_only: bool, mmap: bool) -> Any:
    if mmap:
        try:
            return torch.load(path, map_location=location, weights_only=weights_only, mmap=True)
        except RuntimeError as err:  # files from torch < 1.6 (not zip) cannot be mapped: read them whole
            logger.debug("%s cannot be memory-mapped (%s); reading it whole", path, err)
    return torch.load(path, map_location=location, weights_only=weights_only)
