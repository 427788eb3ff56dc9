"""Unit tests of the refinement steps (docs/method.md sections 6-8) on small hand-made tensors."""

import numpy as np
import pytest
import torch

from cliptrase_d2.method.refinement import (
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


def test_dense_logits_layout():
    patches = torch.eye(4)[None]  # (1, n=4, E=4): patch i is unit vector e_i
    text = torch.tensor([[1.0, 0, 0, 0], [0, 0, 0, 1.0]])  # (K=2, E)
    logits = dense_logits(patches, text, (2, 2), 100.0)
    assert logits.shape == (1, 2, 2, 2)
    assert logits[0, 0].tolist() == [[100, 0], [0, 0]]  # row-major: patch 0 is top-left
    assert logits[0, 1].tolist() == [[0, 0], [0, 100]]


def test_resize_is_bilinear_without_align_corners():
    logits = torch.tensor([[[[0.0, 1.0]]]])  # (1, 1, 1, 2)
    resized = resize_logits(logits, (1, 4))
    assert resized[0, 0, 0].tolist() == pytest.approx([0.0, 0.25, 0.75, 1.0])


def test_image_logit_weighting_scales_each_class_map():
    logits = torch.ones(1, 3, 2, 2)
    weighted = weight_by_image_logits(logits, torch.tensor([[1.0, 2.0, -3.0]]))
    assert weighted[0, :, 0, 0].tolist() == [1.0, 2.0, -3.0]


def test_background_merging():
    labels = torch.tensor([[0, 2], [3, 7]])
    assert merge_background_labels(labels, 2).tolist() == [[0, 2], [2, 2]]
    scores = torch.tensor([1.0, 5.0, 2.0, 9.0])[:, None, None]  # 2 classes, 2 background words
    merged = merge_background_scores(scores, 2)
    assert merged[:, 0, 0].tolist() == [1.0, 5.0, 9.0]
    assert merge_background_scores(scores[:2], 2).shape[0] == 2  # no background words: unchanged


def test_global_patch_suppression_subtracts_cls_row_and_clamps():
    correlation = torch.tensor([[1.0, 0.5, 0.2], [0.5, 1.0, 0.1], [0.2, 0.1, 1.0]])
    affinity = suppress_global_patch(correlation)
    torch.testing.assert_close(affinity, torch.tensor([[0.5, 0.0], [0.0, 0.8]]))


def test_dbscan_finds_two_groups_and_noise():
    rows = torch.tensor(
        [[0.0, 0.0], [0.1, 0.0], [0.0, 0.1], [5.0, 5.0], [5.1, 5.0], [5.0, 5.1], [20.0, 20.0]]
    )
    labels = cluster_patches(rows, eps=0.5, min_samples=3)
    assert labels.tolist() == [0, 0, 0, 1, 1, 1, -1]


def test_region_map_is_none_when_everything_is_noise():
    affinity = torch.rand(4, 4)
    assert region_map(affinity, np.full(4, -1), (2, 2), (8, 8)) is None


def test_region_map_assigns_every_pixel_including_noise_patches():
    # 2 x 2 grid; patches 0,1 form cluster 0, patch 2 cluster 1, patch 3 is noise.
    affinity = torch.tensor(
        [[1.0, 1.0, 0.0, 0.2], [1.0, 1.0, 0.0, 0.2], [0.0, 0.0, 1.0, 0.9], [0.2, 0.2, 0.9, 1.0]]
    )
    regions = region_map(affinity, np.array([0, 0, 1, -1]), (2, 2), (16, 16), median_size=1)
    assert regions.shape == (16, 16)
    assert set(regions.unique().tolist()) == {0, 1}
    assert (
        regions[0, 0] == 0 and regions[-1, -1] == 1
    )  # the noise patch joins the region it resembles


def test_median_filter_removes_isolated_pixels():
    # Cluster 1 wins on a single patch in the middle of a 5 x 5 grid: after x4 upsampling it is a
    # small blob, which a large median filter erases and no filter keeps.
    n = 25
    affinity = torch.zeros(n, n)
    affinity[:, :] = torch.tensor([1.0 if j != 12 else 0.0 for j in range(n)])
    affinity[12] = torch.tensor([0.0 if j != 12 else 1.0 for j in range(n)])
    ids = np.array([0] * 12 + [1] + [0] * 12)
    kept = region_map(affinity, ids, (5, 5), (20, 20), median_size=1)
    filtered = region_map(affinity, ids, (5, 5), (20, 20), median_size=11)
    assert (kept == 1).any() and not (filtered == 1).any()


def test_vote_takes_majority_with_smallest_label_on_ties():
    regions = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 1]])
    labels = torch.tensor([[3, 3, 2, 1], [3, 1, 1, 2]])
    assert vote_refine(labels, regions, 4).tolist() == [[3, 3, 1, 1], [3, 3, 1, 1]]


def test_region_means_expanded_replace_scores_by_region_means():
    regions = torch.tensor([[0, 1]])
    scores = torch.tensor([[[1.0, 5.0]], [[3.0, 7.0]]])  # (K=2, 1, 2)
    refined = expand_regions(region_means(scores, regions), regions)
    assert refined.tolist() == scores.tolist()  # one pixel per region: unchanged
    regions = torch.tensor([[0, 0]])
    refined = expand_regions(region_means(scores, regions), regions)
    assert refined[:, 0, 0].tolist() == [3.0, 5.0] and refined[:, 0, 1].tolist() == [3.0, 5.0]
