"""Test-time dataset mapper: reads an image as RGB uint8 and keeps the ground-truth path.

Detectron2's DatasetMapper drops ``sem_seg_file_name`` at test time and converts 16-bit images
lossily. The standard protocol's resize stays inside the model (it needs the original pixels
and size). Under the paper protocol the mapper makes the S x S center crop itself
(``preprocess.loader_crop``), so that with DATALOADER.NUM_WORKERS > 0 the bicubic resize runs
in the loader's processes beside the model, as Detectron2's own test-time resizing does; the
model crops a crop no further, so the predictions are the same as from the whole image.
"""

import copy
from typing import Optional

import torch
from detectron2.config import configurable

from .image_io import read_rgb
from ..errors import InputError
from ..method.preprocess import loader_crop

__all__ = ["SemSegTestMapper"]


class SemSegTestMapper:
    """dataset dict -> dict with ``image`` (3, H, W) uint8 tensor in ``image_format`` order
    (with ``paper_size``: the paper protocol's ``paper_size`` x ``paper_size`` center crop,
    see ``preprocess.loader_crop``), ``height``/``width`` of the original image, and every key
    of the dataset dict."""

    @configurable
    def __init__(
        self, *, image_format: str = "RGB", paper_size: Optional[int] = None, max_pixels: int = 0
    ):
        if image_format not in ("RGB", "BGR"):
            raise InputError(f"INPUT.FORMAT must be RGB or BGR for CLIPtrase, got {image_format!r}")
        self.image_format = image_format
        self.paper_size, self.max_pixels = paper_size, max_pixels

    @classmethod
    def from_config(cls, cfg):
        c = cfg.MODEL.get("CLIPTRASE")
        paper = c is not None and c.PROTOCOL == "paper"
        return {
            "image_format": cfg.INPUT.FORMAT,
            "paper_size": c.PAPER_SIZE if paper else None,
            "max_pixels": c.MAX_PIXELS if paper else 0,
        }

    def frame(self, image):
        """The pixels the model is given for a decoded (H, W, 3) uint8 image: under the paper
        protocol its center crop (``loader_crop``), else the image itself."""
        if self.paper_size is None:
            return image
        return loader_crop(image, self.paper_size, self.max_pixels)

    def __call__(self, dataset_dict):
        record = copy.deepcopy(dataset_dict)
        # (H, W, 3) RGB as stored: ground-truth label maps are aligned with the stored pixels
        # (and the authors' code reads them so), whatever an EXIF orientation tag says.
        image = read_rgb(record["file_name"], exif_orientation=False)
        record["height"], record["width"] = image.shape[:2]  # the original size
        image = self.frame(image)
        if self.image_format == "BGR":
            image = image[:, :, ::-1]
        record["image"] = torch.from_numpy(image.transpose(2, 0, 1).copy())
        return record
