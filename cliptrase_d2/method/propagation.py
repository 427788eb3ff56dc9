"""PEARL's text-aware Laplacian propagation (TLP; docs/methods.md, Refinements).

Class maps are smoothed on a coarse grid by solving (C_w + L) X = C_w Y with conjugate
gradients: Y the cosine maps, C_w a per-pixel confidence, L a graph Laplacian over 4-neighbours
whose edge weights fall with the image's gray-level gradient and rise where the two pixels'
class distributions agree. Pure functions on tensors; every image of a batch is solved alone
(the authors normalise the gradients by their mean over the whole batch; for one image that is
the same).

Two quirks of the authors' code are kept, because they change the result: the "text-aware"
agreement uses only the DIAGONAL of the text-similarity matrix (their einsum ``'cc,bcij->bcij'``
takes the diagonal, it is not a matrix product), and that matrix is built from re-normalised
text embeddings.
"""

from typing import Tuple

import torch
import torch.nn.functional as F

__all__ = [
    "TLP_GRID",
    "text_similarity",
    "propagation_stride",
    "class_agreement",
    "edge_weights",
    "graph_laplacian",
    "conjugate_gradient",
    "propagation_on_grid",
    "text_aware_propagation",
]

# target side of the propagation grid: the maps are average-pooled by round(side / 80)
TLP_GRID = 80
TLP_ITERATIONS = 25  # conjugate-gradient steps
TLP_TEXT_TEMPERATURE = 0.5
TLP_DIAGONAL_BOOST = 10.0
TLP_EDGE_SHARPNESS = 5.0  # exp(-5 g) for a gray-level gradient g relative to its mean
TLP_MIN_CONFIDENCE = 0.05
TLP_EPS = 1e-6


def text_similarity(text_embeddings: torch.Tensor) -> torch.Tensor:
    """PEARL's class-similarity matrix S: row-softmax of cosines / 0.5, + 10 I, rows renormalised.

    text_embeddings: (K, E), re-normalised here -> (K, K).
    """
    units = F.normalize(text_embeddings, dim=-1)
    similarity = torch.softmax(units @ units.t() / TLP_TEXT_TEMPERATURE, dim=1)
    similarity = similarity + TLP_DIAGONAL_BOOST * torch.eye(
        len(similarity), dtype=similarity.dtype, device=similarity.device
    )
    return similarity / (similarity.sum(dim=1, keepdim=True) + TLP_EPS)


def propagation_stride(size: Tuple[int, int], grid: int = TLP_GRID) -> Tuple[int, int]:
    """Average-pooling stride per axis: round(side / grid) (Python's rounding), at least 1."""
    return tuple(int(max(1, round(side / float(grid)))) for side in size)


def class_agreement(
    first: torch.Tensor, second: torch.Tensor, self_similarity: torch.Tensor
) -> torch.Tensor:
    """sum_c first_c * S_cc * second_c over classes: (B, K, H, W) twice, (K,) -> (B, 1, H, W)."""
    return (first * (self_similarity[:, None, None] * second)).sum(dim=1, keepdim=True)


def edge_weights(
    gray: torch.Tensor, probabilities: torch.Tensor, self_similarity: torch.Tensor
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Weights of the horizontal (B, 1, H, W-1) and vertical (B, 1, H-1, W) neighbour edges:
    exp(-5 |gradient| / mean |gradient|) * (1 + agreement), clamped to [0, 1].
    gray: (B, 1, H, W), probabilities: (B, K, H, W), self_similarity: (K,)."""
    weights = []
    for axis in (3, 2):  # horizontal, then vertical
        length = gray.shape[axis]
        current = (gray.narrow(axis, 1, length - 1), probabilities.narrow(axis, 1, length - 1))
        previous = (gray.narrow(axis, 0, length - 1), probabilities.narrow(axis, 0, length - 1))
        gradient = (current[0] - previous[0]).abs()
        gradient = gradient / (gradient.mean(dim=(1, 2, 3), keepdim=True) + TLP_EPS)
        agreement = class_agreement(current[1], previous[1], self_similarity).clamp(0.0, 1.0)
        weights.append(
            (torch.exp(-TLP_EDGE_SHARPNESS * gradient) * (1.0 + agreement)).clamp(0.0, 1.0)
        )
    return weights[0], weights[1]


def graph_laplacian(
    maps: torch.Tensor, horizontal: torch.Tensor, vertical: torch.Tensor
) -> torch.Tensor:
    """L X: for every edge (i, j) of weight w, w (X_i - X_j) added at i and w (X_j - X_i) at j.

    maps: (B, K, H, W); horizontal: (B, 1, H, W-1); vertical: (B, 1, H-1, W) -> (B, K, H, W).
    """
    out = torch.zeros_like(maps)
    for axis, weights in ((3, horizontal), (2, vertical)):
        length = maps.shape[axis]
        flow = weights * (maps.narrow(axis, 1, length - 1) - maps.narrow(axis, 0, length - 1))
        out.narrow(axis, 1, length - 1).add_(flow)
        out.narrow(axis, 0, length - 1).sub_(flow)
    return out


def conjugate_gradient(
    apply, rhs: torch.Tensor, start: torch.Tensor, iterations: int
) -> torch.Tensor:
    """``iterations`` conjugate-gradient steps for apply(X) = rhs from ``start``, each image of the
    batch on its own (inner products over (K, H, W)). rhs, start: (B, K, H, W)."""

    def inner(a, b):
        return (a * b).sum(dim=(1, 2, 3), keepdim=True)

    solution = start.clone()
    residual = rhs - apply(solution)
    direction = residual.clone()
    residual_norm = inner(residual, residual)
    for _ in range(iterations):
        applied = apply(direction)
        step = residual_norm / (inner(direction, applied) + 1e-12)
        solution = solution + step * direction
        residual = residual - step * applied
        new_norm = inner(residual, residual)
        direction = residual + (new_norm / (residual_norm + 1e-12)) * direction
        residual_norm = new_norm
    return solution


def _gray(images: torch.Tensor) -> torch.Tensor:
    """0.299 R + 0.587 G + 0.114 B of (B, 3, H, W) -> (B, 1, H, W)."""
    return 0.299 * images[:, 0:1] + 0.587 * images[:, 1:2] + 0.114 * images[:, 2:3]


def propagation_on_grid(
    cosine: torch.Tensor,
    images: torch.Tensor,
    text_embeddings: torch.Tensor,
    grid: int = TLP_GRID,
    iterations: int = TLP_ITERATIONS,
) -> torch.Tensor:
    """TLP's solution on its coarse grid: (B, K, H, W), (B, 3, H, W) -> (B, K, H // s, W // s)
    for the stride s = ``propagation_stride``; the arguments as for ``text_aware_propagation``."""
    size = tuple(cosine.shape[-2:])
    if tuple(images.shape[-2:]) != size:
        raise ValueError(
            f"TLP needs the image at the maps' resolution {size}, got {tuple(images.shape[-2:])}"
        )
    stride = propagation_stride(size, grid)
    maps, images = cosine.float(), images.float()
    if stride != (1, 1):
        maps, images = F.avg_pool2d(maps, stride, stride), F.avg_pool2d(images, stride, stride)
    self_similarity = text_similarity(text_embeddings.float()).diagonal()  # (K,): only S_cc is used
    probabilities = torch.softmax(maps, dim=1)  # (B, K, h, w)
    agreement = class_agreement(probabilities, probabilities, self_similarity).clamp(0.0, 1.0)
    confidence = probabilities.max(dim=1, keepdim=True).values.clamp_min(TLP_MIN_CONFIDENCE) ** 2
    confidence = confidence * (1.0 + agreement)  # (B, 1, h, w)
    horizontal, vertical = edge_weights(_gray(images), probabilities, self_similarity)

    def apply(x):  # (C_w + L) x
        return confidence * x + graph_laplacian(x, horizontal, vertical)

    return conjugate_gradient(apply, confidence * maps, maps, iterations)


def text_aware_propagation(
    cosine: torch.Tensor,
    images: torch.Tensor,
    text_embeddings: torch.Tensor,
    grid: int = TLP_GRID,
    iterations: int = TLP_ITERATIONS,
) -> torch.Tensor:
    """TLP of cosine maps at the images' resolution (PEARL's TLP step).

    cosine: (B, K, H, W) cosine similarities (not scaled by a logit scale); images: (B, 3, H, W)
    the normalised RGB input; text_embeddings: (K, E). Returns (B, K, H, W), in cosine units.
    """
    solution = propagation_on_grid(cosine, images, text_embeddings, grid, iterations)
    if solution.shape[-2:] != cosine.shape[-2:]:
        solution = F.interpolate(
            solution, size=cosine.shape[-2:], mode="bilinear", align_corners=False
        )
    return solution.to(cosine.dtype)
