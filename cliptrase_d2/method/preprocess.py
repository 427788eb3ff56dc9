"""Paper-protocol image preparation (SPEC section 9): resize the shorter side, center-crop a square.

The same geometry is applied to an image (bicubic) and to its ground truth (nearest), so the
evaluated frame of a prediction and of its label map always agree.
"""
from typing import Tuple

import numpy as np
import torch
from PIL import Image

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def shorter_side_size(height: int, width: int, size: int) -> Tuple[int, int]:
    """(new_height, new_width) with the shorter side equal to ``size``; the longer side is
    truncated as torchvision's ``Resize(size)`` does (``int(size * long / short)``)."""
    if height <= width:
        return size, int(size * width / height)
    return int(size * height / width), size


def center_crop_box(height: int, width: int, size: int) -> Tuple[int, int, int, int]:
    """(top, left, bottom, right) of the centered ``size`` x ``size`` crop (torchvision rounding)."""
    top = int(round((height - size) / 2.0))
    left = int(round((width - size) / 2.0))
    return top, left, top + size, left + size


def resize_and_center_crop(image: Image.Image, size: int, resample: int) -> Image.Image:
    """Resize the shorter side of a PIL image to ``size`` with ``resample``, then center-crop
    ``size`` x ``size``. Use ``Image.BICUBIC`` for photos and ``Image.NEAREST`` for label maps."""
    new_h, new_w = shorter_side_size(image.height, image.width, size)
    resized = image.resize((new_w, new_h), resample)
    top, left, bottom, right = center_crop_box(new_h, new_w, size)
    return resized.crop((left, top, right, bottom))


def to_clip_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> (3, H, W) float32, scaled to [0, 1] and normalized with CLIP's mean/std."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0  # (H, W, 3)
    tensor = torch.from_numpy(array).permute(2, 0, 1).contiguous()
    mean = torch.tensor(CLIP_MEAN).view(3, 1, 1)
    std = torch.tensor(CLIP_STD).view(3, 1, 1)
    return (tensor - mean) / std
