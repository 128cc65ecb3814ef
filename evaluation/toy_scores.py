"""Scores a reader can check by eye on the toy circles: is the fill the colour the prompt names, and is
the circle where the edge map puts it?

Both work on one generated image at a time and need the toy prompt ("a red circle on a white background")
and the palette the toy set was drawn from (`pairs.toy_palette.COLOURS`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import cv2
import numpy as np

TOY_PROMPT = re.compile(r"^an? (?P<fill>\w+) circle on an? (?P<background>\w+) background$")

Palette = Mapping[str, tuple[int, int, int]]


@dataclass(frozen=True)
class ToyPrompt:
    fill: str
    background: str


def parse_toy_prompt(prompt: str, palette: Palette) -> ToyPrompt | None:
    """The fill and background colour names of a toy prompt; None for any other prompt."""
    match = TOY_PROMPT.match(prompt.strip())
    if match is None or match["fill"] not in palette or match["background"] not in palette:
        return None
    return ToyPrompt(match["fill"], match["background"])


def _check_rgb(name: str, image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise TypeError(f"{name} must be a uint8 H×W×3 RGB array, got {getattr(image, 'dtype', type(image))}")


def nearest_colour(rgb: np.ndarray, palette: Palette) -> str:
    """The palette name nearest (Euclidean in RGB) to one colour."""
    names = list(palette)
    colours = np.array([palette[n] for n in names], np.float64)  # K×3
    return names[int(np.argmin(((colours - np.asarray(rgb, np.float64)) ** 2).sum(axis=1)))]


def edge_circle(edges: np.ndarray) -> tuple[float, float, float]:
    """(x, y, radius) of the circle an edge map outlines: the smallest circle enclosing its edge pixels."""
    if edges.ndim != 2:
        raise ValueError(f"edges must be a 2-D (H×W) map, got shape {edges.shape}")
    ys, xs = np.nonzero(edges)
    if len(xs) == 0:
        raise ValueError("the edge map holds no edge pixel: there is no circle to score against")
    (x, y), radius = cv2.minEnclosingCircle(np.stack([xs, ys], axis=1).astype(np.float32))
    return float(x), float(y), float(radius)


def disc_mask(shape: tuple[int, int], circle: tuple[float, float, float], shrink: float = 2.0) -> np.ndarray:
    """H×W bool: the pixels whose centres lie inside the circle, `shrink` px in from its outline."""
    x, y, radius = circle
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (xx - x) ** 2 + (yy - y) ** 2 <= max(radius - shrink, 0.5) ** 2


def fill_colour(image: np.ndarray, edges: np.ndarray, palette: Palette) -> str:
    """The palette colour nearest to the median colour of `image` inside the edge map's circle."""
    _check_rgb("image", image)
    mask = disc_mask(image.shape[:2], edge_circle(edges))
    return nearest_colour(np.median(image[mask], axis=0), palette)


def circle_centre(image: np.ndarray, prompt: ToyPrompt, palette: Palette) -> tuple[float, float] | None:
    """(x, y) of the generated circle: the centroid of the largest connected region whose pixels are nearer
    to the prompt's fill colour than to its background colour. None when no pixel is."""
    _check_rgb("image", image)
    pixels = image.astype(np.float64)  # H×W×3
    fill = ((pixels - np.array(palette[prompt.fill])) ** 2).sum(axis=2)  # H×W
    background = ((pixels - np.array(palette[prompt.background])) ** 2).sum(axis=2)  # H×W
    mask = (fill < background).astype(np.uint8)
    n, labels, stats, centroids = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if n < 2:
        return None
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return float(centroids[largest][0]), float(centroids[largest][1])


def position_error(image: np.ndarray, edges: np.ndarray, prompt: ToyPrompt, palette: Palette) -> float:
    """Distance in pixels from the generated circle's centre to the edge map's circle centre; inf when the
    image holds no fill-coloured region at all."""
    centre = circle_centre(image, prompt, palette)
    if centre is None:
        return float("inf")
    x, y, _ = edge_circle(edges)
    return float(np.hypot(centre[0] - x, centre[1] - y))
