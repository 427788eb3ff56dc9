"""The standard protocol after its sliding windows, in the peer methods' order: the window
average of every text row resized to the output size, refined by PAMR or TLP, then the maximum
over each class's names, or the peers' thresholds on the class probabilities.

Rows are text rows (a class's names, then background words); ``row_classes`` gives each row's
output class (C for the background words, see thresholds.py). Under "vote" the windows already
voted with their output classes: the average only needs resizing.
"""

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from .pamr import pamr
from .propagation import text_aware_propagation
from .refinement import resized_argmax, resize_maps
from .thresholds import label_order, merge_names, threshold_scores

__all__ = ["StandardSteps", "class_scores", "class_labels"]


@dataclass(frozen=True)
class StandardSteps:
    """What follows the window average: PAMR (``pamr_steps`` > 0), TLP (``tlp_grid`` > 0, on
    the cosine maps), the peers' probability and area thresholds (> 0), or none of them."""

    pamr_steps: int = 0
    pamr_dilations: Tuple[int, ...] = (8, 16)
    tlp_grid: int = 0
    prob_thd: float = 0.0
    area_thd: float = 0.0

    @property
    def labels_from_rows(self) -> bool:
        """Whether the labels are the resized rows' argmax (``class_labels``): no refinement,
        no thresholds."""
        return self.pamr_steps == 0 and self.tlp_grid == 0 and self.prob_thd == self.area_thd == 0


def class_scores(
    average: torch.Tensor,
    frame: torch.Tensor,
    size: Tuple[int, int],
    row_classes: Sequence[int],
    num_classes: int,
    steps: StandardSteps,
    text: Optional[torch.Tensor] = None,
    logit_scale: float = 1.0,
    vote: bool = False,
) -> torch.Tensor:
    """(R, h, w) window average over ``frame`` (3, h, w), the normalized frame the windows saw
    -> (K, *size) class scores. ``text``: the rows' (R, E) embeddings, for TLP; ``vote``: the
    average holds the windows' votes over the output classes."""
    rows = resize_maps(average, size)  # (R, *size)
    if vote:
        return rows
    if steps.pamr_steps > 0 or steps.tlp_grid:
        guide = F.interpolate(frame[None], size=tuple(size), mode="bilinear", align_corners=False)
    if steps.pamr_steps > 0:
        rows = pamr(guide, rows[None], steps.pamr_steps, steps.pamr_dilations)[0]
    if steps.tlp_grid:  # TLP propagates cosine maps
        cosine = rows[None] / logit_scale
        rows = logit_scale * text_aware_propagation(cosine, guide, text, steps.tlp_grid)[0]
    if steps.prob_thd > 0 or steps.area_thd > 0:
        return threshold_scores(rows, row_classes, num_classes, steps.prob_thd, steps.area_thd)
    return merge_names(rows, row_classes, num_classes)


def class_labels(
    average: torch.Tensor,
    size: Tuple[int, int],
    row_classes: Sequence[int],
    num_classes: int,
    vote: bool = False,
) -> torch.Tensor:
    """``class_scores(...).argmax(0)`` without the (K, *size) scores (``resized_argmax``), for
    ``StandardSteps.labels_from_rows``: the rows taken background first, so that ties go where
    ``merge_names`` sends them. (R, h, w) -> (*size) int64."""
    if vote:
        return resized_argmax(average, size)
    classes = torch.as_tensor(row_classes, device=average.device)
    if row_classes[-1] < num_classes:  # no background words: class order
        return classes[resized_argmax(average, size)]
    order = label_order(row_classes, num_classes).to(average.device)
    return classes[order][resized_argmax(average[order], size)]
