"""The frame each protocol predicts on, made in one place (``ProtocolFrame``), and the test-time
dataset mapper that makes it where the image is decoded.

Detectron2's DatasetMapper drops ``sem_seg_file_name`` at test time and converts 16-bit images
lossily. The mapper gives the model the protocol's frame (with DATALOADER.NUM_WORKERS > 0 the
resize runs in the loader's processes beside the model, as Detectron2's own test-time resizing
does) and the original ``height``/``width``; the model takes a frame as its own frame, so its
prediction is the one from the whole image.
"""

import copy
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from detectron2.config import configurable

from .image_io import read_rgb
from ..errors import InputError
from ..method.preprocess import keep_ratio_size, paper_crop, shorter_side_size, standard_frame
from ..method.sliding import window_boxes

__all__ = ["ProtocolFrame", "SemSegTestMapper", "rgb_pixels"]


@dataclass(frozen=True)
class ProtocolFrame:
    """The pixels a protocol predicts on, and the limits an image is refused by before any work.

    paper: the shorter side resized to ``paper_size`` (bicubic), then the centered
    ``paper_size`` x ``paper_size`` crop; standard: mmseg's keep-ratio resize to
    (``long_side``, ``short_side``) with OpenCV linear on the uint8 pixels. Either frame is its
    own frame. ``patch``: the CLIP patch side (1 where it is not known: the loader).
    """

    protocol: str = "paper"
    paper_size: int = 224
    short_side: int = 336
    long_side: int = 2048
    window: int = 224
    stride: int = 112
    patch: int = 1
    max_pixels: int = 50_000_000  # 0: no limit
    max_windows: int = 1024  # 0: no limit

    @classmethod
    def from_config(cls, cfg, patch: int = 1) -> "ProtocolFrame":
        c = cfg.MODEL.CLIPTRASE
        return cls(
            c.PROTOCOL,
            c.PAPER_SIZE,
            c.STANDARD_SHORT_SIDE,
            c.STANDARD_LONG_SIDE,
            c.WINDOW_SIZE,
            c.WINDOW_STRIDE,
            patch,
            c.MAX_PIXELS,
            c.MAX_WINDOWS,
        )

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """(H, W, C) uint8 -> the protocol's (h, w, C) uint8 frame (channels resized alike)."""
        if self.protocol == "paper":
            return paper_crop(image, self.paper_size)
        return standard_frame(image, self.short_side, self.long_side)

    def check(self, height: int, width: int, name: str) -> None:
        """Refuses an image of ``height`` x ``width`` (the original size) that is smaller than
        one CLIP patch (resizing it up would invent the content), whose resized frame or
        standard-protocol output exceeds ``max_pixels``, or whose sliding windows exceed
        ``max_windows`` (an extreme aspect ratio, a huge image)."""
        if height < self.patch or width < self.patch:
            raise InputError(
                f"{name}: an image of {height}x{width} pixels is smaller than one "
                f"{self.patch}x{self.patch} CLIP patch; use an image of at least that size"
            )
        if self.protocol == "paper":
            frames = {"resized": shorter_side_size(height, width, self.paper_size)}
        else:
            frame = keep_ratio_size(height, width, self.short_side, self.long_side)
            frames = {"resized": frame, "output": (height, width)}
        for what, (h, w) in frames.items():
            if self.max_pixels and h * w > self.max_pixels:
                raise InputError(
                    f"{name}: the {self.protocol} protocol's {what} frame of this "
                    f"{height}x{width} image is {h}x{w} = {h * w} pixels, over "
                    f"MODEL.CLIPTRASE.MAX_PIXELS={self.max_pixels}; crop or downscale the "
                    "image, or raise MAX_PIXELS if the memory allows"
                )
        if self.protocol != "paper" and self.max_windows:
            count = len(window_boxes(*frames["resized"], self.window, self.stride))
            if count > self.max_windows:
                raise InputError(
                    f"{name}: the standard protocol would run {count} sliding windows over "
                    f"this {height}x{width} image, over MODEL.CLIPTRASE.MAX_WINDOWS="
                    f"{self.max_windows}; raise WINDOW_STRIDE or WINDOW_SIZE, lower "
                    "STANDARD_SHORT_SIDE/STANDARD_LONG_SIDE, or raise MAX_WINDOWS"
                )


def rgb_pixels(image: torch.Tensor, image_format: str = "RGB") -> np.ndarray:
    """A model input's (3, H, W) uint8 or 0-255 float tensor in ``image_format`` order (what this
    mapper or Detectron2's DefaultPredictor gives) -> (H, W, 3) uint8 RGB array."""
    if image.dim() != 3 or image.shape[0] != 3:
        raise InputError(f"'image' must be a (3, H, W) tensor, got shape {tuple(image.shape)}")
    if image.dtype != torch.uint8:
        image = image.round().clamp(0, 255).to(torch.uint8)
    image = image.flip(0) if image_format == "BGR" else image
    return image.cpu().permute(1, 2, 0).contiguous().numpy()


class SemSegTestMapper:
    """dataset dict -> dict with ``image`` (3, h, w) uint8 tensor in ``image_format`` order (with
    ``frame``: the protocol's frame, the image refused first by ``frame.check``), ``height``/
    ``width`` of the original image, and every key of the dataset dict."""

    @configurable
    def __init__(self, *, image_format: str = "RGB", frame: Optional[ProtocolFrame] = None):
        if image_format not in ("RGB", "BGR"):
            raise InputError(f"INPUT.FORMAT must be RGB or BGR for CLIPtrase, got {image_format!r}")
        self.image_format, self.frame = image_format, frame

    @classmethod
    def from_config(cls, cfg):
        c = cfg.MODEL.get("CLIPTRASE")
        return {
            "image_format": cfg.INPUT.FORMAT,
            "frame": None if c is None else ProtocolFrame.from_config(cfg),
        }

    def __call__(self, dataset_dict):
        record = copy.deepcopy(dataset_dict)
        # (H, W, 3) RGB as stored: ground-truth label maps are aligned with the stored pixels
        # (and the authors' code reads them so), whatever an EXIF orientation tag says.
        return self.model_input(record, read_rgb(record["file_name"], exif_orientation=False))

    def model_input(self, record: dict, image: np.ndarray) -> dict:
        """``record`` with the (H, W, 3) uint8 RGB ``image`` as the model takes it (the API's
        path too): refused by ``frame.check`` naming ``record["file_name"]``, then framed."""
        record["height"], record["width"] = image.shape[:2]  # the original size
        if self.frame is not None:
            self.frame.check(*image.shape[:2], record["file_name"])
            image = self.frame(image)
        if self.image_format == "BGR":
            image = image[:, :, ::-1]
        record["image"] = torch.from_numpy(image.transpose(2, 0, 1).copy())
        return record
