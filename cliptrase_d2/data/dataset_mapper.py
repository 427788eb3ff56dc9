"""Test-time dataset mapper: reads an image as RGB uint8 and keeps the ground-truth path.

Detectron2's DatasetMapper drops ``sem_seg_file_name`` at test time and converts 16-bit images
lossily; CLIPtrase resizes inside the model (the protocols need the original pixels), so the
mapper only decodes.
"""

import copy

import torch
from detectron2.config import configurable

from .image_io import read_rgb
from ..errors import InputError

__all__ = ["SemSegTestMapper"]


class SemSegTestMapper:
    """dataset dict -> dict with ``image`` (3, H, W) uint8 tensor in ``image_format`` order,
    ``height``/``width`` of the original image, and every key of the dataset dict."""

    @configurable
    def __init__(self, *, image_format: str = "RGB"):
        if image_format not in ("RGB", "BGR"):
            raise InputError(f"INPUT.FORMAT must be RGB or BGR for CLIPtrase, got {image_format!r}")
        self.image_format = image_format

    @classmethod
    def from_config(cls, cfg):
        return {"image_format": cfg.INPUT.FORMAT}

    def __call__(self, dataset_dict):
        record = copy.deepcopy(dataset_dict)
        # (H, W, 3) RGB as stored: ground-truth label maps are aligned with the stored pixels
        # (and the authors' code reads them so), whatever an EXIF orientation tag says.
        image = read_rgb(record["file_name"], exif_orientation=False)
        if self.image_format == "BGR":
            image = image[:, :, ::-1]
        record["image"] = torch.from_numpy(image.transpose(2, 0, 1).copy())
        record["height"], record["width"] = image.shape[:2]
        return record
