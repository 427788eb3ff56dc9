"""CLIPtrase inference on batches of prepared images, free of Detectron2.

``predict`` is the whole method for images already at the resolution they are
evaluated at (paper protocol); ``sliding_windows`` in sliding.py wraps it for the standard one.
``predict_within_memory`` runs a batch in parts when the device runs out of memory.
"""

from dataclasses import dataclass
import logging
from typing import Callable, List, NamedTuple, Tuple

import torch
from torch import nn

from .heads import Head
from .propagation import TLP_GRID, text_aware_propagation
from .refinement import (
    REFINEMENTS,
    channel_argmax,
    cluster_patches,
    dense_logits,
    expand_regions,
    merge_background_labels,
    merge_background_scores,
    region_map,
    region_means,
    resize_logits,
    suppress_global_patch,
    vote_refine,
    weight_by_image_logits,
)

__all__ = [
    "RefinementSettings",
    "Prediction",
    "dbscan_for_grid",
    "predict",
    "predict_within_memory",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RefinementSettings:
    """How dense logits become a prediction: clustering, region refinement or propagation."""

    refine: str = "vote"  # "vote", "mean", "none" or "tlp"
    dbscan_eps: float = 0.7
    dbscan_min_samples: int = 3
    region_upsample: int = 4
    median_size: int = 7
    image_logit_weighting: bool = False  # VOC20: class maps times the image-level logits
    tlp_grid: int = TLP_GRID  # "tlp": target side of the propagation grid

    def __post_init__(self):
        if self.refine not in REFINEMENTS:
            raise ValueError(
                f"unknown refinement {self.refine!r} (refine); choose one of "
                f"{', '.join(REFINEMENTS)}"
            )
        if self.region_upsample < 1 or self.median_size < 1:
            raise ValueError(
                f"region maps need an upsampling factor and a median size of at least 1, got "
                f"region_upsample={self.region_upsample}, median_size={self.median_size}"
            )
        if self.tlp_grid < 1:
            raise ValueError(f"TLP needs a grid side of at least 1, got tlp_grid={self.tlp_grid}")
        if self.dbscan_eps <= 0 or self.dbscan_min_samples < 1:
            raise ValueError(
                f"DBSCAN needs eps > 0 and min_samples >= 1, got dbscan_eps={self.dbscan_eps}, "
                f"dbscan_min_samples={self.dbscan_min_samples}"
            )


def dbscan_for_grid(grid_side: int) -> Tuple[float, int]:
    """DBSCAN (eps, min_samples) for a g x g patch grid, linear in g through the paper's two
    settings: g = 14 (ViT-B/16 at 224) -> (0.7, 3) and g = 21 (at 336) -> (1.1, 7)."""
    eps = 0.7 + 0.4 * (grid_side - 14) / 7
    min_samples = round(3 + 4 * (grid_side - 14) / 7)
    return max(round(eps, 4), 0.1), max(min_samples, 2)


class Prediction(NamedTuple):
    # (B, H, W) int64 output class per pixel (background merged to C)
    labels: torch.Tensor
    # (B, C', H, W) float32 soft scores: region-mean logits ("vote", "mean") or raw
    scores: torch.Tensor


@torch.no_grad()
def predict(
    visual: nn.Module,
    head: Head,
    text_embeddings: torch.Tensor,
    num_classes: int,
    images: torch.Tensor,
    settings: RefinementSettings,
    logit_scale: float,
    soft_scores: bool = True,
) -> Prediction:
    """Labels and soft scores over the output classes for every pixel of each image.

    images: (B, 3, H, W) normalized; text_embeddings: (C + B_bg, E), classes then background
    words; num_classes: C; C' = C (+1 with background words, whose channel is the max over
    the background words). ``logit_scale`` multiplies the cosine similarities (see
    ``heads.resolve_logit_scale``). Labels follow ``settings.refine``; scores are the
    region-mean logits whenever clustering found regions (raw logits otherwise), so they stay
    soft under ``vote`` too. ``soft_scores=False``: under ``vote`` the scores are the one-hot
    of the labels instead (Detectron2's ``sem_seg``), and the region means are not computed.
    """
    features = head.features(visual, images)
    text = text_embeddings.to(features.tokens)
    logits = dense_logits(
        features.patch_tokens, text, features.grid, logit_scale
    ).float()  # (B, K, h, w)
    if settings.refine == "tlp":  # PEARL's propagation of the cosine maps at the image's resolution
        cosine = resize_logits(logits, tuple(images.shape[-2:])) / logit_scale
        # (B, K, H, W)
        logits = logit_scale * text_aware_propagation(cosine, images, text, settings.tlp_grid)
    num_outputs = num_classes + (1 if text.shape[0] > num_classes else 0)
    size = tuple(images.shape[-2:])
    regions = None  # (B, H, W) region ids, -1 for an image whose patches are all noise
    if settings.refine in ("vote", "mean"):
        affinity = suppress_global_patch(features.correlation.float())  # (B, n, n)
        # (B, n)
        cluster_ids = cluster_patches(affinity, settings.dbscan_eps, settings.dbscan_min_samples)
        regions = region_map(
            affinity,
            cluster_ids,
            features.grid,
            size,
            settings.median_size,
            settings.region_upsample,
        )
        # Images whose patches are all noise keep their raw scores (one host sync per batch).
        unrefined = (regions[:, 0, 0] < 0).nonzero().flatten().tolist()
        if len(unrefined) == len(images):
            regions = None
    scores = torch.empty(
        len(images),
        num_outputs,
        *size,
        dtype=logits.dtype,
        device=logits.device,
        memory_format=torch.channels_last,
    )
    # Without background words the logits have the output channels: they are resized straight
    # into the scores, and then overwritten by them (one buffer, not two).
    in_place = text.shape[0] == num_outputs
    logits = resize_logits(logits, size, out=scores if in_place else None)  # (B, K, H, W)
    if settings.image_logit_weighting:
        image_weights = (logit_scale * features.cls_tokens @ text.t()).float()  # (B, K)
        weight_by_image_logits(logits, image_weights, out=logits)
    # vote: from the raw prediction, before the scores may overwrite the logits
    if settings.refine == "vote":
        labels = merge_background_labels(channel_argmax(logits), num_classes)  # (B, H, W)
        if regions is not None:
            labels = vote_refine(labels, regions, num_outputs)
        if not soft_scores:
            # one-hot in place
            return Prediction(labels, scores.zero_().scatter_(1, labels[:, None], 1.0))
    if regions is None:
        if not in_place:
            scores.copy_(merge_background_scores(logits, num_classes))
        if settings.refine != "vote":
            labels = channel_argmax(scores)
        return Prediction(labels, scores)
    raw_scores = {
        index: merge_background_scores(logits[index], num_classes).clone() for index in unrefined
    }
    # Every pixel of a region has the region's mean vector: merge and argmax per region.
    means = region_means(logits, regions)[..., None]
    means = merge_background_scores(means, num_classes)[..., 0]  # (B, C', m)
    expand_regions(means, regions, out=scores)  # (B, C', H, W)
    if settings.refine != "vote":
        labels = means.argmax(dim=1).gather(1, regions.clamp(min=0).flatten(1)).view(regions.shape)
    for index, image_scores in raw_scores.items():
        scores[index] = image_scores
        if settings.refine != "vote":
            labels[index] = channel_argmax(image_scores)
    return Prediction(labels, scores)


def predict_within_memory(
    predict_batch: Callable[[torch.Tensor], Prediction], images: torch.Tensor, what: str = "image"
) -> Prediction:
    """``predict_batch(images)``; when the device runs out of memory, it is tried again (on CUDA
    after freeing the allocator's cached blocks), then the batch is split in halves, and halves
    of those as needed (each image's prediction does not depend on the others), with one
    warning for the batch naming the parts it ran as. One image that still does not fit raises
    an OutOfMemoryError that says what to change. Unlike Detectron2's ``retry_if_cuda_oom``, it
    never moves the inputs to the CPU: the model stays on the GPU, so that would only change the
    error into a device mismatch.
    """
    parts: List[int] = []
    prediction = _predict_in_parts(predict_batch, images, what, parts)
    if len(parts) > 1:
        logger.warning(
            "out of memory on a batch of %d %ss: ran it as %s",
            len(images),
            what,
            " + ".join(str(part) for part in parts),
        )
    return prediction


def _predict_in_parts(
    predict_batch: Callable[[torch.Tensor], Prediction],
    images: torch.Tensor,
    what: str,
    parts: List[int],
) -> Prediction:
    """``predict_within_memory`` without its warning; appends the size of each part that ran
    to ``parts``."""
    for _ in range(2 if images.is_cuda else 1):
        try:
            prediction = predict_batch(images)
            parts.append(len(images))
            return prediction
        except torch.cuda.OutOfMemoryError:
            pass  # freed below, outside the except block, which holds the failed frames' tensors
        if images.is_cuda:
            torch.cuda.empty_cache()
    if len(images) == 1:
        raise torch.cuda.OutOfMemoryError(
            f"{images.device.type.upper()} ran out of memory on one "
            f"{images.shape[-2]}x{images.shape[-1]} {what}"
            f"{' even with the cache emptied' if images.is_cuda else ''}. Use a smaller input "
            "(MODEL.CLIPTRASE.PAPER_SIZE, STANDARD_SHORT_SIDE), MODEL.CLIPTRASE.PRECISION fp16 on "
            "a GPU, "
            "or a device with more free memory"
        )
    half = (len(images) + 1) // 2
    first = _predict_in_parts(predict_batch, images[:half], what, parts)
    second = _predict_in_parts(predict_batch, images[half:], what, parts)
    return Prediction(
        torch.cat([first.labels, second.labels]), torch.cat([first.scores, second.scores])
    )
