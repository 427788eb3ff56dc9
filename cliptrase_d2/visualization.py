"""Drawing label maps. Detectron2's ``Visualizer`` colours and names each class's region; this
module adds what it does not do: a colour per class index that stays the same for any
vocabulary, and a legend column."""

from typing import Sequence, Tuple

import numpy as np
from detectron2.data import Metadata
from detectron2.utils.visualizer import Visualizer
from PIL import Image, ImageDraw, ImageFont

__all__ = ["palette", "draw_labels", "with_legend", "side_by_side"]


def palette(num_colors: int) -> np.ndarray:
    """(num_colors, 3) uint8 distinct colours; index i keeps its colour for any vocabulary size
    (the bits of i spread over the high bits of R, G and B, as in PASCAL VOC's colour map)."""
    colors = np.zeros((num_colors, 3), dtype=np.uint8)
    for index in range(num_colors):
        value, r, g, b = index + 1, 0, 0, 0
        for shift in range(7, -1, -1):
            r |= (value & 1) << shift
            g |= ((value >> 1) & 1) << shift
            b |= ((value >> 2) & 1) << shift
            value >>= 3
        colors[index] = (r, g, b)
    return colors


def draw_labels(image: np.ndarray, labels: np.ndarray, class_names: Sequence[str]) -> np.ndarray:
    """(H, W, 3) uint8: the (H, W, 3) uint8 RGB ``image`` with each class's region of ``labels``
    filled in its ``palette`` colour and named, drawn by Detectron2's ``Visualizer``."""
    metadata = Metadata().set(
        stuff_classes=list(class_names), stuff_colors=palette(len(class_names)).tolist()
    )
    return Visualizer(image, metadata).draw_sem_seg(labels).get_image()


def with_legend(
    image: np.ndarray, rows: Sequence[Tuple[int, str]], row_height: int = 20
) -> Image.Image:
    """``image`` with a legend column on its right: one swatch of class index's ``palette``
    colour and one line of text per (class index, text) row."""
    try:
        font = ImageFont.load_default(size=row_height - 6)
    except TypeError:  # Pillow < 10.1 has only the fixed bitmap font
        font = ImageFont.load_default()
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_width = max([int(probe.textlength(text, font=font)) for _, text in rows] + [60])
    width = row_height + 12 + text_width
    height = max(image.shape[0], row_height * len(rows) + 8)
    canvas = Image.new("RGB", (image.shape[1] + width, height), (255, 255, 255))
    canvas.paste(Image.fromarray(image), (0, 0))
    draw = ImageDraw.Draw(canvas)
    colors = palette(max([index for index, _ in rows] + [0]) + 1)
    left = image.shape[1] + 6
    for row, (index, text) in enumerate(rows):
        top = 4 + row * row_height
        draw.rectangle(
            [left, top, left + row_height - 4, top + row_height - 4],
            fill=tuple(int(c) for c in colors[index]),
            outline=(0, 0, 0),
        )
        draw.text((left + row_height + 2, top), text, fill=(0, 0, 0), font=font)
    return canvas


def side_by_side(left: Image.Image, right: Image.Image) -> Image.Image:
    canvas = Image.new(
        "RGB", (left.width + right.width, max(left.height, right.height)), (255, 255, 255)
    )
    canvas.paste(left, (0, 0))
    canvas.paste(right, (left.width, 0))
    return canvas
