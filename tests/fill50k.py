"""A local dataset in fill50k's layout (the diffusers ControlNet tutorial's toy), built from the toy circles: what a
diffusers user holds, for the import and training tests."""

import json

import numpy as np
from PIL import Image

from training.data.toy_data import toy_example


def write_fill50k_like(root, n=6, *, seed=0):
    """fill50k's layout as diffusers' docs build it locally: images/, conditioning_images/, metadata.jsonl with
    file_name, conditioning_image and text."""
    (root / "images").mkdir(parents=True)
    (root / "conditioning_images").mkdir()
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        target, edges, prompt = toy_example(rng, 64)
        Image.fromarray(target).save(root / "images" / f"{i}.png")
        Image.fromarray(edges).convert("RGB").save(root / "conditioning_images" / f"{i}.png")
        rows.append(
            {"file_name": f"images/{i}.png", "conditioning_image": f"conditioning_images/{i}.png", "text": prompt}
        )
    (root / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root, rows
