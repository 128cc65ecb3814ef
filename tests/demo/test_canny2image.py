import numpy as np
import pytest
from PIL import Image
from repo_paths import TINY_CONFIG, TOY_CONFIG
from skimage import data

from cldm.loading import load_config
from demo.canny2image import (
    DemoModel,
    GenerationInputError,
    GenerationRequest,
    generate,
    load_demo_model,
    read_upload,
    request_defaults,
)
from gradio_canny2image import main

REQUEST = dict(prompt="a cat", num_samples=2, image_resolution=64, ddim_steps=3, seed=123)


@pytest.fixture(scope="module")
def demo() -> DemoModel:
    return load_demo_model(TINY_CONFIG, device="cpu")


def test_generation_is_deterministic_for_a_seed_and_edge_map_first(demo):
    photo = data.chelsea()
    first = generate(demo, photo, GenerationRequest(**REQUEST))
    again = generate(demo, photo, GenerationRequest(**REQUEST))
    assert first.seed == 123 and len(first.images) == 3
    assert all(np.array_equal(a, b) for a, b in zip(first.images, again.images))
    edges = first.images[0]
    assert edges.shape[:2] == first.images[1].shape[:2] and edges.min() == 0 and edges.max() == 255
    assert set(np.unique(edges)) == {0, 255}  # the inverted canny map, not a generated image
    h, w = first.images[1].shape[:2]
    assert min(h, w) == 64 and h % 64 == 0 and w % 64 == 0 and first.images[1].dtype == np.uint8
    other = generate(demo, photo, GenerationRequest(**{**REQUEST, "seed": 124}))
    assert not np.array_equal(other.images[1], first.images[1])


def test_a_random_seed_is_reported_and_reproduces_its_images(demo):
    random = generate(demo, data.chelsea(), GenerationRequest(**{**REQUEST, "seed": -1, "num_samples": 1}))
    again = generate(demo, data.chelsea(), GenerationRequest(**{**REQUEST, "seed": random.seed, "num_samples": 1}))
    assert np.array_equal(random.images[1], again.images[1])


@pytest.mark.parametrize(
    "image, message", [(None, "Upload an image"), (np.zeros((8, 8, 3), np.uint8), "pixels a side")]
)
def test_bad_input_gives_a_message(demo, image, message):
    with pytest.raises(GenerationInputError, match=message):
        generate(demo, image, GenerationRequest(**REQUEST))


def test_resolution_out_of_range_is_refused(demo):
    with pytest.raises(GenerationInputError, match="multiple of 64"):
        generate(demo, data.chelsea(), GenerationRequest(**{**REQUEST, "image_resolution": 100}))


@pytest.mark.parametrize(
    "image, note",
    [
        (data.camera(), "Grayscale"),
        (np.dstack([data.chelsea(), np.full(data.chelsea().shape[:2], 200, np.uint8)]), "Transparency"),
        (data.chelsea().astype(np.uint16) * 257, "16-bit"),
    ],
)
def test_unusual_images_are_converted_and_said(demo, image, note):
    result = generate(demo, image, GenerationRequest(**{**REQUEST, "num_samples": 1}))
    assert any(note in n for n in result.notes) and result.images[1].shape[2] == 3


def test_long_prompt_is_said(demo):
    result = generate(demo, data.chelsea(), GenerationRequest(**{**REQUEST, "prompt": "dog " * 120, "num_samples": 1}))
    assert any("cut off" in n for n in result.notes)


def test_progress_is_reported_per_step(demo):
    seen = []
    generate(
        demo,
        data.chelsea(),
        GenerationRequest(**{**REQUEST, "num_samples": 1}),
        progress=lambda i, n: seen.append((i, n)),
    )
    assert seen == [(1, 3), (2, 3), (3, 3)]


def test_a_config_demo_section_sets_the_defaults_of_page_and_batch_mode(demo):
    assert demo.defaults == GenerationRequest()  # no demo section: the original demo's defaults
    toy = request_defaults(load_config(TOY_CONFIG)["demo"], TOY_CONFIG)
    assert (toy.a_prompt, toy.n_prompt) == ("", "")  # words the toy's text encoder never saw
    assert toy.ddim_steps == GenerationRequest().ddim_steps and toy.scale == GenerationRequest().scale
    assert request_defaults({"scale": 7}, "x.yaml").scale == 7.0  # a whole number where a float is expected


@pytest.mark.parametrize(
    "node, match",
    [
        ({"negative_prompt": ""}, "unknown keys"),
        ({"prompt": "a dog"}, "unknown keys"),
        ({"ddim_steps": "20"}, "int"),
        ({"ddim_steps": 2.5}, "int"),
        ("empty prompts", "mapping"),
    ],
)
def test_a_bad_demo_section_names_the_file_and_key(node, match):
    with pytest.raises(ValueError, match=match) as err:
        request_defaults(node, "models/mine.yaml")
    assert str(err.value).startswith("models/mine.yaml: demo")


def test_fp16_on_cpu_is_refused():
    with pytest.raises(ValueError, match="GPU"):
        load_demo_model(TINY_CONFIG, device="cpu", precision="fp16")


def test_cli_batch_mode_writes_files(repo_root, tmp_path, capsys, monkeypatch):
    from PIL import Image

    monkeypatch.chdir(repo_root)  # the default model is the quickstart's, named relative to the repo as users run it

    Image.fromarray(data.astronaut()).save(tmp_path / "in.png")
    assert (
        main(
            [
                "--input",
                str(tmp_path / "in.png"),
                "--prompt",
                "a dog",
                "--out",
                str(tmp_path / "out"),
                "--steps",
                "2",
                "--seed",
                "3",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["edges.png", "sample_00.png"]
    assert "seed 3" in capsys.readouterr().out


def test_a_thin_strip_is_refused_before_it_is_resized(demo):
    strip = np.zeros((16, 4000, 3), np.uint8)  # a few hundred bytes; resized to 768 high it would be 768×192000
    with pytest.raises(GenerationInputError, match="longer than wide"):
        generate(demo, strip, GenerationRequest(**{**REQUEST, "image_resolution": 64}))


@pytest.mark.parametrize(
    "field, value",
    [
        ("eta", 1.5),
        ("eta", float("nan")),
        ("strength", float("nan")),
        ("scale", float("inf")),
        ("seed", -2),
        ("num_samples", 13),
    ],
)
def test_every_numeric_field_is_bounded(demo, field, value):
    with pytest.raises(GenerationInputError, match="must be from"):
        generate(demo, data.chelsea(), GenerationRequest(**{**REQUEST, field: value}))


def test_a_file_that_is_no_picture_gets_a_message_in_the_page(demo, tmp_path):
    import gradio as gr

    from gradio_canny2image import build_ui

    notes = tmp_path / "notes.png"
    notes.write_text("meeting at noon")
    with pytest.raises(GenerationInputError, match="not a picture the demo can read"):
        read_upload(notes)
    ui = build_ui(demo)
    show_upload = next(fn.fn for fn in ui.fns.values() if fn.fn.__name__ == "show_upload")
    with pytest.raises(gr.Error, match="not a picture the demo can read"):
        show_upload(str(notes))
    Image.fromarray(data.chelsea()).save(tmp_path / "cat.png")
    assert np.array_equal(show_upload(str(tmp_path / "cat.png")), data.chelsea())


def huge_deflate_tiff(path, side: int = 13_000) -> None:
    """A 169-megapixel picture that deflates to a file of well under a megabyte."""
    Image.new("L", (side, side)).save(path, compression="tiff_adobe_deflate")


@pytest.mark.slow
def test_a_huge_well_compressed_upload_is_refused_before_decoding(tmp_path):
    import subprocess
    import sys

    from repo_paths import ROOT

    huge = tmp_path / "huge.tif"
    huge_deflate_tiff(huge)
    assert huge.stat().st_size < 1 << 20
    # A fresh process, so its peak memory tells whether the picture was decoded (169 MB at one byte a pixel).
    probe = (
        "import resource, sys; from demo.canny2image import GenerationInputError, read_upload\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "for preview in (False, True):\n"
        "    try: read_upload(sys.argv[1], preview=preview)\n"
        "    except GenerationInputError as err: print(err)\n"
        "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)\n"
    )
    out = subprocess.run([sys.executable, "-c", probe, str(huge)], cwd=ROOT, capture_output=True, text=True, check=True)
    *messages, grown_mb = out.stdout.strip().splitlines()
    assert len(messages) == 2 and all("13000×13000 pixels" in m for m in messages), out.stdout
    assert int(grown_mb) < 40, f"reading the upload grew the process by {grown_mb} MB"


def test_the_preview_is_small_whatever_the_upload(demo, tmp_path):
    from gradio_canny2image import build_ui

    ui = build_ui(demo)
    show_upload = next(fn.fn for fn in ui.fns.values() if fn.fn.__name__ == "show_upload")
    for name in ("big.png", "big.jpg"):
        Image.new("RGB", (4000, 3000), (200, 10, 10)).save(tmp_path / name)
        preview = show_upload(str(tmp_path / name))
        assert max(preview.shape[:2]) <= 1024 and preview.shape[1] > preview.shape[0]  # landscape kept
    assert read_upload(tmp_path / "big.png").shape == (3000, 4000, 3)  # generation still reads it whole
    band = np.zeros((40, 100, 3), np.uint8)
    band[:, :10] = 255  # a white band on the left, then the camera's EXIF says: turn it a quarter
    exif = Image.fromarray(band).getexif()
    exif[0x0112] = 6
    Image.fromarray(band).save(tmp_path / "phone.jpg", exif=exif.tobytes())
    for preview in (False, True):
        upright = read_upload(tmp_path / "phone.jpg", preview=preview)
        assert upright.shape == (100, 40, 3) and upright[:5].mean() > 200 and upright[-5:].mean() < 50


def test_an_upload_is_read_as_training_reads_it(tmp_path):
    """A 16-bit PNG (a scanner's or a camera's export) is scaled by its range, as prepare and training read it;
    its edge map in the demo is then the one the model was trained on."""
    from annotator.util import read_rgb

    ramp = (np.linspace(0, 65535, 64 * 48).reshape(48, 64)).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    upload = read_upload(tmp_path / "deep.png")
    assert upload.dtype == np.uint8 and upload.shape == (48, 64, 3)
    assert np.array_equal(upload, read_rgb(tmp_path / "deep.png")) and upload.max() == 255
