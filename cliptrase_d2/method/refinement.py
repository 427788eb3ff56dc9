"""From dense features to labels: logits, global-patch suppression, clustering and region
refinement (SPEC sections 6-8). Pure functions on tensors; one image at a time unless stated.

Where a faster formulation is used (``channel_argmax``, ``median_filter``, ``region_means``),
it computes exactly the same numbers as the obvious one (named in its docstring).
"""
from typing import Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.cluster import DBSCAN

__all__ = [
    "REFINEMENTS",
    "dense_logits",
    "resize_logits",
    "channel_argmax",
    "resize_maps",
    "resized_argmax",
    "weight_by_image_logits",
    "merge_background_labels",
    "merge_background_scores",
    "suppress_global_patch",
    "cluster_patches",
    "median_filter",
    "region_map",
    "vote_refine",
    "region_means",
    "expand_regions",
    "mean_refine",
]

# Most values of the (maps, H, W, size * size) median-filter windows held at once (16 MB in fp32).
MEDIAN_WINDOW_ELEMENTS = 1 << 22
# Most bytes of resized class maps ``resized_argmax`` holds at once.
RESIZE_CHUNK_BYTES = 1 << 28

REFINEMENTS = ("vote", "mean", "none", "tlp")  # tlp: PEARL's propagation (propagation.py)


def dense_logits(patch_tokens: torch.Tensor, text_embeddings: torch.Tensor, grid: Tuple[int, int],
                 logit_scale: float) -> torch.Tensor:
    """logit_scale * patch . text for every patch: (B, n, E), (K, E) -> (B, K, h, w).

    A view of the (B, h, w, K) product, i.e. in channels-last memory layout: bilinear resizing
    keeps that layout (no transposing copy) and reduces over classes along contiguous memory.
    """
    logits = logit_scale * patch_tokens @ text_embeddings.t()  # (B, n, K)
    return logits.view(logits.shape[0], *grid, -1).permute(0, 3, 1, 2)


def resize_logits(logits: torch.Tensor, size: Tuple[int, int], out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Bilinear (align_corners=False) resize of (B, K, h, w) maps to (B, K, H, W).

    ``out``: a buffer to write into, in the memory layout the resize gives itself (channels-last
    for ``dense_logits``), so that the numbers are the same.
    """
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits if out is None else out.copy_(logits)
    if out is None:
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
    return torch.ops.aten.upsample_bilinear2d.out(logits, list(size), False, None, None, out=out)


def _channels_last(maps: torch.Tensor) -> bool:
    """Whether (K, H, W) maps are stored as (H, W, K): the K values of a pixel side by side."""
    return maps.stride(0) == 1 and maps.permute(1, 2, 0).is_contiguous()


def channel_argmax(scores: torch.Tensor) -> torch.Tensor:
    """``scores.argmax(dim=0)`` for (K, H, W) scores -> (H, W) int64, ties to the first channel.

    When the K channels are (H, W) planes in memory, a CPU keeps a running maximum plane by
    plane, several times faster than the strided reduction and with the same result, NaN
    included (it falls back to ``argmax``, which takes NaN for the maximum). Channels-last
    scores (``dense_logits`` resized) reduce along contiguous memory: ``argmax`` itself.
    """
    if scores.device.type != "cpu" or scores.shape[0] == 1 or _channels_last(scores):
        return scores.argmax(dim=0)
    best = scores[0].clone()
    labels = torch.zeros(scores.shape[1:], dtype=torch.long)
    better = torch.empty(scores.shape[1:], dtype=torch.bool)
    for index in range(1, scores.shape[0]):
        torch.gt(scores[index], best, out=better)  # strictly greater: ties keep the earlier channel
        torch.maximum(best, scores[index], out=best)  # NaN propagates into best
        labels.masked_fill_(better, index)
    if torch.isnan(best).any():
        return scores.argmax(dim=0)
    return labels


def resize_maps(maps: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """Bilinear (align_corners=False) resize of (K, h, w) maps to (K, H, W), in their layout.

    The batch of one gets a batch stride of the whole tensor: with the stride ``maps[None]``
    gives, torch 2.x leaves its channels-last fast path (about 8x slower at 150 classes).
    """
    batch = maps.as_strided((1, *maps.shape), (maps.numel(), *maps.stride()))
    return F.interpolate(batch, size=tuple(size), mode="bilinear", align_corners=False)[0]


def resized_argmax(maps: torch.Tensor, size: Tuple[int, int], max_bytes: Optional[int] = None) -> torch.Tensor:
    """``resize_maps(maps, size).argmax(dim=0)`` -> (H, W) int64, without holding the (K, H, W)
    resized maps when they exceed ``max_bytes`` (default ``RESIZE_CHUNK_BYTES``): the channels
    are resized a group at a time, and a running maximum keeps the first channel on ties and
    the first NaN, as ``argmax`` does.

    Groups start at multiples of 8 channels and hold a multiple of 8, the remainder joining the
    last group: torch's channels-last CPU kernel computes a channel with vector or scalar code
    depending on where it falls, and with these groups every channel falls where it does in the
    whole resize, so the numbers are the same (``tests/test_fast_paths.py`` checks it bit for bit).
    """
    num_maps = maps.shape[0]
    max_bytes = RESIZE_CHUNK_BYTES if max_bytes is None else max_bytes
    step = max(8, max_bytes // (size[0] * size[1] * maps.element_size()) // 8 * 8)
    if step >= num_maps:
        return resize_maps(maps, size).argmax(dim=0)
    starts = list(range(0, num_maps - step + 1, step))  # the last group runs to the end
    layout = _channels_last(maps)
    labels = best = None
    for start, stop in zip(starts, starts[1:] + [num_maps]):
        group = maps[start:stop]
        group = group.permute(1, 2, 0).contiguous().permute(2, 0, 1) if layout else group.contiguous()
        resized = resize_maps(group, size)
        indices = resized.argmax(dim=0)
        values = resized.gather(0, indices[None])[0]
        del resized
        if labels is None:
            labels, best = indices, values
            continue
        better = (values > best) | (values.isnan() & ~best.isnan())  # strictly: ties keep the earlier channel
        best = torch.where(better, values, best)
        labels = torch.where(better, indices + start, labels)
    return labels


def weight_by_image_logits(logits: torch.Tensor, image_logits: torch.Tensor,
                           out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """VOC20's image-level weighting: each class map times that class's [CLS] logit.

    logits: (B, K, H, W), image_logits: (B, K) -> (B, K, H, W), written to ``out`` if given
    (``out=logits`` weights in place).
    """
    return torch.mul(logits, image_logits[:, :, None, None], out=out)


def merge_background_labels(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Every index >= num_classes (a background word) becomes num_classes (one background class)."""
    return labels.clamp(max=num_classes)


def merge_background_scores(scores: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(..., C + B, H, W) -> (..., C + 1, H, W): background channel = max over background words,
    so the argmax of the result equals the merged argmax of the input."""
    if scores.shape[-3] <= num_classes + 1:
        return scores
    background = scores[..., num_classes:, :, :].amax(dim=-3, keepdim=True)
    return torch.cat([scores[..., :num_classes, :, :], background], dim=-3)


def suppress_global_patch(correlation: torch.Tensor) -> torch.Tensor:
    """A = max(A11[1:, 1:] - A11[0:1, 1:], 0): subtract the [CLS] row from every patch row.

    correlation: (..., 1 + n, 1 + n) -> affinity (..., n, n); row i describes patch i.
    """
    return (correlation[..., 1:, 1:] - correlation[..., :1, 1:]).clamp(min=0)


def cluster_patches(affinity: torch.Tensor, eps: float, min_samples: int) -> np.ndarray:
    """DBSCAN (Euclidean distance between rows of the (n, n) affinity). Returns (n,) int64
    cluster ids, -1 for noise, numbered as scikit-learn numbers them."""
    rows = affinity.detach().to("cpu", torch.float32).numpy()
    return DBSCAN(eps=eps, min_samples=min_samples).fit(rows).labels_.astype(np.int64)


def median_filter(maps: torch.Tensor, size: int) -> torch.Tensor:
    """``size`` x ``size`` median of each (H, W) map: (m, H, W) -> (m, H, W).

    Equal to ``scipy.ndimage.median_filter(maps, size=(1, size, size))`` (default 'reflect'
    border, d c b a | a b c d | d c b a; window starting ``size // 2`` before its pixel; rank
    ``size * size // 2``, the upper median for an even size): a median is one of the window's
    own values, so gathering the windows and selecting that rank gives scipy's numbers exactly.
    """
    if size <= 1:
        return maps
    num_maps, height, width = maps.shape
    before, after = size // 2, size - 1 - size // 2
    rows = torch.from_numpy(np.pad(np.arange(height), (before, after), mode="symmetric")).to(maps.device)
    cols = torch.from_numpy(np.pad(np.arange(width), (before, after), mode="symmetric")).to(maps.device)
    padded = maps[:, rows][:, :, cols]  # (m, H + size - 1, W + size - 1)
    rank = size * size // 2  # 0-based
    step = max(1, MEDIAN_WINDOW_ELEMENTS // (height * width * size * size))
    filtered = []
    for start in range(0, num_maps, step):
        windows = padded[start:start + step].unfold(1, size, 1).unfold(2, size, 1)  # (g, H, W, size, size)
        windows = windows.reshape(*windows.shape[:3], size * size)
        if windows.device.type == "cpu":  # numpy's SIMD selection: several times faster than kthvalue
            values = torch.from_numpy(np.partition(windows.numpy(), rank, axis=-1)[..., rank])
        else:
            values = windows.kthvalue(rank + 1, dim=-1).values
        filtered.append(values)
    return torch.cat(filtered)


def region_map(affinity: torch.Tensor, cluster_ids: np.ndarray, grid: Tuple[int, int],
               size: Tuple[int, int], median_size: int = 7, upsample: int = 4) -> Optional[torch.Tensor]:
    """Assigns every output pixel to a region (SPEC section 8).

    Each cluster's map is the mean affinity row of its members, reshaped to the grid; the maps
    are upsampled x``upsample``, median filtered (``median_size`` square, reflect border),
    resized to ``size`` and the region of a pixel is the argmax over maps.
    affinity: (n, n), cluster_ids: (n,) -> (H, W) int64 region ids, or None when every patch is noise.
    """
    num_regions = int(cluster_ids.max()) + 1 if cluster_ids.size else 0
    if num_regions <= 0:
        return None
    h, w = grid
    ids = torch.as_tensor(cluster_ids, device=affinity.device)
    maps = torch.stack([affinity[ids == r].mean(dim=0) for r in range(num_regions)])  # (m, n)
    maps = maps.reshape(1, num_regions, h, w)
    maps = F.interpolate(maps, size=(upsample * h, upsample * w), mode="bilinear", align_corners=False)
    maps = median_filter(maps[0], median_size)[None]  # (1, m, 4h, 4w)
    maps = F.interpolate(maps, size=tuple(size), mode="bilinear", align_corners=False)
    return channel_argmax(maps[0])


def vote_refine(labels: torch.Tensor, regions: torch.Tensor, num_labels: int) -> torch.Tensor:
    """Every pixel takes the most frequent label of its region (ties: the smallest label).

    labels, regions: (H, W) int64 -> (H, W) int64.
    """
    num_regions = int(regions.max()) + 1
    counts = torch.bincount((regions * num_labels + labels).flatten(),
                            minlength=num_regions * num_labels).view(num_regions, num_labels)
    return counts.argmax(dim=1)[regions]


def region_means(scores: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
    """Mean score vector of each region: (K, H, W), (H, W) -> (K, m).

    Each sum runs over the region's pixels in raster order, one addition after another, as
    ``index_add_`` over the pixels adds them: channels-last scores (rows of K values) go through
    it without a copy; for (H, W) planes ``scatter_add_`` adds in the same order without a call
    per pixel.
    """
    num_labels = scores.shape[0]
    num_regions = int(regions.max()) + 1
    index = regions.flatten()
    counts = torch.bincount(index, minlength=num_regions).clamp(min=1).to(scores.dtype)
    if _channels_last(scores):
        pixels = scores.permute(1, 2, 0).reshape(-1, num_labels)  # (H*W, K), a view
        sums = torch.zeros(num_regions, num_labels, dtype=scores.dtype, device=scores.device)
        sums.index_add_(0, index, pixels)
        return (sums / counts[:, None]).t()
    sums = torch.zeros(num_labels, num_regions, dtype=scores.dtype, device=scores.device)
    sums.scatter_add_(1, index.expand(num_labels, -1), scores.reshape(num_labels, -1))
    return sums / counts


def expand_regions(values: torch.Tensor, regions: torch.Tensor, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Every pixel takes its region's column: (K, m), (H, W) -> (K, H, W).

    Written to ``out`` if given, in its own memory layout (contiguous or channels-last).
    """
    index = regions.flatten()
    if out is None:
        out = values.new_empty(values.shape[0], *regions.shape)
    if _channels_last(out):  # (H, W, K) rows
        torch.index_select(values.t(), 0, index, out=out.permute(1, 2, 0).view(-1, values.shape[0]))
    else:
        torch.index_select(values, 1, index, out=out.view(values.shape[0], -1))
    return out


def mean_refine(scores: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
    """Every pixel's score vector becomes its region's mean: (K, H, W), (H, W) -> (K, H, W)."""
    return expand_regions(region_means(scores, regions), regions)
