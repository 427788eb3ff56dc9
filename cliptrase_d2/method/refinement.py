"""From dense features to labels: logits, global-patch suppression, clustering and region
refinement. Pure functions on tensors; one image at a time unless stated.

Where a faster formulation is used (``channel_argmax``, ``median_filter``, ``region_means``),
it computes exactly the same numbers as the obvious one (named in its docstring).
"""

import functools
from typing import List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

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
]

# Most window values (maps x H x W x size * size) one median-filter pass covers at once.
MEDIAN_WINDOW_ELEMENTS = 1 << 22
# Most bytes of resized class maps ``resized_argmax`` holds at once.
RESIZE_CHUNK_BYTES = 1 << 28

REFINEMENTS = ("vote", "mean", "none", "tlp")  # tlp: PEARL's propagation (propagation.py)


def _stage(name: str):
    """Decorator: each call shows as ``cliptrase/<name>`` in torch.profiler traces (the stages of
    tools/benchmark.py --stages); a new label per call, so calls may nest and run in threads."""

    def decorate(function):
        @functools.wraps(function)
        def labelled(*args, **kwargs):
            with torch.profiler.record_function(f"cliptrase/{name}"):
                return function(*args, **kwargs)

        return labelled

    return decorate


def dense_logits(
    patch_tokens: torch.Tensor,
    text_embeddings: torch.Tensor,
    grid: Tuple[int, int],
    logit_scale: float,
) -> torch.Tensor:
    """logit_scale * patch . text for every patch: (B, n, E), (K, E) -> (B, K, h, w).

    A view of the (B, h, w, K) product, i.e. in channels-last memory layout: bilinear resizing
    keeps that layout (no transposing copy) and reduces over classes along contiguous memory.
    """
    logits = logit_scale * patch_tokens @ text_embeddings.t()  # (B, n, K)
    return logits.view(logits.shape[0], *grid, -1).permute(0, 3, 1, 2)


@_stage("upsampling")
def resize_logits(
    logits: torch.Tensor, size: Tuple[int, int], out: Optional[torch.Tensor] = None
) -> torch.Tensor:
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
    """Whether (..., K, H, W) maps are stored as (..., H, W, K): the K values of a pixel side by
    side."""
    return maps.stride(-3) == 1 and maps.movedim(-3, -1).is_contiguous()


@_stage("argmax")
def channel_argmax(scores: torch.Tensor) -> torch.Tensor:
    """``scores.argmax(dim=-3)`` for (..., K, H, W) scores -> (..., H, W) int64: the first channel
    on ties, NaN taken for the maximum.

    Computed as ``max(dim=-3).indices``, which returns the same indices (first maximal value,
    NaN propagating) and is faster than ``argmax`` on a CPU in either memory layout and not
    slower elsewhere (docs/SPEED.md).
    """
    return scores.max(dim=-3).indices


@_stage("upsampling")
def resize_maps(maps: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """Bilinear (align_corners=False) resize of (K, h, w) maps to (K, H, W), in their layout.

    The batch of one gets a batch stride of the whole tensor: with the stride ``maps[None]``
    gives, torch 2.x leaves its channels-last fast path.
    """
    batch = maps.as_strided((1, *maps.shape), (maps.numel(), *maps.stride()))
    return F.interpolate(batch, size=tuple(size), mode="bilinear", align_corners=False)[0]


def resized_argmax(
    maps: torch.Tensor, size: Tuple[int, int], max_bytes: Optional[int] = None
) -> torch.Tensor:
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
        return channel_argmax(resize_maps(maps, size))
    starts = list(range(0, num_maps - step + 1, step))  # the last group runs to the end
    layout = _channels_last(maps)
    labels = best = None
    for start, stop in zip(starts, starts[1:] + [num_maps]):
        group = maps[start:stop]
        group = (
            group.permute(1, 2, 0).contiguous().permute(2, 0, 1) if layout else group.contiguous()
        )
        resized = resize_maps(group, size)
        values, indices = resized.max(dim=0)
        del resized
        if labels is None:
            labels, best = indices, values
            continue
        # strictly: ties keep the earlier channel
        better = (values > best) | (values.isnan() & ~best.isnan())
        best = torch.where(better, values, best)
        labels = torch.where(better, indices + start, labels)
    return labels


def weight_by_image_logits(
    logits: torch.Tensor, image_logits: torch.Tensor, out: Optional[torch.Tensor] = None
) -> torch.Tensor:
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


def _full_float32_products(device: torch.device) -> bool:
    """Whether float32 matrix products on ``device`` are computed in float32 (not TF32 or
    bfloat16, which ``torch.set_float32_matmul_precision`` or
    ``torch.backends.cuda.matmul.allow_tf32`` may allow)."""
    if torch.get_float32_matmul_precision() != "highest":
        return False
    return device.type != "cuda" or not torch.backends.cuda.matmul.allow_tf32


def _neighbourhoods(rows: torch.Tensor, eps: float) -> torch.Tensor:
    """(B, n, d) float32 rows -> (B, n, n) bool, symmetric: squared Euclidean distance
    <= eps^2, the distance |a|^2 + |b|^2 - 2 a.b in float64 wherever the comparison depends on
    it (``cluster_patches``' rule); the upper triangle decides for both (i, j) and (j, i). One
    host sync for the whole batch (the distances to recheck).

    The products a.b come from a float32 matrix product (half the time of a float64 one on a
    CPU), and every distance whose float32 product could fall on the other side of eps^2 than
    the float64 one is recomputed in float64: a float32 dot product of d terms is off by at most
    gamma_d |a| |b| (gamma_d = d u / (1 - d u), u = 2^-24), so a distance further than twice
    2 gamma_d |a| |b| from eps^2 is on the same side either way. When float32 products may be
    less exact (TF32 or bfloat16 matrix products allowed, or rows so long that the bound is
    loose) or more than an eighth of the distances are that close, every product is computed in
    float64.
    """
    wide = rows.double()
    squares = (wide * wide).sum(dim=-1)  # (B, n)
    sums = squares[:, :, None] + squares[:, None, :]  # (B, n, n) |a|^2 + |b|^2
    threshold = eps * eps
    dims = rows.shape[-1]
    gamma = dims * 2.0**-24 / (1 - dims * 2.0**-24)
    distances = None
    if _full_float32_products(rows.device) and gamma <= 1e-3:
        approximate = sums - 2 * (rows @ rows.mT)  # float64 sums, float32 products
        norms = squares.sqrt()
        slack = (4 * gamma * norms)[:, :, None] * norms[:, None, :]  # (B, n, n)
        unsure = ((approximate - threshold).abs_() <= slack.add_(1e-12)).nonzero(as_tuple=True)
        if unsure[0].numel() <= approximate.numel() // 8:
            image, first, second = unsure
            products = (wide[image, first] * wide[image, second]).sum(dim=-1)
            approximate[unsure] = sums[unsure] - 2 * products
            distances = approximate
    if distances is None:  # every product in float64
        distances = sums - 2 * (wide @ wide.mT)
    within = distances <= threshold
    return within.triu() | within.triu(1).mT  # exactly symmetric: an undirected graph


@_stage("clustering")
def cluster_patches(affinity: torch.Tensor, eps: float, min_samples: int) -> torch.Tensor:
    """DBSCAN (Euclidean distance between rows) of each image's affinity, on its device:
    (n, n) -> (n,) or (B, n, n) -> (B, n) int64 cluster ids, -1 for noise.

    The labels are scikit-learn's ``DBSCAN(eps, min_samples).fit(rows).labels_`` for the float32
    rows, which these rules determine: a point's neighbourhood is every row at squared distance
    <= eps^2 (itself included), the distance computed in float64 as scikit-learn computes it
    (|a|^2 + |b|^2 - 2 a.b, ``_neighbourhoods``); core points have at least ``min_samples``
    neighbours; clusters are the connected components of core points, numbered in the order of
    their lowest-index core point; any other point joins the first cluster one of its
    neighbours belongs to, or is noise. (Where a distance lies within about 1e-7 of eps,
    scikit-learn 1.9's float32 path can decide otherwise: its distances come back rounded to
    float32, e.g. one-hot rows at eps = sqrt(2) are noise there; no fixture case has such a
    pair.) Components are found by propagating the lowest core index to neighbours and
    following labels to their label (pointer jumping) until nothing changes: one host sync per
    step for the whole batch, a few steps (about log2 of a component's diameter). Indices are
    int32 in the (B, n, n) steps (half of int64's memory traffic).
    """
    batched = affinity.dim() == 3
    rows = (affinity if batched else affinity[None]).detach().float()  # (B, n, d)
    num_points = rows.shape[1]
    neighbours = _neighbourhoods(rows, eps)
    neighbours.diagonal(dim1=1, dim2=2).fill_(True)
    core = neighbours.sum(dim=-1) >= min_samples  # (B, n)
    links = neighbours & core[:, :, None] & core[:, None, :]  # core to core
    index = torch.arange(num_points, device=rows.device, dtype=torch.int32)
    none = num_points  # "no core point": larger than every index
    roots = torch.where(core, index, none)  # (B, n) lowest core index known so far
    while True:
        lowest = torch.where(links, roots[:, None, :], none).amin(dim=-1)  # (B, n)
        jumped = F.pad(lowest, (0, 1), value=none).gather(1, lowest.long())  # the label's label
        if torch.equal(jumped, roots):
            break
        roots = jumped
    first = core & (roots == index)  # the lowest core point of each cluster
    numbers = (first.cumsum(dim=1) - 1).to(torch.int32)  # (B, n) cluster number of first points
    core_ids = torch.where(core, numbers.gather(1, roots.clamp(max=none - 1).long()), none)
    border = torch.where(neighbours & core[:, None, :], core_ids[:, None, :], none).amin(dim=-1)
    labels = torch.where(border == none, -1, border.long())  # core points: their own cluster
    return labels if batched else labels[0]


Comparator = Tuple[int, int]  # (i, j): wire i takes the minimum of the two, wire j the maximum


def _odd_even_merge(first: List[int], second: List[int], comparators: List[Comparator]):
    """Batcher's odd-even merge of two sorted lists of wires, of any lengths: appends its
    comparators, returns the wires in sorted order."""
    if not first or not second:
        return list(first or second)
    if len(first) == 1 and len(second) == 1:
        comparators.append((first[0], second[0]))
        return [first[0], second[0]]
    even = _odd_even_merge(first[0::2], second[0::2], comparators)
    odd = _odd_even_merge(first[1::2], second[1::2], comparators)
    order = even[:1]
    for index in range(max(len(odd), len(even) - 1)):
        pair = [wires[index] for wires in (odd, even[1:]) if index < len(wires)]
        if len(pair) == 2:
            comparators.append(tuple(pair))
        order += pair
    return order


def _odd_even_sort(wires: List[int], comparators: List[Comparator]) -> List[int]:
    if len(wires) <= 1:
        return list(wires)
    half = len(wires) // 2
    return _odd_even_merge(
        _odd_even_sort(wires[:half], comparators),
        _odd_even_sort(wires[half:], comparators),
        comparators,
    )


@functools.lru_cache(maxsize=None)
def median_network(size: int):
    """A comparator network for the median of a ``size`` x ``size`` window whose columns come
    sorted: (column comparators, sorted column order, window comparators, output wire).

    The column network sorts ``size`` wires (Batcher's odd-even merge sort); the window's wires
    are numbered column * size + rank; the window network merges the sorted columns pairwise
    (odd-even merges) and keeps only the comparators the output wire, rank ``size * size // 2``
    of the merged order, depends on: (i, j, i needed, j needed).
    """
    column_comparators: List[Comparator] = []
    column_order = _odd_even_sort(list(range(size)), column_comparators)
    merges: List[Comparator] = []
    lists = [[column * size + rank for rank in range(size)] for column in range(size)]
    while len(lists) > 1:
        pairs = [_odd_even_merge(a, b, merges) for a, b in zip(lists[0::2], lists[1::2])]
        lists = pairs + lists[len(pairs) * 2 :]
    output = lists[0][size * size // 2]
    needed, window_comparators = {output}, []
    for low, high in reversed(merges):
        if low in needed or high in needed:
            window_comparators.append((low, high, low in needed, high in needed))
            needed |= {low, high}
    return tuple(column_comparators), tuple(column_order), tuple(window_comparators[::-1]), output


@_stage("median filter")
def median_filter(maps: torch.Tensor, size: int) -> torch.Tensor:
    """``size`` x ``size`` median of each (H, W) map: (..., H, W) -> (..., H, W), NaN-free maps.

    Equal to ``scipy.ndimage.median_filter(maps, size=(1, size, size))`` (default 'reflect'
    border, d c b a | a b c d | d c b a; window starting ``size // 2`` before its pixel; rank
    ``size * size // 2``, the upper median for an even size). A selection network of elementwise
    minima and maxima over whole shifted planes, on the maps' device: the columns of ``size``
    values are sorted once (each is shared by ``size`` windows side by side), then the pruned
    merge of ``median_network`` picks the median; every output is one of the window's own
    values, so the numbers are scipy's exactly (a sorting network is correct on any input when
    it is on every input of zeros and ones, which the tests enumerate).
    """
    if size <= 1:
        return maps
    shape = maps.shape
    maps = maps.reshape(-1, *shape[-2:])  # (m, H, W)
    num_maps, height, width = maps.shape
    before, after = size // 2, size - 1 - size // 2
    rows, cols = (
        torch.from_numpy(np.pad(np.arange(n), (before, after), mode="symmetric")).to(maps.device)
        for n in (height, width)
    )
    column_comparators, column_order, window_comparators, output = median_network(size)
    step = max(1, MEDIAN_WINDOW_ELEMENTS // (height * width * size * size))
    filtered = []
    for start in range(0, num_maps, step):
        chunk = maps[start : start + step]
        padded = chunk[:, rows][:, :, cols]  # (g, H + s - 1, W + s - 1)
        wires = [padded[:, rank : rank + height] for rank in range(size)]  # (g, H, W + s - 1)
        for low, high in column_comparators:
            wires[low], wires[high] = (
                torch.minimum(wires[low], wires[high]),
                torch.maximum(wires[low], wires[high]),
            )
        columns = [wires[wire] for wire in column_order]  # sorted: rank r of each column
        wires = [columns[rank][..., c : c + width] for c in range(size) for rank in range(size)]
        for low, high, low_needed, high_needed in window_comparators:
            a, b = wires[low], wires[high]
            if low_needed:
                wires[low] = torch.minimum(a, b)
            if high_needed:
                wires[high] = torch.maximum(a, b)
        filtered.append(wires[output])
    return torch.cat(filtered).view(shape)


@_stage("region map")
def region_map(
    affinity: torch.Tensor,
    cluster_ids,
    grid: Tuple[int, int],
    size: Tuple[int, int],
    median_size: int = 7,
    upsample: int = 4,
) -> Optional[torch.Tensor]:
    """Assigns every output pixel to a region, for a batch of images at once.

    Each cluster's map is the mean affinity row of its members, reshaped to the grid; the maps
    are upsampled x``upsample``, median filtered (``median_size`` square, reflect border),
    resized to ``size`` and the region of a pixel is the argmax over its image's maps.
    affinity: (B, n, n), cluster_ids: (B, n) (tensor or array) -> (B, H, W) int64 region ids,
    all -1 for an image whose patches are all noise. Unbatched, (n, n), (n,) -> (H, W) or None
    when every patch is noise. Images with fewer clusters than the batch's most get empty maps
    that never win; the mean sums a cluster's rows in index order (``index_add_``).
    """
    batched = affinity.dim() == 3
    ids = torch.as_tensor(cluster_ids, device=affinity.device)
    if not batched:
        affinity, ids = affinity[None], ids[None]
    num_images, num_patches = ids.shape
    clusters = ids.amax(dim=1) + 1 if num_patches else ids.new_zeros(num_images)  # (B,)
    num_maps = int(clusters.max())  # one host sync for the whole batch
    if num_maps <= 0:
        return None if not batched else ids.new_full((num_images, *size), -1)
    spare = num_images * num_maps  # noise patches are summed into a row nobody reads
    slots = torch.where(
        ids >= 0, ids + num_maps * torch.arange(num_images, device=ids.device)[:, None], spare
    )
    sums = affinity.new_zeros(spare + 1, num_patches).index_add_(
        0, slots.flatten(), affinity.reshape(-1, num_patches)
    )
    members = torch.bincount(slots.flatten(), minlength=spare + 1).clamp(min=1).to(sums.dtype)
    maps = (sums / members[:, None])[:spare].view(num_images, num_maps, *grid)  # (B, m, h, w)
    h, w = grid
    maps = F.interpolate(
        maps, size=(upsample * h, upsample * w), mode="bilinear", align_corners=False
    )
    maps = median_filter(maps, median_size)  # (B, m, 4h, 4w)
    # (B, m, H, W)
    maps = F.interpolate(maps, size=tuple(size), mode="bilinear", align_corners=False)
    empty = torch.arange(num_maps, device=maps.device) >= clusters[:, None]  # (B, m)
    maps.masked_fill_(empty[:, :, None, None], float("-inf"))
    regions = torch.where(clusters[:, None, None] > 0, channel_argmax(maps), -1)  # (B, H, W)
    return regions if batched else regions[0]


def _region_slots(regions: torch.Tensor) -> Tuple[torch.Tensor, int]:
    """One index per (image, region) for (..., H, W) region ids numbered from 0 in each image:
    (slots: image * m + region, of the same shape; m, the most regions of an image). The pixels
    of region -1 go to slot B * m, after every image's."""
    num_regions = max(0, int(regions.max()) + 1)  # one host sync for the whole batch
    images = regions.reshape(-1, regions.shape[-2] * regions.shape[-1])  # (B, H*W)
    offsets = num_regions * torch.arange(len(images), device=regions.device)[:, None]
    slots = torch.where(images >= 0, images + offsets, len(images) * num_regions)
    return slots.view(regions.shape), num_regions


@_stage("refinement")
def vote_refine(labels: torch.Tensor, regions: torch.Tensor, num_labels: int) -> torch.Tensor:
    """Every pixel takes the most frequent label of its region (ties: the smallest label).

    labels, regions: (..., H, W) int64, regions numbered from 0 in each image -> (..., H, W)
    int64. Pixels of region -1 (an image without regions) keep their label.
    """
    slots, num_regions = _region_slots(regions)
    num_slots = slots[..., 0, 0].numel() * num_regions + 1
    counts = torch.bincount(
        (slots * num_labels + labels).flatten(), minlength=num_slots * num_labels
    ).view(num_slots, num_labels)
    return torch.where(regions >= 0, counts.argmax(dim=1)[slots], labels)


def region_means(scores: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
    """Mean score vector of each region: (..., K, H, W), (..., H, W) -> (..., K, m), m the most
    regions of an image (an image with fewer has zeros for the others; region -1 is left out).

    Each sum runs over the region's pixels in raster order, one addition after another, as
    ``index_add_`` over the pixels adds them (on a CPU; CUDA adds in any order unless
    ``torch.use_deterministic_algorithms`` is on): channels-last scores (rows of K values) go
    through it without a copy; (H, W) planes are first copied to rows.
    """
    num_labels = scores.shape[-3]
    slots, num_regions = _region_slots(regions)
    num_slots = slots[..., 0, 0].numel() * num_regions + 1
    index = slots.flatten()
    counts = torch.bincount(index, minlength=num_slots).clamp(min=1).to(scores.dtype)
    pixels = scores.movedim(-3, -1).reshape(-1, num_labels)  # (B*H*W, K): a view when channels-last
    sums = torch.zeros(num_slots, num_labels, dtype=scores.dtype, device=scores.device)
    sums.index_add_(0, index, pixels)
    means = (sums / counts[:, None])[:-1]  # (B*m, K)
    return means.view(*regions.shape[:-2], num_regions, num_labels).transpose(-1, -2)


def expand_regions(
    values: torch.Tensor, regions: torch.Tensor, out: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """Every pixel takes its region's column: (..., K, m), (..., H, W) -> (..., K, H, W).

    Written to ``out`` if given, in its own memory layout (contiguous or channels-last).
    Pixels of region -1 take region 0's column.
    """
    num_labels, num_regions = values.shape[-2:]
    images = regions.reshape(-1, regions.shape[-2] * regions.shape[-1])  # (B, H*W)
    offsets = num_regions * torch.arange(len(images), device=regions.device)[:, None]
    index = (images.clamp(min=0) + offsets).flatten()
    columns = values.reshape(-1, num_labels, num_regions)  # (B, K, m)
    if out is None:
        out = values.new_empty(*regions.shape[:-2], num_labels, *regions.shape[-2:])
    if _channels_last(out):  # (..., H, W, K) rows
        rows = columns.transpose(1, 2).reshape(-1, num_labels)  # (B*m, K)
        torch.index_select(rows, 0, index, out=out.movedim(-3, -1).view(-1, num_labels))
    else:
        flat = columns.transpose(0, 1).reshape(num_labels, -1)  # (K, B*m)
        planes = out.view(-1, num_labels, *regions.shape[-2:]).transpose(0, 1)  # (K, B, H, W)
        planes.copy_(torch.index_select(flat, 1, index).view(planes.shape))
    return out
