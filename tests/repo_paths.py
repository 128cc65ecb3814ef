"""Paths inside the repository, so that tests pass wherever pytest is started from."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY_CONFIG = ROOT / "models" / "cldm_tiny.yaml"
TOY_CONFIG = ROOT / "models" / "cldm_toy.yaml"
TOY_BASE = ROOT / "models" / "toy_base.safetensors"


def architecture(config: str) -> dict:
    """The UNet architecture a config in models/ names (its `unet_config` params), as the keyword arguments the
    UNet and the ControlNet share: without `out_channels` and `use_checkpoint`."""
    from omegaconf import OmegaConf

    params = OmegaConf.to_container(OmegaConf.load(ROOT / "models" / config))["model"]["params"]["unet_config"][
        "params"
    ]
    return {k: v for k, v in params.items() if k not in ("out_channels", "use_checkpoint")}
