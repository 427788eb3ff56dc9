"""Sliding-window inference: window placement and averaging of overlapping window scores."""

from typing import Callable, Dict, Iterator, List, Sequence, Tuple

import torch
import torch.nn.functional as F

__all__ = ["PADDINGS", "window_boxes", "window_padding", "sliding_windows"]

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


def sliding_windows(
    images: Sequence[torch.Tensor],
    predict: Callable[[torch.Tensor], torch.Tensor],
    window: int,
    stride: int,
    batch_size: int,
    multiple: int = 1,
    padding: str = "end",
) -> Iterator[torch.Tensor]:
    """Averages ``predict`` over overlapping windows of each image (``window`` 0: the whole
    image), the windows of all images going through ``predict`` together: ``batch_size`` at a
    time, in image order, across image boundaries (a batch holds windows of one shape; it is
    closed early where the next image's windows differ). Each image's windows are added in the
    same order as alone, so where ``predict`` gives a window the scores it gets alone (whatever
    else is in its batch), every average is the one the image gets alone, bit for bit.

    images: (3, H_i, W_i) each. ``predict`` maps a batch (N, 3, h, w) to scores (N, K, h, w) at
    the window's own resolution. Windows whose sides are not multiples of ``multiple`` (the
    patch size) are zero-padded as ``padding`` says (``window_padding``) and the padding is cut
    from their scores, so it never reaches the output.
    Yields each image's (K, H_i, W_i) average, in image order, as soon as its last window is
    predicted, and then drops it: only the images a batch spans are held at once. Each average
    is channels-last in memory (the K scores of a pixel side by side, as the window scores
    come): accumulating, resizing and the argmax over classes then run along contiguous memory.
    """
    totals: Dict[int, torch.Tensor] = {}
    counts: Dict[int, torch.Tensor] = {}
    remaining = [0] * len(images)

    def run(chunk: List[Tuple[int, Box]]) -> List[torch.Tensor]:
        """Adds the chunk's window scores; returns the averages it completed."""
        crops = [images[i][:, t:b, l:r] for i, (t, l, b, r) in chunk]
        crop_h, crop_w = crops[0].shape[-2:]
        pad = window_padding(crop_h, crop_w, multiple, padding)
        batch = torch.stack([F.pad(c, pad) for c in crops])  # (N, 3, h', w')
        top, left = pad[2], pad[0]
        scores = predict(batch)[:, :, top : top + crop_h, left : left + crop_w]  # (N, K, h, w)
        completed = []
        for (i, (t, l, b, r)), window_scores in zip(chunk, scores):
            if i not in totals:
                height, width = images[i].shape[-2:]
                totals[i] = torch.empty(
                    1,
                    scores.shape[1],
                    height,
                    width,
                    dtype=scores.dtype,
                    device=images[i].device,
                    memory_format=torch.channels_last,
                )[0].zero_()
                counts[i] = torch.zeros(1, height, width, device=images[i].device)
            totals[i][:, t:b, l:r] += window_scores
            counts[i][:, t:b, l:r] += 1
            remaining[i] -= 1
            if remaining[i] == 0:
                completed.append(totals.pop(i).div_(counts.pop(i)))
        return completed

    chunk: List[Tuple[int, Box]] = []
    chunk_shape = None  # the (h, w) of the windows in ``chunk``
    for index, image in enumerate(images):
        boxes = window_boxes(image.shape[-2], image.shape[-1], window, stride)
        remaining[index] = len(boxes)
        shape = (boxes[0][2] - boxes[0][0], boxes[0][3] - boxes[0][1])  # all of the image's
        for box in boxes:
            if chunk and (len(chunk) == batch_size or shape != chunk_shape):
                yield from run(chunk)
                chunk = []
            chunk.append((index, box))
            chunk_shape = shape
    if chunk:
        yield from run(chunk)
