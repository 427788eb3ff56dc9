"""The standard protocol after its windows (method/standard.py), on tensors alone."""

import pytest
import torch
import torch.nn.functional as F

from cliptrase_d2.method.pamr import pamr
from cliptrase_d2.method.refinement import resize_maps
from cliptrase_d2.method.standard import StandardSteps, class_labels, class_scores
from cliptrase_d2.method.thresholds import merge_names, threshold_scores

ROW_CLASSES = (0, 0, 1, 2, 2)  # class 0 has two names; two background words (class 2)


def _average(rows=5, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(rows, 12, 18, generator=generator) * 10


def test_scores_are_the_resized_rows_merged_by_class():
    average, frame = _average(), torch.zeros(3, 12, 18)
    scores = class_scores(average, frame, (24, 30), ROW_CLASSES, 2, StandardSteps())
    expected = merge_names(resize_maps(average, (24, 30)), ROW_CLASSES, 2)
    assert scores.shape == (3, 24, 30) and torch.equal(scores, expected)
    voted = class_scores(average[:3], frame, (24, 30), ROW_CLASSES, 2, StandardSteps(), vote=True)
    assert torch.equal(voted, resize_maps(average[:3], (24, 30)))  # votes are classes already


def test_thresholds_and_pamr_run_on_the_resized_rows_in_the_peers_order():
    average, frame = _average(), torch.rand(3, 12, 18)
    size = (24, 30)
    rows = resize_maps(average, size)
    thresholds = StandardSteps(prob_thd=0.5, area_thd=0.1)
    expected = threshold_scores(rows, ROW_CLASSES, 2, prob_thd=0.5, area_thd=0.1)
    assert torch.equal(class_scores(average, frame, size, ROW_CLASSES, 2, thresholds), expected)
    steps = StandardSteps(pamr_steps=2, pamr_dilations=(1, 2))
    guide = F.interpolate(frame[None], size=size, mode="bilinear", align_corners=False)
    refined = pamr(guide, rows[None], 2, (1, 2))[0]
    scores = class_scores(average, frame, size, ROW_CLASSES, 2, steps)
    assert torch.equal(scores, merge_names(refined, ROW_CLASSES, 2))
    assert not torch.equal(scores, merge_names(rows, ROW_CLASSES, 2))


@pytest.mark.parametrize("row_classes", [ROW_CLASSES, (0, 1, 2), (0, 0, 1)])
def test_labels_without_the_scores_are_their_argmax_ties_included(row_classes):
    """``class_labels`` is ``class_scores(...).argmax(0)``, also where the background ties the
    best class (the peers' background wins such ties)."""
    num_classes = 2
    average = _average(len(row_classes)).round()  # whole numbers: many exact ties
    average[-1, :, :6] = average[0, :, :6]  # background word = a class name
    size = (24, 30)
    scores = class_scores(average, None, size, row_classes, num_classes, StandardSteps())
    labels = class_labels(average, size, row_classes, num_classes)
    assert labels.shape == size and torch.equal(labels, scores.argmax(dim=0))
    assert labels.unique().numel() >= 2
    voted = class_labels(average[:3], size, row_classes, num_classes, vote=True)
    assert torch.equal(voted, resize_maps(average[:3], size).argmax(dim=0))


def test_which_steps_leave_the_labels_to_the_rows():
    assert StandardSteps().labels_from_rows
    for steps in (
        StandardSteps(pamr_steps=1),
        StandardSteps(tlp_grid=40),
        StandardSteps(prob_thd=0.1),
        StandardSteps(area_thd=0.1),
    ):
        assert not steps.labels_from_rows
