"""Pictures of prepared data for notebooks and reports: target | edge map, with the prompt underneath."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont


def pair_grid(root: str | Path, rows: Sequence[dict[str, str]], *, tile: int = 192, columns: int = 2) -> Image.Image:
    """A grid of (target, edges) pairs from a prepared folder, each captioned with its prompt."""
    root = Path(root)
    font = ImageFont.load_default()
    caption_h = 44
    cell_w, cell_h = 2 * tile, tile + caption_h
    n_rows = max(1, -(-len(rows) // columns))
    sheet = Image.new("RGB", (columns * cell_w, n_rows * cell_h), "white")
    draw = ImageDraw.Draw(sheet)
    for i, row in enumerate(rows):
        x, y = (i % columns) * cell_w, (i // columns) * cell_h
        for j, key in enumerate(("target", "source")):
            with Image.open(root / row[key]) as img:
                sheet.paste(img.convert("RGB").resize((tile, tile)), (x + j * tile, y))
        text = "\n".join(textwrap.wrap(row["prompt"] or "(empty prompt)", cell_w // 7)[:3])
        draw.multiline_text((x + 4, y + tile + 2), text, fill="black", font=font)
    return sheet
