"""Colour overlays with a legend of the classes present."""

from typing import List, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = ["palette", "overlay", "with_legend", "side_by_side"]


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


def overlay(image: np.ndarray, labels: np.ndarray, alpha: float = 0.55) -> np.ndarray:
    """Blends class colours over an (H, W, 3) uint8 image: (H, W, 3) uint8."""
    colors = palette(int(labels.max()) + 1)[labels]
    return (
        (image.astype(np.float32) * (1 - alpha) + colors.astype(np.float32) * alpha)
        .round()
        .astype(np.uint8)
    )


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the fixed bitmap font
        return ImageFont.load_default()


def with_legend(
    image: np.ndarray, entries: Sequence[Tuple[int, str, float]], row_height: int = 20
) -> Image.Image:
    """Appends a legend column: one swatch, name and pixel share per (class index, name, share)."""
    font = _font(row_height - 6)
    lines = [f"{name} ({share * 100:.1f}%)" for _, name, share in entries]
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_width = max([int(probe.textlength(line, font=font)) for line in lines] + [60])
    width = row_height + 12 + text_width
    height = max(image.shape[0], row_height * len(entries) + 8)
    canvas = Image.new("RGB", (image.shape[1] + width, height), (255, 255, 255))
    canvas.paste(Image.fromarray(image), (0, 0))
    draw = ImageDraw.Draw(canvas)
    colors = palette(max([index for index, _, _ in entries] + [0]) + 1)
    for row, ((index, _, _), line) in enumerate(zip(entries, lines)):
        top = 4 + row * row_height
        left = image.shape[1] + 6
        draw.rectangle(
            [left, top, left + row_height - 4, top + row_height - 4],
            fill=tuple(int(c) for c in colors[index]),
            outline=(0, 0, 0),
        )
        draw.text((left + row_height + 2, top), line, fill=(0, 0, 0), font=font)
    return canvas


def side_by_side(left: Image.Image, right: Image.Image) -> Image.Image:
    canvas = Image.new(
        "RGB", (left.width + right.width, max(left.height, right.height)), (255, 255, 255)
    )
    canvas.paste(left, (0, 0))
    canvas.paste(right, (left.width, 0))
    return canvas


def legend_entries(labels: np.ndarray, class_names: List[str]) -> List[Tuple[int, str, float]]:
    """(index, name, share) of the classes present, largest share first."""
    counts = np.bincount(labels.ravel(), minlength=len(class_names))
    total = max(int(counts.sum()), 1)
    return [
        (int(i), class_names[i], counts[i] / total)
        for i in np.argsort(-counts, kind="stable")
        if counts[i] > 0
    ]
