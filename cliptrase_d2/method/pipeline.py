"""CLIPtrase inference on batches of prepared images, free of Detectron2.

``predict_scores`` is the whole method for images already at the resolution they are
evaluated at (paper protocol); ``sliding_window`` in sliding.py wraps it for the standard one.
"""
from dataclasses import dataclass
import torch
from torch import nn

from .heads import Head
from .refinement import (REFINEMENTS, cluster_patches, dense_logits, mean_refine, merge_background_labels,
                         merge_background_scores, region_map, resize_logits, suppress_global_patch,
                         vote_refine, weight_by_image_logits)

__all__ = ["RefinementSettings", "predict_scores"]


@dataclass(frozen=True)
class RefinementSettings:
    """How dense logits become a prediction (SPEC sections 6-8)."""

    refine: str = "vote"  # "vote", "mean" or "none"
    dbscan_eps: float = 0.7
    dbscan_min_samples: int = 3
    region_upsample: int = 4
    median_size: int = 7
    image_logit_weighting: bool = False  # VOC20: class maps times the image-level logits

    def __post_init__(self):
        if self.refine not in REFINEMENTS:
            raise ValueError(f"unknown refinement {self.refine!r} (MODEL.CLIPTRASE.REFINE); "
                             f"choose one of {', '.join(REFINEMENTS)}")
        if self.dbscan_eps <= 0 or self.dbscan_min_samples < 1:
            raise ValueError(f"DBSCAN needs eps > 0 and min_samples >= 1, got eps={self.dbscan_eps}, "
                             f"min_samples={self.dbscan_min_samples} (MODEL.CLIPTRASE.DBSCAN_EPS/_MIN_SAMPLES)")


def _one_hot(labels: torch.Tensor, num_labels: int) -> torch.Tensor:
    """(H, W) labels -> (num_labels, H, W) float scores whose argmax is ``labels``."""
    scores = torch.zeros(num_labels, *labels.shape, device=labels.device)
    return scores.scatter_(0, labels[None], 1.0)


@torch.no_grad()
def predict_scores(visual: nn.Module, head: Head, text_embeddings: torch.Tensor, num_classes: int,
                   images: torch.Tensor, settings: RefinementSettings, logit_scale: float) -> torch.Tensor:
    """Scores over the output classes for every pixel of each image.

    images: (B, 3, H, W) normalized; text_embeddings: (C + B_bg, E) classes then background
    words; num_classes: C. Returns (B, C', H, W) float32 with C' = C (+1 with background words):
    one-hot of the voted labels for ``vote``, region-mean logits for ``mean``, raw logits for
    ``none`` (background channel = max over background words). ``logit_scale`` multiplies the
    cosine similarities (see ``heads.resolve_logit_scale``).
    """
    features = head.features(visual, images)
    scale = logit_scale
    text = text_embeddings.to(features.tokens)
    logits = dense_logits(features.patch_tokens, text, features.grid, scale).float()
    logits = resize_logits(logits, tuple(images.shape[-2:]))  # (B, K, H, W)
    if settings.image_logit_weighting:
        logits = weight_by_image_logits(logits, (scale * features.cls_tokens @ text.t()).float())
    has_background = text.shape[0] > num_classes
    num_outputs = num_classes + (1 if has_background else 0)
    outputs = []
    for image_logits, correlation in zip(logits, features.correlation):
        regions = None
        if settings.refine != "none":
            affinity = suppress_global_patch(correlation.float())
            cluster_ids = cluster_patches(affinity, settings.dbscan_eps, settings.dbscan_min_samples)
            regions = region_map(affinity, cluster_ids, features.grid, tuple(images.shape[-2:]),
                                 settings.median_size, settings.region_upsample)
        if settings.refine == "vote":
            labels = merge_background_labels(image_logits.argmax(dim=0), num_classes)
            if regions is not None:
                labels = merge_background_labels(vote_refine(labels, regions, num_outputs), num_classes)
            outputs.append(_one_hot(labels, num_outputs))
        else:
            if regions is not None:
                image_logits = mean_refine(image_logits, regions)
            outputs.append(merge_background_scores(image_logits, num_classes))
    return torch.stack(outputs)
