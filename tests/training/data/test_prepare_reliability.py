"""Data preparation under hostile input: ids never collide, any folder keeps every image, a re-run with other settings
changes nothing, a changed original is made again, workers die with their parent, and bad flags fail first."""

import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
from PIL import Image
from repo_paths import ROOT

from pairs.manifest import MANIFEST_FILE, DatasetManifest
from pairs.prompt_file import read_prompt_file
from training.common.run_lock import run_lock
from training.data.discover import discover
from training.data.pair_images import ImageSettings
from training.data.prepare_dogs import main as prepare_main
from training.data.prepare_dogs import prepare


def _photo(path: Path, seed: int, size: int = 96) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.random.default_rng(seed).integers(0, 255, (size, size + 8, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(path)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _rows(out: Path) -> list[dict[str, str]]:
    return read_prompt_file(out / "prompt.json") + read_prompt_file(out / "prompt_val.json")


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and err.count("\n") == 0, err
    return err


def test_ids_never_collide(tmp_path):
    images = tmp_path / "images"
    names = [
        "n02085620-Chihuahua/dog.jpg",
        "n02086240-Shih-Tzu/dog.jpg",  # the same file name in two breed folders
        "x.jpg",
        "x.png",  # the same stem, two formats
        "a/b.jpg",
        "a__b.jpg",  # a path and a name that flattening would make equal
    ]
    for seed, name in enumerate(names):
        _photo(images / name, seed)
    out = tmp_path / "out"
    prepare(images, out, settings=ImageSettings(size=64), captioner="breed", workers=1, val_fraction=0.0)
    rows = _rows(out)
    assert len(rows) == len(names) and len({r["target"] for r in rows}) == len(names)
    targets = [(out / r["target"]).read_bytes() for r in rows]
    assert len(set(targets)) == len(names)  # six different photos, none lost or overwritten
    sources = DatasetManifest.read(out).sources
    assert sorted(Path(s.path).relative_to(images).as_posix() for s in sources.values()) == sorted(names)


def test_a_plain_folder_keeps_every_image_and_reads_no_breed_from_other_names(tmp_path):
    images = tmp_path / "images"
    for seed, name in enumerate(["top.jpg", "new-photos/a.jpg", "nice-dogs/b.jpg", "n02085620-Chihuahua/c.jpg"]):
        _photo(images / name, seed)
    records = {r.item_id: r.breed for r in discover(images)}
    assert records == {
        "top.jpg": None,
        "new-photos/a.jpg": None,
        "nice-dogs/b.jpg": None,
        "n02085620-Chihuahua/c.jpg": "chihuahua",
    }


def test_a_rerun_with_other_settings_changes_nothing_and_a_changed_original_is_made_again(tmp_path, capsys):
    images, out = tmp_path / "images", tmp_path / "out"
    for seed in range(3):
        _photo(images / f"p{seed}.jpg", seed)
    args = ["--images", str(images), "--out", str(out), "--captioner", "breed", "--workers", "1", "--size", "64"]
    assert prepare_main(args) == 0
    before = _snapshot(out)
    capsys.readouterr()
    for other in (["--size", "128"], ["--low-threshold", "50"], ["--crop", "squash"]):
        assert prepare_main([*args, *other]) == 2
        assert "prepared with other settings" in _one_error_line(capsys)
        assert _snapshot(out) == before
    _photo(images / "p1.jpg", 99)  # the user replaced a photo under the same name
    assert prepare_main(args) == 0
    after = _snapshot(out)
    changed = sorted(k for k in before if before[k] != after.get(k))
    assert "target/p1.jpg.jpg" in changed and "source/p1.jpg.png" in changed
    assert not [k for k in changed if k.startswith(("target/p0", "target/p2"))]
    captions = [json.loads(line)["id"] for line in (out / "captions.jsonl").read_text().splitlines()]
    assert sorted(captions) == ["p0.jpg", "p1.jpg", "p2.jpg"]  # one line per id, p1's made again


def test_prepared_pairs_without_a_manifest_are_not_guessed(tmp_path, capsys):
    images, out = tmp_path / "images", tmp_path / "out"
    _photo(images / "p.jpg", 0)
    assert prepare_main(["--images", str(images), "--out", str(out), "--captioner", "breed", "--size", "64"]) == 0
    (out / MANIFEST_FILE).unlink()
    capsys.readouterr()
    assert prepare_main(["--images", str(images), "--out", str(out), "--captioner", "breed", "--size", "64"]) == 2
    assert f"no {MANIFEST_FILE}" in _one_error_line(capsys)


def test_bad_flags_fail_before_any_work(dogs_tree, tmp_path, capsys):
    out = tmp_path / "out"
    base = ["--images", str(dogs_tree["images"]), "--out", str(out), "--captioner", "breed", "--size", "64"]
    (tmp_path / "bad.mat").write_text("not a mat file")
    cases = [
        (["--val-fraction", "2"], "--val-fraction"),
        (["--annotations", str(tmp_path / "missing")], "annotations folder"),
        (["--test-list", str(tmp_path / "bad.mat")], "bad.mat"),
        (["--limit", "0"], "--limit"),
    ]
    for extra, message in cases:
        assert prepare_main([*base, *extra]) == 2
        assert message in _one_error_line(capsys)
        assert not out.exists()


def test_a_second_preparation_on_one_out_is_refused(dogs_tree, tmp_path, capsys):
    out = tmp_path / "out"
    with run_lock(out):  # a preparation already running there
        assert prepare_main(["--images", str(dogs_tree["images"]), "--out", str(out), "--captioner", "breed"]) == 2
    assert "in use by another run" in _one_error_line(capsys)
    assert sorted(p.name for p in out.iterdir()) == []


def test_a_newline_in_a_file_name_stays_in_its_quarantine_row(tmp_path):
    images, out = tmp_path / "images", tmp_path / "out"
    _photo(images / "good.jpg", 0)
    (images / "bad\nname.jpg").write_text("not a picture")
    prepare(images, out, settings=ImageSettings(size=64), captioner="breed", workers=1)
    rows = list(csv.reader(io.StringIO((out / "quarantine.tsv").read_text()), delimiter="\t"))
    assert len(rows) == 1 and rows[0][0].endswith("bad\nname.jpg")


def _start_with_workers(images: Path, out: Path) -> tuple[subprocess.Popen, list[psutil.Process]]:
    """prepare_dogs in a subprocess with 2 pool workers, once both are running and the first pairs are written."""
    for i in range(400):
        _photo(images / f"p{i:03d}.jpg", i, size=512)
    cmd = [sys.executable, "-m", "training.data.prepare_dogs", "--images", str(images), "--out", str(out)]
    proc = subprocess.Popen(
        [*cmd, "--captioner", "breed", "--workers", "2"], cwd=ROOT, stderr=subprocess.PIPE, text=True
    )
    deadline = time.time() + 120
    workers: list[psutil.Process] = []
    while len(workers) < 2 or not any((out / "target").glob("*.jpg")):
        assert proc.poll() is None and time.time() < deadline, "prepare ended before its workers were seen"
        workers = psutil.Process(proc.pid).children(recursive=True)
        time.sleep(0.05)
    return proc, workers


@pytest.mark.slow
def test_pool_workers_die_with_a_killed_parent(tmp_path):
    proc, workers = _start_with_workers(tmp_path / "images", tmp_path / "out")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    gone, alive = psutil.wait_procs(workers, timeout=15)
    assert not alive, f"orphaned workers: {[p.pid for p in alive]}"


@pytest.mark.slow
def test_sigterm_stops_prepare_with_a_line_and_a_rerun_finishes(tmp_path):
    images, out = tmp_path / "images", tmp_path / "out"
    proc, workers = _start_with_workers(images, out)
    proc.terminate()
    err = proc.communicate(timeout=60)[1]
    assert proc.returncode == 128 + signal.SIGTERM and "SIGTERM" in err
    assert "Traceback" not in err
    gone, alive = psutil.wait_procs(workers, timeout=15)
    assert not alive and not (out / ".lock").exists() and not list(out.rglob("*.tmp"))
    assert prepare_main(["--images", str(images), "--out", str(out), "--captioner", "breed", "--workers", "2"]) == 0
    assert len(_rows(out)) == 400
