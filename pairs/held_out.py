"""Which pairs are held out for evaluation: a stable hash of each pair's id, the same on every machine and run."""

from __future__ import annotations

import hashlib


def check_val_fraction(val_fraction: float) -> None:
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"--val-fraction is the held-out share, from 0 to below 1; got {val_fraction}")


def is_validation(item_id: str, val_fraction: float) -> bool:
    """A stable split: the same items are held out on every machine and every run."""
    digest = int(hashlib.sha1(item_id.encode()).hexdigest()[:8], 16)
    return digest / 0xFFFFFFFF < val_fraction
