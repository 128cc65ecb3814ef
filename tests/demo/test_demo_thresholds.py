"""The demo serves a ControlNet with the canny thresholds it learned: those of its data's dataset.json, else those
its weights record; a config that says otherwise is told once."""

import logging
from dataclasses import replace

import numpy as np
from photo_pairs import photo, write_photo_pairs
from PIL import Image
from repo_paths import TINY_CONFIG

from annotator.canny import CannyDetector, CannyThresholds
from annotator.util import HWC3
from cldm.weights import export_control
from demo.canny2image import generate, load_demo_model
from gradio_canny2image import main

AT = CannyThresholds(50, 150)


def _shown_edges(image: np.ndarray, thresholds: CannyThresholds) -> np.ndarray:
    """The edge map the page shows first: white on black inverted, H×W×3."""
    return 255 - HWC3(CannyDetector()(image, thresholds.low, thresholds.high))


def test_the_data_sets_the_thresholds_the_page_starts_from_and_generate_uses(tmp_path):
    demo = load_demo_model(TINY_CONFIG, device="cpu", data=write_photo_pairs(tmp_path / "data", AT))
    assert (demo.defaults.low_threshold, demo.defaults.high_threshold) == (AT.low, AT.high)
    image = photo("chelsea", 64)
    request = replace(demo.defaults, num_samples=1, ddim_steps=1, seed=0, image_resolution=64)
    shown = generate(demo, image, request).images[0]
    assert np.array_equal(shown, _shown_edges(image, AT))
    assert not np.array_equal(shown, _shown_edges(image, CannyThresholds(100, 200)))  # the thresholds tell apart


def test_the_weights_record_sets_them_and_the_config_that_differs_is_told(tmp_path, tiny_model, base, caplog):
    export_control(tiny_model, tmp_path / "control.safetensors", thresholds=AT)
    with caplog.at_level(logging.WARNING, logger="demo.canny2image"):
        demo = load_demo_model(TINY_CONFIG, device="cpu", base=base, control=tmp_path / "control.safetensors")
    assert (demo.defaults.low_threshold, demo.defaults.high_threshold) == (AT.low, AT.high)
    told = [r.getMessage() for r in caplog.records]
    assert len(told) == 1 and "serving canny 50/150" in told[0] and "100/200 (from the config)" in told[0]


def test_batch_mode_detects_at_the_recorded_thresholds(tmp_path, tiny_model, base):
    export_control(tiny_model, tmp_path / "control.safetensors", thresholds=AT)
    image = photo("coffee", 64)
    Image.fromarray(image).save(tmp_path / "in.png")
    args = ["--config", str(TINY_CONFIG), "--base", str(base), "--control", str(tmp_path / "control.safetensors")]
    args += ["--input", str(tmp_path / "in.png"), "--out", str(tmp_path / "out"), "--steps", "1", "--device", "cpu"]
    assert main(args) == 0
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out" / "edges.png")), _shown_edges(image, AT))
