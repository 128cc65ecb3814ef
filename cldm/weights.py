"""Weight I/O of ControlLDM in one place: read checkpoint files, check them strictly against a model,
load them, save them atomically, and make the initial ControlNet from an SD checkpoint (paper §3.2)."""

from __future__ import annotations

import _compat_pickle
import hashlib
import io
import logging
import pickle
import pickletools
import struct
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from annotator.canny import CannyThresholds
from cldm.edge_record import threshold_metadata
from ldm.models.diffusion.ddpm import SCHEDULE_BUFFERS
from ldm.util import atomic_write, instantiate_from_config

logger = logging.getLogger(__name__)

CONTROL_PREFIX = "control_model."
UNET_PREFIX = "model.diffusion_model."
SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


class CorruptCheckpointError(ValueError):
    """A weights file that cannot be read: damaged, cut short, or not a checkpoint at all."""


@contextmanager
def reading_weights(path: Path) -> Iterator[None]:
    """Turn the ways torch, pickle and safetensors fail on a file into one clear error: CorruptCheckpointError for a
    damaged file, UnsafeCheckpointError for a pickle that holds Python objects (what they are is read from the
    file itself, not from torch's wording, which changes between releases)."""
    from safetensors import SafetensorError

    try:
        yield
    except FileNotFoundError:
        raise
    except pickle.UnpicklingError as err:
        raise _refusal(Path(path), err) from err
    except (
        SafetensorError,
        RuntimeError,
        EOFError,
        OSError,
        zipfile.BadZipFile,
        IndexError,
        KeyError,
        struct.error,
        UnicodeDecodeError,
    ) as err:
        raise _damaged(Path(path), err) from err


class UnsafeCheckpointError(ValueError):
    """A pickle holding Python objects besides tensors: loading it would run code from the file."""


# What a pickle can call to run commands or code: such a file is an attack, not a checkpoint.
CODE_RUNNING_MODULES = (
    "os",
    "posix",
    "nt",
    "subprocess",
    "sys",
    "shutil",
    "socket",
    "runpy",
    "importlib",
    "pty",
    "ctypes",
)
CODE_RUNNING_BUILTINS = ("eval", "exec", "compile", "__import__", "getattr", "setattr", "open", "breakpoint", "input")


def _damaged(path: Path, err: BaseException) -> CorruptCheckpointError:
    if path.suffix.lower() != ".safetensors" and _is_safetensors(path):
        return CorruptCheckpointError(
            f"{path} is a safetensors file named {path.suffix}: rename it to {path.stem}.safetensors"
        )
    detail = " ".join(str(err).split())[:200]
    return CorruptCheckpointError(
        f"{path} cannot be read: the file is damaged or incomplete (an interrupted download or save?); "
        f"copy it again. Detail: {type(err).__name__}: {detail}"
    )


def _refusal(path: Path, err: pickle.UnpicklingError) -> ValueError:
    """Why a pickle was refused by torch's safe loader: damaged, mis-named, or holding Python objects (named)."""
    objects = _pickle_globals(path)
    if objects is None:
        return _damaged(path, err)
    loadable = _loadable_globals()
    foreign = sorted({g for g in objects if g not in loadable})
    if not foreign:
        return _damaged(path, err)
    running = [g for g in foreign if _runs_code(g)]
    if running:
        return UnsafeCheckpointError(
            f"{path} is refused: loading it would call {', '.join(running)}, which runs commands or code on this "
            "machine. It is not a checkpoint to trust; delete it and get the weights from their original source"
        )
    return UnsafeCheckpointError(
        f"{path} holds Python objects besides tensors ({', '.join(foreign[:5])}), and loading them would run code "
        "from the file, so it is refused. If you trust its source, convert it to safetensors once "
        "(docs/weights.md, 'A pickle with Python objects')"
    )


def _loadable_globals() -> set[str]:
    """The `module.name` globals torch's safe loader accepts: its built-in allowlist and those registered as safe
    (private functions: where a torch release lacks them, every global is named, which only lengthens the message)."""
    try:
        from torch._weights_only_unpickler import _get_allowed_globals, _get_user_allowed_globals
    except ImportError:
        return set()
    loadable = set(_get_allowed_globals())
    try:
        loadable |= set(_get_user_allowed_globals())
    except (AttributeError, TypeError):  # a library registered a safe global torch itself cannot name (a dtype)
        pass
    return loadable


def _runs_code(name: str) -> bool:
    module, _, attr = name.rpartition(".")
    return module.split(".")[0] in CODE_RUNNING_MODULES or (module == "builtins" and attr in CODE_RUNNING_BUILTINS)


def _is_safetensors(path: Path) -> bool:
    """A safetensors file starts with the length of its JSON header (little-endian u64), then the header's '{'."""
    try:
        with open(path, "rb") as f:
            head = f.read(9)
        size = path.stat().st_size
    except OSError:
        return False
    return len(head) == 9 and head[8:9] == b"{" and 2 <= struct.unpack("<Q", head[:8])[0] <= size - 8


# A legacy (non-zip) torch file is pickles in a row (magic number, protocol, system info, the object, its storage
# keys) followed by the raw storage bytes, which are not a pickle.
LEGACY_PICKLES = 5


def _pickle_globals(path: Path) -> list[str] | None:
    """The `module.name` globals a torch pickle refers to (read without running it), or None if it is damaged."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                data = archive.read(next(n for n in archive.namelist() if n.endswith("data.pkl")))
            pickles = 1
        else:
            data = path.read_bytes()
            pickles = LEGACY_PICKLES
    except (OSError, StopIteration, zipfile.BadZipFile, KeyError):
        return None
    stream, found = io.BytesIO(data), []
    for number in range(pickles):
        strings: list[str] = []
        try:
            for opcode, arg, _ in pickletools.genops(stream):
                if opcode.name == "GLOBAL":  # "module name"; protocol 2 spells builtins as __builtin__
                    module, name = str(arg).split(" ", 1)
                    found.append(f"{_compat_pickle.IMPORT_MAPPING.get(module, module)}.{name}")
                elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                    found.append(f"{strings[-2]}.{strings[-1]}")
                elif isinstance(arg, str):
                    strings.append(arg)
        except (ValueError, EOFError):
            return found if number > 0 else None  # cut short after a whole pickle: what it names is still known
        if stream.tell() >= len(data):
            break
    return found


def load_state_dict(
    path: str | Path, location: str | torch.device = "cpu", *, trusted: bool = False, shapes_only: bool = False
) -> dict[str, torch.Tensor]:
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
    with reading_weights(path):
        return _read_state_dict(path, location, trusted=trusted, shapes_only=shapes_only)


def _read_state_dict(
    path: Path, location: str | torch.device, *, trusted: bool, shapes_only: bool
) -> dict[str, torch.Tensor]:
    if path.suffix.lower() == ".safetensors":
        from safetensors import safe_open
        from safetensors.torch import load_file

        if not shapes_only:
            return load_file(str(path), device=str(location))
        with safe_open(str(path), framework="pt") as f:
            slices = {k: f.get_slice(k) for k in f.keys()}  # header entries: no data read
            return {
                k: torch.empty(s.get_shape(), dtype=SAFETENSORS_DTYPES[s.get_dtype()], device="meta")
                for k, s in slices.items()
            }
    state = _pickle_state(path, location, trusted=trusted, mmap=shapes_only)
    if shapes_only:
        return {k: torch.empty_like(v, device="meta") for k, v in state.items()}
    return state


def iter_tensor_chunks(
    path: str | Path,
    keys: Sequence[str],
    location: str | torch.device = "cpu",
    *,
    trusted: bool = False,
    chunk_bytes: int = 256 << 20,
) -> Iterator[dict[str, torch.Tensor]]:
    """The tensors `keys` of a checkpoint file, about `chunk_bytes` at a time, so that copying a file into
    a model needs the model plus one chunk rather than the model plus the whole file. A safetensors file
    is opened afresh for each chunk, so the pages of the file it has read do not stay mapped (resident) beside
    the model; a pickle is memory-mapped (file-backed pages instead of anonymous memory)."""
    path = Path(path)
    with reading_weights(path):
        if path.suffix.lower() == ".safetensors":
            from safetensors import safe_open

            sizes = {k: v.nbytes for k, v in load_state_dict(path, shapes_only=True).items()}
            for group in _groups(keys, sizes, chunk_bytes):
                with safe_open(str(path), framework="pt", device=str(location)) as f:
                    yield {k: f.get_tensor(k) for k in group}
            return
        state = _pickle_state(path, location, trusted=trusted, mmap=True)
        for group in _groups(keys, {k: state[k].nbytes for k in keys}, chunk_bytes):
            yield {k: state[k] for k in group}


def _groups(keys: Sequence[str], sizes: Mapping[str, int], chunk_bytes: int) -> Iterator[list[str]]:
    """`keys` in consecutive groups of about `chunk_bytes`."""
    group: list[str] = []
    size = 0
    for key in keys:
        group.append(key)
        size += sizes[key]
        if size >= chunk_bytes:
            yield group
            group, size = [], 0
    if group:
        yield group


def _pickle_state(path: Path, location: str | torch.device, *, trusted: bool, mmap: bool) -> dict[str, torch.Tensor]:
    if path.suffix.lower() not in (".ckpt", ".pth", ".pt", ".bin"):
        raise ValueError(
            f"{path}: unknown checkpoint extension {path.suffix.lower()!r}; use .ckpt, .pth or .safetensors"
        )
    data = _load_pickle(path, location, weights_only=not trusted, mmap=mmap)  # refusals: see `reading_weights`
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


# Entries real files carry that the model does not hold, dropped by name:
# - position_ids: in v1-5-pruned.ckpt and control_sd15_*.pth; a non-persistent buffer here;
# - model_ema.*: the EMA copy in v1-5-pruned.ckpt (the live weights are used).
KNOWN_EXTRA_KEYS = frozenset({"cond_stage_model.transformer.text_model.embeddings.position_ids"})
KNOWN_EXTRA_PREFIXES = ("model_ema.",)
# The diffusion schedule comes from the config, whatever a file holds (see SCHEDULE_BUFFERS); a file may lack it
# (`logvar` is an attribute, not a tensor, in v1-5-pruned.ckpt).
FROM_CONFIG = frozenset(SCHEDULE_BUFFERS)


@dataclass
class LoadReport:
    """What a strict load did besides copying matching tensors."""

    loaded: int = 0
    dropped_extras: list[str] = field(default_factory=list)
    kept_fresh: list[str] = field(default_factory=list)


class CheckpointMismatchError(ValueError):
    """The checkpoint does not fit the model: lists missing, unexpected, mis-shaped and mis-typed keys."""


class NonFiniteWeightsError(ValueError):
    """The checkpoint holds NaN or inf values: the model would make black images."""


def nonfinite_keys(state: Mapping[str, torch.Tensor]) -> list[str]:
    """The floating-point tensors of `state` holding NaN or inf."""
    return [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]


def refuse_nonfinite(bad: Sequence[str], source: str | Path, *, allow_nonfinite: bool = False) -> None:
    """Raise NonFiniteWeightsError naming the first of the `bad` tensors of `source`, unless allowed."""
    if bad and not allow_nonfinite:
        raise NonFiniteWeightsError(
            f"{source} holds NaN or inf in {len(bad)} tensors, first: {_preview(bad, 5)}; a model with them makes "
            "black images. Use other weights, or pass --allow-nonfinite to load them anyway"
        )


def _preview(keys: Sequence[str], limit: int = 10) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def check_state_dict(
    model_state: Mapping[str, torch.Tensor],
    state: Mapping[str, torch.Tensor],
    *,
    prefixes: Sequence[str] | None = None,
    exclude: Sequence[str] = (),
) -> tuple[dict[str, torch.Tensor], LoadReport]:
    """Filter `state` against the model's keys; raise CheckpointMismatchError listing every problem.

    With `prefixes`, only model keys under them are expected (e.g. ("control_model.",) for a
    ControlNet-only file); keys under `exclude` are not expected (e.g. an SD base file has no
    ControlNet). Anything else in the file is unexpected.
    """
    report = LoadReport()
    wanted = {
        k: v
        for k, v in model_state.items()
        if (prefixes is None or k.startswith(tuple(prefixes))) and not k.startswith(tuple(exclude))
    }
    kept: dict[str, torch.Tensor] = {}
    unexpected, mis_shaped, mis_typed = [], [], []
    for key, value in state.items():
        if key in KNOWN_EXTRA_KEYS or key.startswith(KNOWN_EXTRA_PREFIXES):
            report.dropped_extras.append(key)
        elif key not in wanted:
            unexpected.append(key)
        elif tuple(value.shape) != tuple(wanted[key].shape):
            mis_shaped.append(f"{key}: file {tuple(value.shape)} vs model {tuple(wanted[key].shape)}")
        elif wanted[key].is_floating_point() and not value.is_floating_point():
            mis_typed.append(f"{key}: {value.dtype}")
        elif key not in FROM_CONFIG:
            kept[key] = value
    missing = [k for k in wanted if k not in state]
    report.kept_fresh = [k for k in missing if k in FROM_CONFIG]
    missing = [k for k in missing if k not in FROM_CONFIG]
    if unexpected or missing or mis_shaped or mis_typed:
        parts = []
        if missing:
            parts.append(f"missing keys: {_preview(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_preview(unexpected)}")
        if mis_shaped:
            parts.append(f"shape mismatches: {_preview(mis_shaped)}")
        if mis_typed:
            parts.append(f"not floating point (quantised weights are not supported): {_preview(mis_typed)}")
        raise CheckpointMismatchError("checkpoint does not match the model config; " + "; ".join(parts))
    report.loaded = len(kept)
    return kept, report


def load_weights(
    model: torch.nn.Module,
    state: Mapping[str, torch.Tensor],
    *,
    prefixes: Sequence[str] | None = None,
    exclude: Sequence[str] = (),
    allow_nonfinite: bool = False,
) -> LoadReport:
    """Copy `state` into `model` strictly (see `check_state_dict`); returns what was dropped or kept fresh.
    NaN or inf values are refused (NonFiniteWeightsError) unless `allow_nonfinite`."""
    kept, report = check_state_dict(model.state_dict(), state, prefixes=prefixes, exclude=exclude)
    refuse_nonfinite(nonfinite_keys(kept), "the state dict", allow_nonfinite=allow_nonfinite)
    model.load_state_dict(kept, strict=False)
    _log_report(report)
    return report


def load_weights_from_file(
    model: torch.nn.Module,
    path: str | Path,
    *,
    prefixes: Sequence[str] | None = None,
    exclude: Sequence[str] = (),
    ignore: Sequence[str] = (),
    keep_only: Sequence[str] | None = None,
    trusted: bool = False,
    allow_nonfinite: bool = False,
    chunk_bytes: int = 256 << 20,
) -> LoadReport:
    """`load_weights` from a file, checked from its header first and then copied a chunk at a time: the
    model is untouched if the file does not fit, and loading needs the model plus one chunk of memory,
    not the model plus the whole file. File keys under `ignore` are skipped (e.g. the ControlNet of a
    full ControlLDM file used only as an SD base), and so are those not under `keep_only` when it is given (e.g.
    the ControlNet alone out of a full file). NaN or inf values are found as the chunks are copied
    and refused at the end (NonFiniteWeightsError: discard the model) unless `allow_nonfinite`."""
    in_file = load_state_dict(path, trusted=trusted, shapes_only=True)
    shapes = {
        k: v
        for k, v in in_file.items()
        if not k.startswith(tuple(ignore)) and (keep_only is None or k.startswith(tuple(keep_only)))
    }
    try:
        kept, report = check_state_dict(model.state_dict(), shapes, prefixes=prefixes, exclude=exclude)
    except CheckpointMismatchError as err:
        lora = (
            " It holds LoRA adapter weights, which CuteNet does not load." if any("lora" in k for k in in_file) else ""
        )
        raise CheckpointMismatchError(f"{path}: {err}.{lora}") from None
    copy_in_chunks(model, path, list(kept), trusted=trusted, allow_nonfinite=allow_nonfinite, chunk_bytes=chunk_bytes)
    _log_report(report)
    return report


def copy_in_chunks(
    model: torch.nn.Module,
    path: str | Path,
    keys: Sequence[str],
    *,
    rename: Callable[[str, torch.Tensor], tuple[str, torch.Tensor]] | None = None,
    trusted: bool = False,
    allow_nonfinite: bool = False,
    chunk_bytes: int = 256 << 20,
) -> None:
    """Copy the file's tensors `keys` into `model` a chunk at a time, each named (and shaped) by `rename` when the
    file uses another layout; NaN or inf are refused at the end (NonFiniteWeightsError) unless `allow_nonfinite`.
    The keys must have been checked against the model first (`check_state_dict`)."""
    nonfinite: list[str] = []
    for chunk in iter_tensor_chunks(path, keys, trusted=trusted, chunk_bytes=chunk_bytes):
        ours = dict(rename(k, v) for k, v in chunk.items()) if rename is not None else chunk
        nonfinite += nonfinite_keys(ours)
        model.load_state_dict(ours, strict=False)
    refuse_nonfinite(nonfinite, path, allow_nonfinite=allow_nonfinite)


def _log_report(report: LoadReport) -> None:
    if report.dropped_extras:
        logger.info("dropped %d known extra entries (position_ids, model_ema.*)", len(report.dropped_extras))
    if report.kept_fresh:
        logger.info("not in the file, kept at their initial value: %s", ", ".join(report.kept_fresh))


def unet_twin(control_key: str) -> str:
    """`control_model.X` → `model.diffusion_model.X`: the locked weight the trainable copy starts from."""
    if not control_key.startswith(CONTROL_PREFIX):
        raise ValueError(f"{control_key!r} is not a ControlNet key (expected the prefix {CONTROL_PREFIX!r})")
    return UNET_PREFIX + control_key[len(CONTROL_PREFIX) :]


@dataclass
class ControlInit:
    """The initial ControlLDM state and where each ControlNet tensor came from."""

    state: dict[str, torch.Tensor]
    copied: list[str]
    fresh: list[str]
    kept_fresh: list[str]
    dropped_extras: list[str]


def copy_encoder_into_control(model: torch.nn.Module) -> tuple[list[str], list[str]]:
    """Copy each UNet encoder tensor into its ControlNet twin, in place (paper §3.2: the trainable copy starts as the
    locked encoder). Returns (copied, fresh): the ControlNet keys with a twin of the same shape, and the rest (hint
    encoder, zero convolutions), which keep their initial values."""
    state = model.state_dict()  # views of the parameters: copying into them sets the model
    copied, fresh = [], []
    with torch.no_grad():
        for key, value in state.items():
            if not key.startswith(CONTROL_PREFIX):
                continue
            twin = state.get(unet_twin(key))
            if twin is not None and twin.shape == value.shape:
                value.copy_(twin)
                copied.append(key)
            else:
                fresh.append(key)
    return copied, fresh


def build_control_init(
    model_config: Mapping[str, Any],
    load_sd: Callable[[torch.nn.Module], LoadReport],
    *,
    seed: int,
    load_control: Callable[[torch.nn.Module], LoadReport] | None = None,
) -> ControlInit:
    """The initial ControlLDM state for the `model` node of a config: a model built with its fresh parts (hint
    encoder, zero convolutions) drawn under `seed`, its SD part filled by `load_sd` (which must fill every SD tensor,
    strictly, e.g. `load_weights_from_file` with `exclude=(CONTROL_PREFIX,)`), then the encoder copied into the
    ControlNet, or, with `load_control`, the whole ControlNet taken from an existing one (to fine-tune it). The
    weights stream into the model, so the peak is the model plus one chunk. The same input and seed give the same
    state, whichever process makes it (tool_add_control.py, or training's `base` on every rank)."""
    torch.manual_seed(seed)
    model = instantiate_from_config(model_config)
    report = load_sd(model)
    copied, fresh = copy_encoder_into_control(model)
    if load_control is not None:
        load_control(model)
        copied, fresh = [], []
    return ControlInit(model.state_dict(), copied, fresh, report.kept_fresh, report.dropped_extras)


def save_state(state: Mapping[str, torch.Tensor], dst: str | Path, metadata: Mapping[str, str] | None = None) -> None:
    """Write a state dict atomically; the format follows dst's extension. `metadata` (text only) goes in the
    safetensors header, or beside `state_dict` in a .ckpt/.pth."""
    dst = Path(dst)
    with atomic_write(dst) as tmp:
        if dst.suffix.lower() == ".safetensors":
            from safetensors.torch import save_file

            save_file({k: v.contiguous() for k, v in state.items()}, str(tmp), metadata=dict(metadata or {}) or None)
        else:
            torch.save({"state_dict": dict(state), **({"metadata": dict(metadata)} if metadata else {})}, tmp)


def state_digest(module: torch.nn.Module) -> str:
    """sha256 of a module's tensors (names, dtypes, shapes and bytes): equal digests mean the same weights."""
    digest = hashlib.sha256()
    for key, value in module.state_dict().items():
        value = value.detach().cpu().contiguous()
        digest.update(f"{key}:{value.dtype}:{tuple(value.shape)};".encode())
        digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes() if value.numel() else b"")
    return digest.hexdigest()


def export_control(model: torch.nn.Module, path: str | Path, *, thresholds: CannyThresholds | None = None) -> None:
    """Write the ControlNet alone (`control_model.*` keys, fp32) as safetensors, atomically: the release file. The
    canny `thresholds` of its training data go in the header (cldm.edge_record), for the demo and the evaluation."""
    state = {k: v.detach().float().cpu() for k, v in model.state_dict().items() if k.startswith(CONTROL_PREFIX)}
    save_state(state, path, metadata={"format": "pt", "source": "cutenet", **threshold_metadata(thresholds)})
