"""PAMR, pixel-adaptive mask refinement (Araslanov & Roth, CVPR 2020), as NACLIP's released
code applies it to dense logits: ``steps`` rounds of label propagation between each pixel and
its 8 neighbours at each dilation, weighted by how alike their colours are.

For each dilation d the neighbours of a pixel are the 8 pixels at offsets (+-d, +-d), (0, +-d),
(+-d, 0), with the image and the maps extended by replicating the border. The affinity of a
pixel to neighbour j is, per colour channel, -|x - x_j| / (1e-8 + 0.1 * s), where s is the
standard deviation (unbiased) of that channel over the pixel and all its neighbours (the pixel
counted once per dilation); the affinities are averaged over channels and turned into weights
by a softmax over all 8 x len(dilations) neighbours. Each step replaces every map value by the
weighted sum of its neighbours' values (the pixel itself not included).
"""

from typing import List, Sequence

import torch
import torch.nn.functional as F

__all__ = ["PAMR_STEPS", "PAMR_DILATIONS", "neighbour_shifts", "pamr_weights", "pamr"]

PAMR_STEPS = 10  # NACLIP's default
PAMR_DILATIONS = (8, 16)  # NACLIP's default

# (row, column) offsets of the 8 neighbours in units of the dilation, in the reference order.
_OFFSETS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))


def neighbour_shifts(
    maps: torch.Tensor, dilation: int, with_centre: bool = False
) -> List[torch.Tensor]:
    """The maps as seen from each neighbour at ``dilation``, border replicated: (B, K, H, W) ->
    8 (or 9 with the centre, in row-major order) tensors of (B, K, H, W); shift j at (y, x) is
    the value at (y + dy_j * d, x + dx_j * d), clamped to the image."""
    height, width = maps.shape[-2:]
    padded = F.pad(maps, [dilation] * 4, mode="replicate")
    offsets = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)] if with_centre else _OFFSETS
    return [
        padded[
            ...,
            dilation + dy * dilation : dilation + dy * dilation + height,
            dilation + dx * dilation : dilation + dx * dilation + width,
        ]
        for dy, dx in offsets
    ]


def pamr_weights(image: torch.Tensor, dilations: Sequence[int] = PAMR_DILATIONS) -> torch.Tensor:
    """Propagation weights (B, 1, 8 * len(dilations), H, W) from an image (B, 3, H, W): they sum
    to 1 over the neighbours of each pixel (see the module docstring)."""
    image = image.float()
    around = torch.stack(
        [s for d in dilations for s in neighbour_shifts(image, d, with_centre=True)], dim=2
    )
    spread = around.std(dim=2, keepdim=True)  # (B, 3, 1, H, W)
    difference = torch.stack(
        [(image - s).abs() for d in dilations for s in neighbour_shifts(image, d)], dim=2
    )
    affinity = (-difference / (1e-8 + 0.1 * spread)).mean(dim=1, keepdim=True)  # (B, 1, P, H, W)
    return affinity.softmax(dim=2)


def pamr(
    image: torch.Tensor,
    maps: torch.Tensor,
    steps: int = PAMR_STEPS,
    dilations: Sequence[int] = PAMR_DILATIONS,
) -> torch.Tensor:
    """Refines (B, K, H, W) maps (e.g. logits) with the colours of (B, 3, H, W) ``image`` (the
    normalized image at the maps' size): ``steps`` propagation rounds. Returns (B, K, H, W) float32.
    PAMR is linear in the maps: scaling the logits before or after gives the same result."""
    if image.shape[0] != maps.shape[0] or image.shape[-2:] != maps.shape[-2:]:
        raise ValueError(
            f"PAMR needs the image and the maps at one size, got {tuple(image.shape)} "
            f"and {tuple(maps.shape)}"
        )
    if steps < 0 or not dilations or min(dilations) < 1:
        raise ValueError(
            f"PAMR needs steps >= 0 and dilations >= 1, got steps={steps}, dilations={dilations}"
        )
    weights = pamr_weights(image, dilations)
    maps = maps.float()
    for _ in range(steps):  # sum over neighbours j of shift_j * weight_j, one neighbour at a time
        shifted = [s for d in dilations for s in neighbour_shifts(maps, d)]
        total = shifted[0] * weights[:, :, 0]
        for j in range(1, len(shifted)):
            total.addcmul_(shifted[j], weights[:, :, j])
        maps = total
    return maps
