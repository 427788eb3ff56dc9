"""From per-name scores to class scores, as the peer methods' segmentors do (SCLIP, NACLIP,
ClearCLIP ``postprocess_result``): the maximum over a class's names, then optionally their
probability threshold (``prob_thd``) and SCLIP's area threshold (``area_thd``).

Rows are text rows (a class's names, then background words); ``row_classes`` gives each row's
output class, C for the background words. The peers' background is their class 0, so it wins
exact ties; here it is the last channel, and the functions below keep the peers' tie rule.
"""

from typing import Sequence

import torch

__all__ = [
    "check_threshold",
    "merge_names",
    "label_order",
    "class_probabilities",
    "area_threshold",
    "probability_threshold",
    "threshold_scores",
]


def check_threshold(value: float, what: str) -> float:
    """``value`` if it is a fraction in [0, 1]; otherwise a ValueError naming ``what``."""
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{what} must be a fraction in [0, 1] (0 = off), got {value}")
    return float(value)


def _class_max(rows: torch.Tensor, row_classes: Sequence[int], num_outputs: int) -> torch.Tensor:
    """(R, H, W) -> (num_outputs, H, W): per class the maximum over its rows."""
    first = {}
    for row, cls in enumerate(row_classes):
        first.setdefault(cls, row)
    if sorted(first) != list(range(num_outputs)):
        raise ValueError(f"row_classes {list(row_classes)} leave a class without rows")
    # a copy
    out = rows[torch.as_tensor([first[c] for c in range(num_outputs)], device=rows.device)]
    for row, cls in enumerate(row_classes):
        if row != first[cls]:
            torch.maximum(out[cls], rows[row], out=out[cls])
    return out


def _background_wins_ties(scores: torch.Tensor) -> torch.Tensor:
    """(C + 1, H, W) with background last: where the background equals the best class, it is
    raised by one unit in the last place, so ``argmax`` picks it as the peers' class 0 is picked."""
    best_class = scores[:-1].amax(dim=0)
    background = scores[-1]
    scores[-1] = torch.where(
        background == best_class,
        torch.nextafter(background, best_class.new_tensor(torch.inf)),
        background,
    )
    return scores


def merge_names(rows: torch.Tensor, row_classes: Sequence[int], num_classes: int) -> torch.Tensor:
    """Class scores: (R, H, W) per-name scores -> (C', H, W), each class the maximum over its
    names; C' = C, or C + 1 when rows of class C (background words) exist, and then the
    background wins exact ties (see module docstring). A new tensor, except with one row per
    class and no background words: then ``rows`` itself, sparing a copy of the
    full-resolution scores."""
    num_outputs = max(row_classes) + 1
    if num_outputs < num_classes:
        raise ValueError(f"row_classes name {num_outputs} classes, expected at least {num_classes}")
    if list(row_classes) == list(range(num_classes)):
        return rows  # one name per class, no background words: the rows are the class scores
    merged = _class_max(rows, row_classes, num_outputs)
    return _background_wins_ties(merged) if num_outputs > num_classes else merged


def label_order(row_classes: Sequence[int], num_classes: int) -> torch.Tensor:
    """Row indices with the background rows first: the first-index ``argmax`` over rows taken
    in this order, mapped back with ``row_classes``, is the argmax of ``merge_names`` (ties
    included)."""
    background = [i for i, c in enumerate(row_classes) if c >= num_classes]
    return torch.as_tensor(background + [i for i, c in enumerate(row_classes) if c < num_classes])


def class_probabilities(
    rows: torch.Tensor, row_classes: Sequence[int], num_classes: int
) -> torch.Tensor:
    """(R, H, W) scaled logits -> (C', H, W): softmax over all R names, then per class the maximum
    over its names' probabilities (the peers' query-to-class grouping)."""
    return merge_names(rows.float().softmax(dim=0), row_classes, num_classes)


def area_threshold(probabilities: torch.Tensor, area_thd: float) -> torch.Tensor:
    """SCLIP's ``area_thd``: a class other than the background (last channel) that is the argmax
    on at most ``area_thd`` times the pixels predicted as any non-background class gets
    probability 0 everywhere. (C + 1, H, W) -> (C + 1, H, W), new tensor."""
    labels = probabilities.argmax(dim=0)  # background already wins ties (merge_names)
    areas = torch.bincount(labels.flatten(), minlength=probabilities.shape[0])[:-1].to(
        probabilities.dtype
    )
    keep = (areas > area_thd * areas.sum()).to(probabilities.dtype)
    out = probabilities.clone()
    out[:-1] *= keep[:, None, None]
    return _background_wins_ties(out)


def probability_threshold(probabilities: torch.Tensor, prob_thd: float) -> torch.Tensor:
    """The peers' ``prob_thd``: pixels whose highest class probability is below ``prob_thd``
    become background. (C + 1, H, W) probabilities, background last -> scores whose argmax is
    that prediction: where thresholded, the background channel is set to 1 + the pixel's
    highest probability (so it wins strictly); elsewhere the probabilities are unchanged."""
    best = probabilities.amax(dim=0)
    out = probabilities.clone()
    out[-1] = torch.where(best < prob_thd, best + 1.0, probabilities[-1])
    return out


def threshold_scores(
    rows: torch.Tensor,
    row_classes: Sequence[int],
    num_classes: int,
    prob_thd: float = 0.0,
    area_thd: float = 0.0,
) -> torch.Tensor:
    """The peers' post-processing of per-name scaled logits (R, H, W) -> (C + 1, H, W) scores:
    class probabilities, then ``area_thd`` (if > 0), then ``prob_thd`` (if > 0). Needs a
    background class (rows with class ``num_classes``): thresholded pixels become background."""
    if max(row_classes) < num_classes:
        raise ValueError(
            "a probability or area threshold turns pixels into background, and this "
            "vocabulary has no background words: add background words or set the thresholds to 0"
        )
    probabilities = class_probabilities(rows, row_classes, num_classes)
    if area_thd > 0:
        probabilities = area_threshold(probabilities, area_thd)
    if prob_thd > 0:
        probabilities = probability_threshold(probabilities, prob_thd)
    return probabilities
