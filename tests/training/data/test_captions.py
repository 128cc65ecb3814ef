import logging
from pathlib import Path

import numpy as np
import pytest

from training.data.captions import finalise_caption, is_degenerate, load_blip, template_caption, weave_breed
from training.data.pair_images import ImageSettings
from training.data.prepare_dogs import prepare

WORDS = [
    "[PAD]",
    "[UNK]",
    "[CLS]",
    "[SEP]",
    "[MASK]",
    "a",
    "photography",
    "of",
    "dog",
    "cock",
    "black",
    "on",
    "grass",
    "small",
    "the",
]


@pytest.fixture(scope="module")
def tiny_blip(tmp_path_factory) -> Path:
    """A randomly initialised tiny BLIP saved like a hub model, loaded through from_pretrained."""
    from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor

    folder = tmp_path_factory.mktemp("tiny_blip")
    (folder / "vocab.txt").write_text("\n".join(WORDS) + "\n")
    text = dict(
        vocab_size=len(WORDS),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=40,
        bos_token_id=2,
        pad_token_id=0,
        sep_token_id=3,
        eos_token_id=3,
    )
    vision = dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=16
    )
    BlipForConditionalGeneration(BlipConfig(text_config=text, vision_config=vision)).save_pretrained(folder)
    BlipProcessor(
        image_processor=BlipImageProcessor(size={"height": 32, "width": 32}),
        tokenizer=BertTokenizer(str(folder / "vocab.txt")),
    ).save_pretrained(folder)
    return folder


def test_tiny_blip_captions_through_from_pretrained(tiny_blip):
    captioner = load_blip(tiny_blip, device="cpu")
    assert captioner is not None
    captions = captioner([np.zeros((40, 50, 3), np.uint8), np.full((64, 64, 3), 200, np.uint8)])
    assert len(captions) == 2 and all(c.startswith("a photography of") for c in captions)


def test_pipeline_with_blip_weaves_the_breed_in(tiny_blip, dogs_tree, tmp_path):
    summary = prepare(
        dogs_tree["images"],
        tmp_path / "out",
        annotations=dogs_tree["annotations"],
        settings=ImageSettings(size=64),
        captioner="blip",
        blip_model=str(tiny_blip),
        workers=1,
    )
    prompts = (tmp_path / "out" / "prompt.json").read_text() + (tmp_path / "out" / "prompt_val.json").read_text()
    assert summary.captions_new == 10 and "chihuahua" in prompts and "shih-tzu" in prompts


def test_missing_blip_weights_fall_back_with_one_log_line(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        assert load_blip(tmp_path / "no-such-model") is None
    assert "breed-template captions" in caplog.text


@pytest.mark.parametrize(
    "caption, bad",
    [
        ("a photography of a black cock cock cock cock", True),
        ("a photography of", True),
        ("", True),
        ("a photography of a dog on the dog on the dog on the dog on the", True),
        ("a photography of a small dog sitting on the grass", False),
    ],
)
def test_degenerate_captions_are_detected(caption, bad):
    assert is_degenerate(caption) is bad


def test_breed_is_woven_in_and_templates_replace_degenerate_captions():
    assert (
        weave_breed("a photography of a small dog on grass", "chihuahua")
        == "a photography of a chihuahua, a small dog on grass"
    )
    assert weave_breed("a photography of a beagle puppy", "beagle") == "a photography of a beagle puppy"
    assert finalise_caption("a photography of a black cock cock cock", "affenpinscher") == (
        "a photography of an affenpinscher dog",
        True,
    )
    assert template_caption("basset hound") == "a photography of a basset hound"
