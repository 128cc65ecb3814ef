"""The canny thresholds a ControlNet learned, carried in its weights file: the edge maps it was trained on were made
with them, so it is scored and served with them. They travel as safetensors header metadata (text), which
diffusers, ComfyUI and A1111 ignore."""

from __future__ import annotations

from pathlib import Path

from annotator.canny import CannyThresholds

LOW_KEY, HIGH_KEY = "cutenet_canny_low_threshold", "cutenet_canny_high_threshold"


def threshold_metadata(thresholds: CannyThresholds | None) -> dict[str, str]:
    """The metadata entries that record `thresholds` (none for None: the weights' data is unknown)."""
    if thresholds is None:
        return {}
    return {LOW_KEY: str(thresholds.low), HIGH_KEY: str(thresholds.high)}


def recorded_thresholds(path: str | Path) -> CannyThresholds | None:
    """The thresholds recorded in a .safetensors file or a diffusers folder's weights; None where nothing is recorded
    (weights from elsewhere, or a .pth/.ckpt, whose metadata is only reachable by unpickling all of it)."""
    path = Path(path)
    if path.is_dir():
        path = path / "diffusion_pytorch_model.safetensors"
    if path.suffix.lower() != ".safetensors" or not path.is_file():
        return None
    metadata = _header_metadata(path)
    if LOW_KEY not in metadata or HIGH_KEY not in metadata:
        return None
    try:
        return CannyThresholds(int(metadata[LOW_KEY]), int(metadata[HIGH_KEY]))
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"{path}: its recorded canny thresholds are damaged ({err}); export the weights again"
        ) from None


def _header_metadata(path: Path) -> dict[str, str]:
    """The `__metadata__` of a safetensors header, read without touching the tensors."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), "pt") as f:
            return dict(f.metadata() or {})
    except (OSError, SafetensorError) as err:
        raise ValueError(f"{path} is not a readable safetensors file ({err})") from None
