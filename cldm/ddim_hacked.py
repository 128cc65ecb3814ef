"""The original repo's import path for the DDIM sampler; CuteNet has one sampler, in `ldm`."""

from ldm.models.diffusion.ddim import DDIMSampler

__all__ = ["DDIMSampler"]
