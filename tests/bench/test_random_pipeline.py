"""bench/random_pipeline.py writes a pipeline folder that imports back to the weights it was made from."""

import torch
from repo_paths import TINY_CONFIG

from bench.random_pipeline import write_pipeline
from cldm.loading import load_model
from ldm.models.diffusion.ddpm import SCHEDULE_BUFFERS
from ldm.util import instantiate_from_config


def test_the_folder_imports_back_to_the_same_sd_weights(tiny_config, tmp_path):
    write_pipeline(TINY_CONFIG, tmp_path / "pipe", seed=3)
    torch.manual_seed(3)
    made = instantiate_from_config(tiny_config).state_dict()
    loaded, _ = load_model(TINY_CONFIG, base=tmp_path / "pipe")
    sd = [k for k in made if not k.startswith("control_model.") and k not in SCHEDULE_BUFFERS]
    assert sd and all(torch.equal(loaded.state_dict()[k], made[k]) for k in sd)
