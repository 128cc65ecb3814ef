"""Render prompts as images so they can sit in an image grid beside the samples."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont


def text_as_images(texts: Sequence[str], size: tuple[int, int]) -> torch.Tensor:
    """B prompts → B×3×H×W in [−1, 1], black text on white, wrapped to the width."""
    width, height = size
    font = ImageFont.load_default()
    chars_per_line = max(1, width // 7)
    images = []
    for text in texts:
        canvas = Image.new("RGB", (width, height), "white")
        ImageDraw.Draw(canvas).multiline_text(
            (2, 2), "\n".join(textwrap.wrap(text, chars_per_line)), fill="black", font=font
        )
        images.append(np.asarray(canvas, dtype=np.float32) / 127.5 - 1.0)  # H×W×3
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()  # B×3×H×W
