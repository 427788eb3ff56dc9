"""Evaluation outputs (JSON, label PNGs, images, text), each written atomically
(``cliptrase_d2.atomic``): an interrupted evaluation never leaves a half-written file under the
final name.
"""

import json
import math

import numpy as np
from PIL import Image

from ..atomic import atomic_open
from ..errors import InputError


def _json_ready(obj):
    """NumPy scalars/arrays to Python values; NaN (a class that was not counted) to null."""
    if isinstance(obj, dict):
        return {str(key): _json_ready(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_ready(value) for value in obj]
    if isinstance(obj, np.ndarray):
        return _json_ready(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def atomic_write_json(path: str, obj) -> None:
    """Write ``obj`` as indented JSON; NaN and infinities become ``null``."""
    text = json.dumps(_json_ready(obj), indent=2, allow_nan=False)
    with atomic_open(path) as f:
        f.write(text.encode("utf-8"))


def atomic_write_png(path: str, label_map: np.ndarray) -> None:
    """Write a (H, W) label map as a grayscale PNG: 8-bit for ``uint8``, 16-bit (PIL mode
    ``I;16``) for ``uint16``. Read it back with ``np.array(Image.open(path))``."""
    label_map = np.asarray(label_map)
    if label_map.ndim != 2:
        raise InputError(f"label map must be (H, W), got shape {label_map.shape}")
    if label_map.dtype not in (np.uint8, np.uint16):
        raise TypeError(f"label map must be uint8 or uint16, got {label_map.dtype}")
    # native byte order, C-contiguous: PIL then maps uint8 to mode 'L' and uint16 to 'I;16'
    image = Image.fromarray(
        np.ascontiguousarray(label_map.astype(label_map.dtype.newbyteorder("=")))
    )
    with atomic_open(path) as f:
        image.save(f, format="PNG")


def atomic_save_image(path: str, image: Image.Image) -> None:
    """Save a PIL image as PNG under ``path`` atomically."""
    with atomic_open(path) as f:
        image.save(f, format="PNG")


def atomic_write_text(path: str, text: str) -> None:
    """Write UTF-8 text under ``path`` atomically."""
    with atomic_open(path) as f:
        f.write(text.encode("utf-8"))
