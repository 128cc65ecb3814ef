"""Paths inside the repository, so that tests pass wherever pytest is started from."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY_CONFIG = ROOT / "models" / "cldm_tiny.yaml"
TOY_CONFIG = ROOT / "models" / "cldm_toy.yaml"
TOY_BASE = ROOT / "models" / "toy_base.safetensors"
