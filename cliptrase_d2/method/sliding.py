"""Sliding-window inference: window placement and averaging of overlapping window scores."""

from typing import Callable, List, Tuple

import torch
import torch.nn.functional as F

__all__ = ["PADDINGS", "window_boxes", "window_padding", "sliding_window"]

Box = Tuple[int, int, int, int]  # (top, left, bottom, right)

# How a window whose sides are not multiples of the patch size reaches the model: zero-padded at
# the bottom/right ("end"), split evenly around it, the extra pixel after ("even", ClearCLIP), or
# as it is ("none", SCLIP and NACLIP: the patch grid covers floor(side / patch) patches and its
# scores are resized to the whole window).
PADDINGS = ("end", "even", "none")


def _starts(length: int, window: int, stride: int) -> List[int]:
    if length <= window:
        return [0]
    count = (length - window + stride - 1) // stride + 1
    return [min(i * stride, length - window) for i in range(count)]


def window_boxes(height: int, width: int, window: int, stride: int) -> List[Box]:
    """Windows of ``window`` x ``window`` every ``stride`` pixels covering the image; the last
    row/column is shifted inward to end at the border. Images smaller than a window give one
    window of the image's own size; ``window`` 0 is the whole image."""
    if window == 0:
        return [(0, 0, height, width)]
    if stride <= 0 or window <= 0:
        raise ValueError(f"window ({window}) and stride ({stride}) must be positive")
    if stride > window:
        raise ValueError(
            f"stride {stride} is larger than the window {window}: pixels would be skipped"
        )
    return [
        (top, left, min(top + window, height), min(left + window, width))
        for top in _starts(height, window, stride)
        for left in _starts(width, window, stride)
    ]


def window_padding(
    height: int, width: int, multiple: int, padding: str = "end"
) -> Tuple[int, int, int, int]:
    """(left, right, top, bottom) zeros that make an h x w window a multiple of ``multiple``
    under ``padding`` (see ``PADDINGS``); "even" puts the smaller half first."""
    if padding not in PADDINGS:
        raise ValueError(f"unknown window padding {padding!r}; choose one of {', '.join(PADDINGS)}")
    pad_h, pad_w = -height % multiple, -width % multiple
    if padding == "none":
        return 0, 0, 0, 0
    if padding == "end":
        return 0, pad_w, 0, pad_h
    return pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2


def sliding_window(
    image: torch.Tensor,
    predict: Callable[[torch.Tensor], torch.Tensor],
    window: int,
    stride: int,
    batch_size: int,
    multiple: int = 1,
    padding: str = "end",
) -> torch.Tensor:
    """Averages ``predict`` over overlapping windows of one image (``window`` 0: the whole image).

    image: (3, H, W). ``predict`` maps a batch (N, 3, h, w) to scores (N, K, h, w) at the
    window's own resolution. Windows whose sides are not multiples of ``multiple`` (the patch
    size) are zero-padded as ``padding`` says (``window_padding``) and the padding is cut from
    their scores, so it never reaches the output. At most ``batch_size`` windows are in memory
    at once.
    Returns (K, H, W), channels-last in memory (the K scores of a pixel side by side, as the
    window scores come): accumulating, resizing and the argmax over classes then run along
    contiguous memory.
    """
    _, height, width = image.shape
    boxes = window_boxes(height, width, window, stride)
    total = None
    counts = torch.zeros(1, height, width, device=image.device)
    for start in range(0, len(boxes), batch_size):
        chunk = boxes[start : start + batch_size]
        crops = [image[:, t:b, l:r] for t, l, b, r in chunk]
        crop_h, crop_w = crops[0].shape[-2:]
        pad = window_padding(crop_h, crop_w, multiple, padding)
        batch = torch.stack([F.pad(c, pad) for c in crops])  # (N, 3, h', w')
        top, left = pad[2], pad[0]
        scores = predict(batch)[:, :, top : top + crop_h, left : left + crop_w]  # (N, K, h, w)
        if total is None:
            total = torch.empty(
                1,
                scores.shape[1],
                height,
                width,
                dtype=scores.dtype,
                device=image.device,
                memory_format=torch.channels_last,
            )[0].zero_()
        for (t, l, b, r), window_scores in zip(chunk, scores):
            total[:, t:b, l:r] += window_scores
            counts[:, t:b, l:r] += 1
    return total.div_(counts)
