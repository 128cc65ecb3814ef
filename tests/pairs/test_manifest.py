"""dataset.json says how the pairs were made: the toy set writes it, the thresholds are read back from it, data
prepared before manifests falls back to the default with one line, and a damaged one is refused by name."""

import logging

import pytest

from annotator.canny import DEFAULT_THRESHOLDS, CannyThresholds
from pairs.manifest import MANIFEST_FILE, DatasetManifest, edge_thresholds
from training.data.toy_data import write_toy_dataset


def test_the_toy_set_records_how_it_was_made(tmp_path):
    write_toy_dataset(tmp_path, n=4, thresholds=CannyThresholds(50, 150))
    made = DatasetManifest.read(tmp_path).made
    assert (made.detector, made.size, made.jpeg_quality) == ("canny", 64, None)
    assert edge_thresholds(tmp_path) == CannyThresholds(50, 150)


def test_data_made_before_manifests_is_taken_at_the_default_and_says_so_once(tmp_path, caplog):
    write_toy_dataset(tmp_path, n=4)
    (tmp_path / MANIFEST_FILE).unlink()
    with caplog.at_level(logging.INFO, logger="pairs.manifest"):
        assert edge_thresholds(tmp_path) == DEFAULT_THRESHOLDS
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and str(tmp_path) in lines[0] and str(DEFAULT_THRESHOLDS) in lines[0]


def test_a_damaged_manifest_is_refused_by_name(tmp_path):
    write_toy_dataset(tmp_path, n=4)
    (tmp_path / MANIFEST_FILE).write_text('{"format": 1, "made": {"detector": "canny"}')
    with pytest.raises(ValueError, match=MANIFEST_FILE):
        edge_thresholds(tmp_path)


@pytest.mark.parametrize("low, high, error", [(200, 100, ValueError), (-1, 10, ValueError), (1.5, 10, TypeError)])
def test_impossible_thresholds_are_refused(low, high, error):
    with pytest.raises(error):
        CannyThresholds(low, high)
