"""The original ControlNet repository's import paths keep working for users' scripts, and name the same objects
as the modules that now hold them."""

import importlib

import pytest


@pytest.mark.parametrize(
    "old, new, name",
    [
        ("cldm.model", "cldm.loading", "create_model"),
        ("cldm.model", "cldm.weights", "load_state_dict"),
        ("cldm.logger", "cldm.image_log", "ImageLogger"),
        ("cldm.ddim_hacked", "ldm.models.diffusion.ddim", "DDIMSampler"),
    ],
)
def test_an_original_import_path_names_the_object_that_now_lives_elsewhere(old, new, name):
    assert getattr(importlib.import_module(old), name) is getattr(importlib.import_module(new), name)
