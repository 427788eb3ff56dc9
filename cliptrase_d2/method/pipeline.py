"""CLIPtrase inference on batches of prepared images, free of Detectron2.

``predict_scores`` is the whole method for images already at the resolution they are
evaluated at (paper protocol); ``sliding_window`` in sliding.py wraps it for the standard one.
"""
from dataclasses import dataclass
from typing import NamedTuple
import torch
from torch import nn

from .heads import Head
from .refinement import (REFINEMENTS, cluster_patches, dense_logits, mean_refine, merge_background_labels,
                         merge_background_scores, region_map, resize_logits, suppress_global_patch,
                         vote_refine, weight_by_image_logits)

__all__ = ["RefinementSettings", "Prediction", "predict", "predict_scores", "one_hot"]


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


def one_hot(labels: torch.Tensor, num_labels: int) -> torch.Tensor:
    """(..., H, W) labels -> (..., num_labels, H, W) float scores whose argmax is ``labels``."""
    scores = torch.zeros(*labels.shape[:-2], num_labels, *labels.shape[-2:], device=labels.device)
    return scores.scatter_(-3, labels.unsqueeze(-3), 1.0)


class Prediction(NamedTuple):
    labels: torch.Tensor  # (B, H, W) int64 output class per pixel (background merged to C)
    scores: torch.Tensor  # (B, C', H, W) float32 soft scores: region-mean logits ("vote", "mean") or raw


@torch.no_grad()
def predict(visual: nn.Module, head: Head, text_embeddings: torch.Tensor, num_classes: int,
            images: torch.Tensor, settings: RefinementSettings, logit_scale: float) -> Prediction:
    """Labels and soft scores over the output classes for every pixel of each image.

    images: (B, 3, H, W) normalized; text_embeddings: (C + B_bg, E), classes then background
    words; num_classes: C; C' = C (+1 with background words, whose channel is the max over
    the background words). ``logit_scale`` multiplies the cosine similarities (see
    ``heads.resolve_logit_scale``). Labels follow ``settings.refine``; scores are the
    region-mean logits whenever clustering found regions (raw logits otherwise), so they stay
    soft under ``vote`` too.
    """
    features = head.features(visual, images)
    text = text_embeddings.to(features.tokens)
    logits = dense_logits(features.patch_tokens, text, features.grid, logit_scale).float()
    logits = resize_logits(logits, tuple(images.shape[-2:]))  # (B, K, H, W)
    if settings.image_logit_weighting:
        logits = weight_by_image_logits(logits, (logit_scale * features.cls_tokens @ text.t()).float())
    num_outputs = num_classes + (1 if text.shape[0] > num_classes else 0)
    all_labels, all_scores = [], []
    for image_logits, correlation in zip(logits, features.correlation):
        regions = None
        if settings.refine != "none":
            affinity = suppress_global_patch(correlation.float())
            cluster_ids = cluster_patches(affinity, settings.dbscan_eps, settings.dbscan_min_samples)
            regions = region_map(affinity, cluster_ids, features.grid, tuple(images.shape[-2:]),
                                 settings.median_size, settings.region_upsample)
        raw_labels = merge_background_labels(image_logits.argmax(dim=0), num_classes)
        if regions is not None:
            image_logits = mean_refine(image_logits, regions)
        scores = merge_background_scores(image_logits, num_classes)
        if settings.refine == "vote":
            labels = raw_labels if regions is None else vote_refine(raw_labels, regions, num_outputs)
        else:
            labels = scores.argmax(dim=0)
        all_labels.append(labels)
        all_scores.append(scores)
    return Prediction(torch.stack(all_labels), torch.stack(all_scores))


def predict_scores(visual: nn.Module, head: Head, text_embeddings: torch.Tensor, num_classes: int,
                   images: torch.Tensor, settings: RefinementSettings, logit_scale: float) -> torch.Tensor:
    """(B, C', H, W) scores whose argmax is the prediction: one-hot of the voted labels under
    ``vote``, the soft scores otherwise (Detectron2's ``sem_seg`` contract)."""
    prediction = predict(visual, head, text_embeddings, num_classes, images, settings, logit_scale)
    if settings.refine == "vote":
        return one_hot(prediction.labels, prediction.scores.shape[1])
    return prediction.scores
