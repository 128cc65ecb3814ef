"""Hugging Face datasets in the layouts diffusers users hold (an imagefolder with metadata.jsonl, save_to_disk,
parquet) become prepared folders: image bytes and prompts kept exactly, canny maps made where there are none,
bad input named in one line, and an import folder never reused for other data."""

import cv2
import numpy as np
import pytest
from fill50k import write_fill50k_like
from PIL import Image

from annotator.canny import DEFAULT_THRESHOLDS, CannyDetector
from pairs.manifest import edge_thresholds
from pairs.prompt_file import PROMPT_FILE, VAL_PROMPT_FILE, read_prompt_file
from training.data.hf_import import import_hf, main
from training.data.hf_source import Columns, HFDataError, is_hf_dataset


def test_an_imagefolder_imports_with_its_bytes_and_prompts_unchanged(tmp_path):
    src, rows = write_fill50k_like(tmp_path / "fill50k")
    assert is_hf_dataset(src)
    out = import_hf(str(src), tmp_path / "pairs", val_fraction=0.3)
    imported = read_prompt_file(out / PROMPT_FILE) + read_prompt_file(out / VAL_PROMPT_FILE)
    assert len(imported) == len(rows) and read_prompt_file(out / VAL_PROMPT_FILE)
    by_prompt = {r["text"]: r for r in rows}
    for row in imported:
        want = by_prompt[row["prompt"]]
        assert (out / row["target"]).read_bytes() == (src / want["file_name"]).read_bytes()
        assert (out / row["source"]).read_bytes() == (src / want["conditioning_image"]).read_bytes()
    assert edge_thresholds(out) == DEFAULT_THRESHOLDS and not is_hf_dataset(out)
    assert import_hf(str(src), out) == out  # a finished import is reused as it is


def test_save_to_disk_and_parquet_without_a_conditioning_column_get_canny_maps(tmp_path):
    import datasets

    src, rows = write_fill50k_like(tmp_path / "fill50k", n=4)
    ds = datasets.load_dataset("imagefolder", data_dir=str(src), split="train").remove_columns("conditioning_image")
    ds = ds.rename_column("text", "prompt")
    ds.save_to_disk(str(tmp_path / "saved"))
    ds.to_parquet(str(tmp_path / "pairs.parquet"))
    for name, source in (("from_disk", tmp_path / "saved"), ("from_parquet", tmp_path / "pairs.parquet")):
        out = import_hf(str(source), tmp_path / name, columns=Columns(caption="prompt"), val_fraction=0.5)
        for row in read_prompt_file(out / PROMPT_FILE):
            target = np.asarray(Image.open(out / row["target"]).convert("RGB"))
            edges = cv2.imread(str(out / row["source"]), cv2.IMREAD_GRAYSCALE)
            assert np.array_equal(edges, CannyDetector()(target))


def test_a_missing_column_and_a_corrupt_image_are_named_in_one_line(tmp_path, capsys):
    src, _ = write_fill50k_like(tmp_path / "fill50k", n=3)
    assert main([str(src), str(tmp_path / "a"), "--caption-column", "prompt"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "no column 'prompt'" in errors[0] and "--caption-column" in errors[0]
    (src / "conditioning_images" / "1.png").write_bytes(b"not a png")
    with pytest.raises(HFDataError, match=r"row 1 .*'conditioning_image': not a readable image"):
        import_hf(str(src), tmp_path / "b")


def test_an_import_folder_is_never_reused_for_other_data(tmp_path):
    first, _ = write_fill50k_like(tmp_path / "one", seed=0)
    second, _ = write_fill50k_like(tmp_path / "two", seed=1)
    out = import_hf(str(first), tmp_path / "pairs")
    with pytest.raises(HFDataError, match="imported from other data"):
        import_hf(str(second), out)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "mine.txt").write_text("x")
    with pytest.raises(HFDataError, match="not empty"):
        import_hf(str(first), tmp_path / "busy")


def test_skip_bad_leaves_out_and_lists_the_rows_that_cannot_be_imported(tmp_path):
    src, rows = write_fill50k_like(tmp_path / "fill50k", n=6)
    (src / "conditioning_images" / "2.png").write_bytes(b"not a png")
    out = import_hf(str(src), tmp_path / "pairs", skip_bad=True, val_fraction=0.3)
    imported = read_prompt_file(out / PROMPT_FILE) + read_prompt_file(out / VAL_PROMPT_FILE)
    assert sorted(r["prompt"] for r in imported) == sorted(r["text"] for i, r in enumerate(rows) if i != 2)
    assert "row 2" in (out / "import_skipped.txt").read_text()


def test_an_empty_dataset_is_refused_and_a_hub_id_goes_through_load_dataset(tmp_path, monkeypatch):
    import datasets

    src, _ = write_fill50k_like(tmp_path / "fill50k", n=4)
    local = datasets.load_dataset("imagefolder", data_dir=str(src))
    local["train"].select([]).save_to_disk(str(tmp_path / "empty"))
    local["train"].select([]).to_parquet(str(tmp_path / "empty.parquet"))
    for empty in ("empty", "empty.parquet"):
        with pytest.raises(HFDataError, match=f"{empty} cannot be opened .* it must hold rows"):
            import_hf(str(tmp_path / empty), tmp_path / f"out_{empty}")
    asked = []
    # As on the hub, both images are Image features holding their bytes.
    as_hub = local.map(lambda r: {"conditioning_image": str(src / r["conditioning_image"])})
    as_hub = as_hub.cast_column("conditioning_image", datasets.Image())

    def hub(name, *args, **kwargs):  # stands in for the hub: the tests never need the network
        asked.append(name)
        return as_hub

    monkeypatch.setattr(datasets, "load_dataset", hub)
    assert is_hf_dataset("hf:fusing/fill50k")
    out = import_hf("hf:fusing/fill50k", tmp_path / "from_hub", val_fraction=0.5)
    assert asked == ["fusing/fill50k"] and read_prompt_file(out / PROMPT_FILE)
