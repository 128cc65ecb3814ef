"""The original ControlNet repository's import path for the image-grid callback (`from cldm.logger import
ImageLogger`), kept for users' scripts; it lives in `cldm.image_log`."""

from cldm.image_log import ImageLogger

__all__ = ["ImageLogger"]
