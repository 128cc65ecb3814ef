"""The toy scores on drawn images whose answer is known."""

import cv2
import numpy as np
import pytest

from annotator.canny import CannyDetector
from evaluation.toy_scores import (
    ToyPrompt,
    circle_centre,
    edge_circle,
    fill_colour,
    nearest_colour,
    parse_toy_prompt,
    position_error,
)
from pairs.toy_palette import COLOURS


def _circle(centre: tuple[int, int], radius: int, fill: str, background: str, size: int = 64) -> np.ndarray:
    image = np.empty((size, size, 3), np.uint8)
    image[:] = COLOURS[background]
    cv2.circle(image, centre, radius, COLOURS[fill], thickness=-1, lineType=cv2.LINE_AA)
    return image


def _edges(image: np.ndarray) -> np.ndarray:
    return CannyDetector()(image)


def test_prompt_parsing_reads_the_fill_and_background_and_refuses_other_prompts() -> None:
    assert parse_toy_prompt("a red circle on a white background", COLOURS) == ToyPrompt("red", "white")
    assert parse_toy_prompt("an orange circle on a blue background", COLOURS) == ToyPrompt("orange", "blue")
    assert parse_toy_prompt("a photo of a dog", COLOURS) is None
    assert parse_toy_prompt("a mauve circle on a white background", COLOURS) is None


def test_nearest_colour_is_the_palette_entry() -> None:
    for name, rgb in COLOURS.items():
        assert nearest_colour(np.array(rgb) + 10, COLOURS) == name


def test_edge_circle_recovers_centre_and_radius() -> None:
    x, y, r = edge_circle(_edges(_circle((30, 25), 12, "red", "white")))
    assert (x, y) == pytest.approx((30, 25), abs=0.6) and r == pytest.approx(12, abs=1.5)


def test_colour_is_read_inside_the_edge_maps_circle() -> None:
    edges = _edges(_circle((30, 25), 12, "red", "white"))
    assert fill_colour(_circle((30, 25), 12, "red", "white"), edges, COLOURS) == "red"
    assert fill_colour(_circle((30, 25), 12, "blue", "white"), edges, COLOURS) == "blue"
    # The right colour in the wrong place: inside the edge map's circle there is only background.
    assert fill_colour(_circle((48, 48), 8, "red", "white"), _edges(_circle((14, 14), 8, "red", "white")), COLOURS) == (
        "white"
    )


def test_position_error_is_the_shift_in_pixels() -> None:
    prompt = ToyPrompt("red", "white")
    edges = _edges(_circle((30, 25), 12, "red", "white"))
    assert position_error(_circle((30, 25), 12, "red", "white"), edges, prompt, COLOURS) == pytest.approx(0, abs=0.6)
    assert position_error(_circle((33, 29), 12, "red", "white"), edges, prompt, COLOURS) == pytest.approx(5, abs=0.6)
    # An off-palette but reddish fill still counts as the fill; a plain background has no circle at all.
    orange_ish = _circle((36, 25), 12, "orange", "white")
    assert position_error(orange_ish, edges, prompt, COLOURS) == pytest.approx(6, abs=0.6)
    blank = np.full((64, 64, 3), COLOURS["white"], np.uint8)
    assert circle_centre(blank, prompt, COLOURS) is None
    assert position_error(blank, edges, prompt, COLOURS) == float("inf")


def test_an_empty_edge_map_is_refused_with_a_reason() -> None:
    with pytest.raises(ValueError, match="no edge pixel"):
        edge_circle(np.zeros((64, 64), np.uint8))
