"""The Hugging Face import trusts nothing in the dataset: edge maps from exactly the pixels training reads (EXIF,
16-bit), held-out maps made as the training split's, paths kept inside the dataset, bombs and bad settings named,
per-split imagefolders recognised, and a moved source reused by its fingerprint."""

import json
import shutil

import cv2
import numpy as np
import pytest
from fill50k import write_fill50k_like
from PIL import Image

from annotator.canny import CannyDetector
from annotator.util import read_rgb
from pairs.prompt_file import PROMPT_FILE, VAL_PROMPT_FILE, read_prompt_file
from training.data.hf_import import import_hf
from training.data.hf_source import HFDataError, is_hf_dataset


def _photo(h=64, w=128) -> np.ndarray:
    image = np.zeros((h, w, 3), np.uint8)
    image[8:40, 16:60] = (250, 200, 30)  # an off-centre block: a turn moves its edges
    return image


def _imagefolder(root, images: dict[str, bytes | None]) -> None:
    root.mkdir(parents=True)
    rows = []
    for name, data in images.items():
        if data is not None:
            (root / name).write_bytes(data)
        rows.append({"file_name": name, "text": f"a picture {name}"})
    (root / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def _rotated_jpeg_bytes() -> bytes:
    import io

    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(np.rot90(_photo(), 1))).save(buffer, "JPEG", quality=95, exif=exif.tobytes())
    return buffer.getvalue()


def _png16_bytes() -> bytes:
    import io

    deep = np.full((64, 64), 3000, np.uint16)
    deep[16:48, 8:40] = 62000
    buffer = io.BytesIO()
    Image.fromarray(deep).save(buffer, "PNG")
    return buffer.getvalue()


def test_edge_maps_are_made_from_the_pixels_training_reads(tmp_path):
    src = tmp_path / "photos"
    _imagefolder(src, {"phone.jpg": _rotated_jpeg_bytes(), "deep.png": _png16_bytes(), "plain.png": None})
    Image.fromarray(_photo()).save(src / "plain.png")
    out = import_hf(str(src), tmp_path / "pairs", val_fraction=0.4)
    rows = read_prompt_file(out / PROMPT_FILE) + read_prompt_file(out / VAL_PROMPT_FILE)
    assert len(rows) == 3
    for row in rows:
        trained = read_rgb(out / row["target"])  # what the dataset gives training
        edges = cv2.imread(str(out / row["source"]), cv2.IMREAD_GRAYSCALE)
        assert edges.shape == trained.shape[:2]
        np.testing.assert_array_equal(edges, CannyDetector()(trained))
        assert edges.any(), row  # a 16-bit picture no longer gives an all-black map


def _with_hint_images(dataset, src):
    """The conditioning column as an Image feature (the relative paths of the imagefolder made absolute), as a
    dataset saved with its edge maps holds them."""
    import datasets

    whole = dataset.map(lambda row: {"conditioning_image": str(src / row["conditioning_image"])})
    return whole.cast_column("conditioning_image", datasets.Image())


def test_a_held_out_split_without_the_conditioning_column_is_not_scored_against_canny_maps(tmp_path):
    import datasets

    src, _ = write_fill50k_like(tmp_path / "fill50k", n=6)
    train = _with_hint_images(datasets.load_dataset("imagefolder", data_dir=str(src), split="train"), src)
    held = train.select(range(2)).remove_columns("conditioning_image")
    datasets.DatasetDict({"train": train, "validation": held}).save_to_disk(str(tmp_path / "saved"))
    out = import_hf(str(tmp_path / "saved"), tmp_path / "pairs", val_fraction=0.4)
    val = read_prompt_file(out / VAL_PROMPT_FILE)
    assert val and not any(r["target"].startswith("target/validation-") for r in val)  # a share of train instead
    column = {p.read_bytes() for p in (src / "conditioning_images").iterdir()}
    assert all((out / row["source"]).read_bytes() in column for row in val)  # the column's maps, as training's


def test_a_path_outside_the_dataset_is_refused(tmp_path):
    src, _ = write_fill50k_like(tmp_path / "fill50k", n=3)
    secret = tmp_path / "secret.png"
    Image.fromarray(_photo()).save(secret)
    lines = (src / "metadata.jsonl").read_text().splitlines()
    row = json.loads(lines[1])
    row["conditioning_image"] = "../secret.png"
    lines[1] = json.dumps(row)
    (src / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(HFDataError, match=r"row 1 .*'\.\./secret.png' is not a relative path inside"):
        import_hf(str(src), tmp_path / "pairs")


def test_a_decompression_bomb_row_is_an_import_error_that_skip_bad_lists(tmp_path):
    src, rows = write_fill50k_like(tmp_path / "fill50k", n=5)
    Image.new("L", (12000, 8000)).save(src / "images" / "2.png")  # 96 megapixels, a few hundred kB
    with pytest.raises(HFDataError, match=r"row 2 .*12000×8000 pixels"):
        import_hf(str(src), tmp_path / "a")
    out = import_hf(str(src), tmp_path / "b", skip_bad=True, val_fraction=0.3)
    imported = read_prompt_file(out / PROMPT_FILE) + read_prompt_file(out / VAL_PROMPT_FILE)
    assert len(imported) == 4 and "row 2" in (out / "import_skipped.txt").read_text()


@pytest.mark.parametrize("fraction", [-0.1, 1.0, 3.0])
def test_a_val_fraction_outside_0_to_1_is_refused_before_anything_is_written(tmp_path, fraction):
    src, _ = write_fill50k_like(tmp_path / "fill50k", n=3)
    with pytest.raises(HFDataError, match="--val-fraction"):
        import_hf(str(src), tmp_path / "pairs", val_fraction=fraction)
    assert not (tmp_path / "pairs").exists()


def test_an_imagefolder_with_per_split_metadata_is_recognised(tmp_path):
    flat, rows = write_fill50k_like(tmp_path / "flat", n=4)
    split = tmp_path / "split"
    shutil.copytree(flat, split / "train")
    rows = [{"file_name": r["file_name"], "text": r["text"]} for r in rows]  # canny maps: no extra path column
    (split / "train" / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert is_hf_dataset(split)
    out = import_hf(str(split), tmp_path / "pairs", val_fraction=0.5)
    assert len(read_prompt_file(out / PROMPT_FILE) + read_prompt_file(out / VAL_PROMPT_FILE)) == 4


def test_a_moved_save_to_disk_source_reuses_its_import_by_fingerprint(tmp_path):
    import datasets

    src, _ = write_fill50k_like(tmp_path / "fill50k", n=4)
    train = _with_hint_images(datasets.load_dataset("imagefolder", data_dir=str(src), split="train"), src)
    train.save_to_disk(str(tmp_path / "saved"))
    out = import_hf(str(tmp_path / "saved"), tmp_path / "pairs", val_fraction=0.5)
    before = (out / PROMPT_FILE).read_text()
    shutil.move(tmp_path / "saved", tmp_path / "moved")
    assert import_hf(str(tmp_path / "moved"), out, val_fraction=0.5) == out
    assert (out / PROMPT_FILE).read_text() == before
