"""The ControlNet's release files carry the canny thresholds of its training data, in both layouts."""

import pytest
import torch

from annotator.canny import CannyThresholds
from cldm.diffusers_io import save_diffusers_controlnet
from cldm.edge_record import recorded_thresholds
from cldm.weights import export_control, save_state


def test_exports_record_the_thresholds_and_weights_from_elsewhere_record_none(tiny_model, tmp_path):
    at = CannyThresholds(50, 150)
    export_control(tiny_model, tmp_path / "control.safetensors", thresholds=at)
    folder = save_diffusers_controlnet(tiny_model, tmp_path / "diffusers", thresholds=at)
    assert recorded_thresholds(tmp_path / "control.safetensors") == at
    assert recorded_thresholds(folder) == at
    export_control(tiny_model, tmp_path / "unknown.safetensors")
    save_state({"w": torch.zeros(1)}, tmp_path / "other.pth")
    assert recorded_thresholds(tmp_path / "unknown.safetensors") is None
    assert recorded_thresholds(tmp_path / "other.pth") is None


def test_a_damaged_record_is_refused(tmp_path):
    save_state(
        {"w": torch.zeros(1)},
        tmp_path / "c.safetensors",
        metadata={"cutenet_canny_low_threshold": "fifty", "cutenet_canny_high_threshold": "150"},
    )
    with pytest.raises(ValueError, match="export the weights again"):
        recorded_thresholds(tmp_path / "c.safetensors")
    (tmp_path / "d.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="d.safetensors"):
        recorded_thresholds(tmp_path / "d.safetensors")
