"""Sliding-window inference: window placement and averaging of overlapping window scores."""
from typing import Callable, List, Tuple

import torch
import torch.nn.functional as F

__all__ = ["window_boxes", "sliding_window"]

Box = Tuple[int, int, int, int]  # (top, left, bottom, right)


def _starts(length: int, window: int, stride: int) -> List[int]:
    if length <= window:
        return [0]
    count = (length - window + stride - 1) // stride + 1
    return [min(i * stride, length - window) for i in range(count)]


def window_boxes(height: int, width: int, window: int, stride: int) -> List[Box]:
    """Windows of ``window`` x ``window`` every ``stride`` pixels covering the image; the last
    row/column is shifted inward to end at the border. Images smaller than a window give one
    window of the image's own size."""
    if stride <= 0 or window <= 0:
        raise ValueError(f"window ({window}) and stride ({stride}) must be positive")
    if stride > window:
        raise ValueError(f"stride {stride} is larger than the window {window}: pixels would be skipped")
    return [(top, left, min(top + window, height), min(left + window, width))
            for top in _starts(height, window, stride) for left in _starts(width, window, stride)]


def sliding_window(image: torch.Tensor, predict: Callable[[torch.Tensor], torch.Tensor], window: int,
                   stride: int, batch_size: int, multiple: int = 1) -> torch.Tensor:
    """Averages ``predict`` over overlapping windows of one image.

    image: (3, H, W). ``predict`` maps a batch (N, 3, h, w) to scores (N, K, h, w) at the
    window's own resolution. Windows whose sides are not multiples of ``multiple`` (the patch
    size) are zero-padded at the bottom/right and the padding is cut from their scores, so it
    never reaches the output. At most ``batch_size`` windows are in memory at once.
    Returns (K, H, W), channels-last in memory (the K scores of a pixel side by side, as the
    window scores come): accumulating, resizing and the argmax over classes then run along
    contiguous memory.
    """
    _, height, width = image.shape
    boxes = window_boxes(height, width, window, stride)
    total = None
    counts = torch.zeros(1, height, width, device=image.device)
    for start in range(0, len(boxes), batch_size):
        chunk = boxes[start:start + batch_size]
        crops = [image[:, t:b, l:r] for t, l, b, r in chunk]
        crop_h, crop_w = crops[0].shape[-2:]
        pad_h, pad_w = -crop_h % multiple, -crop_w % multiple
        batch = torch.stack([F.pad(c, (0, pad_w, 0, pad_h)) for c in crops])  # (N, 3, h', w')
        scores = predict(batch)[:, :, :crop_h, :crop_w]  # (N, K, h, w)
        if total is None:
            total = torch.empty(1, scores.shape[1], height, width, dtype=scores.dtype, device=image.device,
                                memory_format=torch.channels_last)[0].zero_()
        for (t, l, b, r), window_scores in zip(chunk, scores):
            total[:, t:b, l:r] += window_scores
            counts[:, t:b, l:r] += 1
    return total.div_(counts)
