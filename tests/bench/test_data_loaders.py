"""bench/data_loaders.py: it times every layout through the run's loader and measures memory by dataset size."""

import pytest

from bench.data_loaders import main


def test_it_times_each_layout_through_the_runs_loader(capsys):
    assert (
        main(["--n", "8", "--size", "64", "--batches", "2", "--repeats", "1", "--workers", "0", "--shard-size", "3"])
        == 0
    )
    out = capsys.readouterr().out
    assert all(name in out for name in ("folder (prompt.json)", "webdataset shards (3/tar)", "Hugging Face (imported)"))
    assert out.count("samples/s") == 3


@pytest.mark.slow
def test_it_measures_the_peak_memory_of_each_size(capsys):
    assert main(["--rss", "20", "40", "--rss-samples", "16"]) == 0
    out = capsys.readouterr().out
    assert "shards" in out and "folder" in out and out.count(" MB") == 4
