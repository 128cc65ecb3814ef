"""The original ControlNet repository's import path for building and loading a model, kept for users' scripts
(`from cldm.model import create_model, load_state_dict`). The loaders live in `cldm.loading`, the model in
`cldm.cldm`."""

from cldm.loading import create_model
from cldm.weights import load_state_dict

__all__ = ["create_model", "load_state_dict"]
