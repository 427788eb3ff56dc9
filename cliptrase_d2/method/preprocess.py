"""Image preparation: the paper protocol's resize and center crop, and the standard protocol's
keep-ratio resize (mmseg's, as the peer methods evaluate), on uint8 pixels.

The same geometry is applied to an image (bicubic) and to its ground truth (nearest), so the
evaluated frame of a prediction and of its label map always agree. CLIP's normalization
(``CLIP_MEAN``, ``CLIP_STD`` of the [0, 1] pixels) runs in the model, on its device.
"""

from typing import Tuple

import cv2
import numpy as np
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
    """(top, left, bottom, right) of the centered ``size`` x ``size`` crop (torchvision
    rounding)."""
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


def paper_crop(image: np.ndarray, size: int) -> np.ndarray:
    """The paper protocol's frame of an (H, W, C) uint8 array: the shorter side resized to
    ``size`` (bicubic), then the centered ``size`` x ``size`` crop. An image already of that size
    is its own crop (PIL's resize of an image to its own size is a copy)."""
    if image.shape[:2] == (size, size):
        return np.ascontiguousarray(image)
    return np.asarray(resize_and_center_crop(Image.fromarray(image), size, Image.BICUBIC))


def keep_ratio_size(
    height: int, width: int, short_side: int, long_side: int = 2048
) -> Tuple[int, int]:
    """(new_height, new_width) of mmseg's keep-ratio ``Resize`` to scale (long_side, short_side):
    factor min(long_side / longer side, short_side / shorter side), each side
    ``int(x * factor + 0.5)`` (half rounds up). E.g. 448 x 454 -> 336 x 341 and
    200 x 1300 -> 315 x 2048."""
    factor = min(long_side / max(height, width), short_side / min(height, width))
    return int(height * factor + 0.5), int(width * factor + 0.5)


def resize_linear_uint8(image: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    """OpenCV ``INTER_LINEAR`` resize of an (H, W, C) uint8 image to ``size`` = (h, w), as mmcv's
    ``imresize`` does (rounded back to uint8)."""
    if image.dtype != np.uint8:
        raise ValueError(f"resize_linear_uint8 expects a uint8 image, got {image.dtype}")
    if tuple(image.shape[:2]) == tuple(size):
        return image
    return cv2.resize(
        np.ascontiguousarray(image), (size[1], size[0]), interpolation=cv2.INTER_LINEAR
    )


def standard_frame(image: np.ndarray, short_side: int, long_side: int) -> np.ndarray:
    """The standard protocol's frame of an (H, W, C) uint8 array: mmseg's keep-ratio resize to
    (``long_side``, ``short_side``) with OpenCV linear on the uint8 pixels. A frame is its own
    frame (its size is the keep-ratio size of itself)."""
    return resize_linear_uint8(image, keep_ratio_size(*image.shape[:2], short_side, long_side))
