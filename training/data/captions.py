"""Prompts for the targets: BLIP captions (Li et al. 2022) made breed-aware, or breed templates."""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

logger = logging.getLogger(__name__)

BLIP_MODEL_ID = "Salesforce/blip-image-captioning-base"
PREFIX = "a photography of"


def template_caption(breed: str | None) -> str:
    """The fallback prompt: 'a photography of a chihuahua dog' (or 'a photography' without a breed)."""
    if not breed:
        return PREFIX.rsplit(" of", 1)[0]
    article = "an" if breed[0] in "aeiou" else "a"
    noun = breed if breed.endswith("dog") or breed.endswith("hound") else f"{breed} dog"
    return f"{PREFIX} {article} {noun}"


def is_degenerate(caption: str, *, max_repeats: int = 2) -> bool:
    """True for empty captions and repetition loops ('a black cock cock cock ...')."""
    words = re.findall(r"[a-z']+", caption.lower())
    if len(words) <= len(PREFIX.split()):
        return True
    run = 1
    for prev, cur in zip(words, words[1:]):
        run = run + 1 if cur == prev else 1
        if run > max_repeats:
            return True
    bigrams = list(zip(words, words[1:]))
    return len(bigrams) >= 6 and len(set(bigrams)) < 0.6 * len(bigrams)


def weave_breed(caption: str, breed: str | None) -> str:
    """Name the breed: 'a photography of a small dog on grass' → 'a photography of a chihuahua, a small dog on grass'."""
    caption = " ".join(caption.split())
    if not breed or breed.lower() in caption.lower():
        return caption
    rest = caption[len(PREFIX) :].strip() if caption.lower().startswith(PREFIX) else caption
    article = "an" if breed[0] in "aeiou" else "a"
    return f"{PREFIX} {article} {breed}, {rest}" if rest else template_caption(breed)


class Captioner(Protocol):
    def __call__(self, images: Sequence[np.ndarray]) -> list[str]: ...


class BlipCaptioner:
    """Batched BLIP captioning with the 'a photography of' prompt and repetition guards."""

    def __init__(
        self,
        model: str | Path = BLIP_MODEL_ID,
        *,
        device: str | None = None,
        max_new_tokens: int = 30,
        num_beams: int = 3,
        repetition_penalty: float = 1.3,
        no_repeat_ngram_size: int = 3,
    ) -> None:
        import torch
        from transformers import BlipForConditionalGeneration, BlipProcessor

        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        dtype = torch.float16 if self.device.type == "cuda" else torch.float32
        self.processor = BlipProcessor.from_pretrained(str(model))
        self.model = BlipForConditionalGeneration.from_pretrained(str(model), dtype=dtype).to(self.device).eval()
        self.generate_kwargs = dict(
            max_new_tokens=max_new_tokens,
            num_beams=num_beams,
            repetition_penalty=repetition_penalty,
            no_repeat_ngram_size=no_repeat_ngram_size,
        )

    def __call__(self, images: Sequence[np.ndarray]) -> list[str]:
        import torch

        inputs = self.processor(images=list(images), text=[PREFIX] * len(images), return_tensors="pt")
        inputs = {
            k: v.to(self.device, dtype=self.model.dtype if v.is_floating_point() else v.dtype)
            for k, v in inputs.items()
        }
        with torch.no_grad():
            out = self.model.generate(**inputs, **self.generate_kwargs)
        return [" ".join(t.split()) for t in self.processor.batch_decode(out, skip_special_tokens=True)]


def load_blip(model: str | Path = BLIP_MODEL_ID, *, device: str | None = None) -> BlipCaptioner | None:
    """BLIP from a hub id or a local folder; None (with one clear log line) when it cannot be loaded."""
    try:
        return BlipCaptioner(model, device=device)
    except (OSError, ValueError, ImportError) as err:
        logger.warning(
            "BLIP weights %s not available (%s); using breed-template captions instead",
            model,
            str(err).splitlines()[0][:200],
        )
        return None


def finalise_caption(raw: str | None, breed: str | None) -> tuple[str, bool]:
    """(prompt, replaced): BLIP's caption with the breed woven in, or the template if it is missing or degenerate."""
    if raw is None or is_degenerate(raw):
        return template_caption(breed), raw is not None
    return weave_breed(raw, breed), False
