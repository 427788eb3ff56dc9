"""From dense features to labels: logits, global-patch suppression, clustering and region
refinement (SPEC sections 6-8). Pure functions on tensors; one image at a time unless stated.
"""
from typing import Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from sklearn.cluster import DBSCAN

__all__ = [
    "REFINEMENTS",
    "dense_logits",
    "resize_logits",
    "weight_by_image_logits",
    "merge_background_labels",
    "merge_background_scores",
    "suppress_global_patch",
    "cluster_patches",
    "region_map",
    "vote_refine",
    "mean_refine",
]

REFINEMENTS = ("vote", "mean", "none")


def dense_logits(patch_tokens: torch.Tensor, text_embeddings: torch.Tensor, grid: Tuple[int, int],
                 logit_scale: float) -> torch.Tensor:
    """logit_scale * patch . text for every patch: (B, n, E), (K, E) -> (B, K, h, w)."""
    logits = logit_scale * patch_tokens @ text_embeddings.t()  # (B, n, K)
    return logits.transpose(1, 2).reshape(logits.shape[0], -1, *grid)


def resize_logits(logits: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """Bilinear (align_corners=False) resize of (B, K, h, w) maps to (B, K, H, W)."""
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


def weight_by_image_logits(logits: torch.Tensor, image_logits: torch.Tensor) -> torch.Tensor:
    """VOC20's image-level weighting: each class map times that class's [CLS] logit.

    logits: (B, K, H, W), image_logits: (B, K) -> (B, K, H, W).
    """
    return logits * image_logits[:, :, None, None]


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
    filtered = ndimage.median_filter(maps[0].cpu().numpy(), size=(1, median_size, median_size))
    maps = torch.from_numpy(filtered).to(affinity.device)[None]  # (1, m, 4h, 4w)
    maps = F.interpolate(maps, size=tuple(size), mode="bilinear", align_corners=False)
    return maps[0].argmax(dim=0)


def vote_refine(labels: torch.Tensor, regions: torch.Tensor, num_labels: int) -> torch.Tensor:
    """Every pixel takes the most frequent label of its region (ties: the smallest label).

    labels, regions: (H, W) int64 -> (H, W) int64.
    """
    num_regions = int(regions.max()) + 1
    counts = torch.bincount((regions * num_labels + labels).flatten(),
                            minlength=num_regions * num_labels).view(num_regions, num_labels)
    return counts.argmax(dim=1)[regions]


def mean_refine(scores: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
    """Every pixel's score vector becomes its region's mean: (K, H, W), (H, W) -> (K, H, W)."""
    num_labels = scores.shape[0]
    num_regions = int(regions.max()) + 1
    flat = scores.reshape(num_labels, -1)  # (K, H*W)
    index = regions.flatten()
    sums = torch.zeros(num_labels, num_regions, dtype=scores.dtype, device=scores.device)
    sums.index_add_(1, index, flat)
    counts = torch.bincount(index, minlength=num_regions).clamp(min=1).to(scores.dtype)
    return (sums / counts)[:, index].reshape(scores.shape)
