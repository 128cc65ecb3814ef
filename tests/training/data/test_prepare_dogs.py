import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from repo_paths import ROOT

from training.data.crop import crop_square, square_window
from training.data.discover import Box, breed_from_folder, discover
from training.data.pair_images import ImageSettings
from training.data.prepare_dogs import main as prepare_main
from training.data.prepare_dogs import prepare
from training.data.validate import load_rgb

SETTINGS = ImageSettings(size=64)
BAD = {
    "n02088364_empty.jpg": "empty",
    "n02088364_text.jpg": "not an image",
    "n02088364_truncated.jpg": "decode",
    "n02088364_bomb.png": "decompression bomb",
}


def _hashes(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_discover_reads_breeds_and_boxes(dogs_tree):
    records = discover(dogs_tree["images"], dogs_tree["annotations"])
    chihuahua = [r for r in records if r.breed == "chihuahua"]
    assert len(chihuahua) == 3 and all(len(r.boxes) == 1 for r in chihuahua)
    assert breed_from_folder("n02086240-Shih-Tzu") == "shih-tzu"
    assert breed_from_folder("n02085782-Japanese_spaniel") == "japanese spaniel"


def test_bad_files_are_quarantined_originals_untouched_and_run_completes(dogs_tree, tmp_path):
    before = _hashes(dogs_tree["images"])
    out = tmp_path / "out"
    summary = prepare(
        dogs_tree["images"],
        out,
        annotations=dogs_tree["annotations"],
        settings=SETTINGS,
        captioner="breed",
        workers=1,
        val_fraction=0.3,
    )
    assert _hashes(dogs_tree["images"]) == before
    quarantined = {Path(p).name: reason for p, reason in summary.quarantined.items()}
    assert set(quarantined) == set(BAD)
    assert all(BAD[name] in reason for name, reason in quarantined.items())
    assert (out / "quarantine.tsv").read_text().count("\n") == len(BAD)
    rows = [json.loads(line) for f in ("prompt.json", "prompt_val.json") for line in (out / f).read_text().splitlines()]
    assert len(rows) == 6 + 4  # six photos + CMYK, gray, RGBA and palette GIF converted
    assert summary.train + summary.val == 10 and summary.val >= 1
    for row in rows:
        assert (out / row["source"]).is_file() and (out / row["target"]).is_file()
        assert row["prompt"].startswith("a photography of")
    assert any("chihuahua" in r["prompt"] for r in rows)


def test_interrupt_and_rerun_is_byte_identical_to_a_clean_run(dogs_tree, tmp_path):
    clean = tmp_path / "clean"
    prepare(
        dogs_tree["images"],
        clean,
        annotations=dogs_tree["annotations"],
        settings=SETTINGS,
        captioner="breed",
        workers=1,
    )
    resumed = tmp_path / "resumed"
    cmd = [
        sys.executable,
        "-m",
        "training.data.prepare_dogs",
        "--images",
        str(dogs_tree["images"]),
        "--annotations",
        str(dogs_tree["annotations"]),
        "--out",
        str(resumed),
        "--size",
        "64",
        "--captioner",
        "breed",
        "--workers",
        "2",
    ]
    subprocess.run(cmd + ["--limit", "4"], check=True, capture_output=True, cwd=ROOT)
    # A crash in the middle of writing captions leaves a cut-off line behind.
    with (resumed / "captions.jsonl").open("a") as f:
        f.write('{"id": "n02086240_1", "pro')
    (resumed / "prompt.json").unlink()
    subprocess.run(cmd, check=True, capture_output=True, cwd=ROOT)
    assert _hashes(resumed) == _hashes(clean)


def test_bbox_crop_keeps_the_box_inside():
    rng = np.random.default_rng(0)
    for _ in range(50):
        h, w = (int(v) for v in rng.integers(40, 300, size=2))
        x0, y0 = int(rng.integers(0, w - 10)), int(rng.integers(0, h - 10))
        box = Box(x0, y0, int(rng.integers(x0 + 5, w + 1)), int(rng.integers(y0 + 5, h + 1)))
        top, left, side = square_window(h, w, box)
        assert top <= box.ymin and left <= box.xmin and top + side >= box.ymax and left + side >= box.xmax
        assert side >= min(h, w)
    image = np.zeros((100, 300, 3), np.uint8)
    image[10:90, 250:290] = 255  # the "dog" sits at the right edge
    out = crop_square(image, size=64, mode="bbox", boxes=[Box(250, 10, 290, 90)])
    assert out.shape == (64, 64, 3) and out.mean() > 40  # the white box is in the crop
    assert crop_square(image, size=64, mode="center").mean() == 0


def test_missing_images_folder_is_a_clear_cli_error(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "training.data.prepare_dogs",
            "--images",
            str(tmp_path / "nope"),
            "--out",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 2 and "does not exist" in result.stderr and "Traceback" not in result.stderr


def test_test_list_mat_becomes_the_validation_split(dogs_tree, tmp_path):
    from scipy.io import savemat

    entries = np.empty((2, 1), dtype=object)
    entries[0, 0] = np.array(["n02085620-Chihuahua/n02085620_0.jpg"])
    entries[1, 0] = np.array(["n02086240-Shih-Tzu/n02086240_2.jpg"])
    savemat(tmp_path / "test_list.mat", {"file_list": entries})
    out = tmp_path / "out"
    summary = prepare(
        dogs_tree["images"],
        out,
        annotations=dogs_tree["annotations"],
        settings=SETTINGS,
        captioner="breed",
        workers=1,
        test_list=tmp_path / "test_list.mat",
    )
    val = [json.loads(line)["target"] for line in (out / "prompt_val.json").read_text().splitlines()]
    assert (
        sorted(val)
        == ["target/n02085620-Chihuahua/n02085620_0.jpg.jpg", "target/n02086240-Shih-Tzu/n02086240_2.jpg.jpg"]
        and summary.val == 2
    )


def test_exif_orientation_is_applied(tmp_path):
    photo = np.zeros((40, 100, 3), np.uint8)
    photo[:, :10] = 255  # a white band on the left of the stored pixels
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to view": how phones store portrait photos
    Image.fromarray(photo).save(tmp_path / "phone.jpg", exif=exif, quality=95)
    upright = load_rgb(tmp_path / "phone.jpg")
    assert upright.shape == (100, 40, 3)  # portrait, as the phone showed it
    assert upright[:10].mean() > 200 and upright[-10:].mean() < 50  # the band is now at the top


def test_an_out_folder_inside_the_images_is_refused(dogs_tree, capsys):
    inside = dogs_tree["images"] / "prepared"
    assert prepare_main(["--images", str(dogs_tree["images"]), "--out", str(inside), "--captioner", "breed"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "inside --images" in err and not inside.exists()


def test_an_unwritable_out_is_one_error_line(dogs_tree, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")  # --out under a file: the OS refuses to write there, as on a read-only disk
    args = ["--images", str(dogs_tree["images"]), "--out", str(blocker / "out"), "--captioner", "breed"]
    assert prepare_main([*args, "--size", "64", "--workers", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: cannot make the folder {blocker / 'out'}") and err.count("\n") == 0


def test_the_cli_also_writes_webdataset_shards_of_the_pairs(dogs_tree, tmp_path):
    from pairs.prompt_file import read_prompt_file
    from training.data.shard_dataset import ShardPairs

    out = tmp_path / "prepared"
    args = ["--images", str(dogs_tree["images"]), "--out", str(out), "--captioner", "breed", "--size", "64"]
    assert prepare_main([*args, "--workers", "1", "--format", "webdataset", "--shard-size", "2"]) == 0
    rows = read_prompt_file(out / "prompt.json")
    shards = ShardPairs(out / "shards")
    assert len(shards) == len(rows) and len(shards.shards) == (len(rows) + 1) // 2
    assert [shards.prompt(i) for i in range(len(rows))] == [r["prompt"] for r in rows]
