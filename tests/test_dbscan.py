"""The torch DBSCAN gives scikit-learn's labels, and the batched refinement steps give, image by
image, what they give one image at a time (scikit-learn and scipy only as references here)."""

import json
import os

import numpy as np
import pytest
import torch
from sklearn.cluster import DBSCAN

from conftest import FIXTURES, require_fixtures
from cliptrase_d2.method import refinement
from cliptrase_d2.method.refinement import (
    cluster_patches,
    expand_regions,
    region_map,
    region_means,
    vote_refine,
)


def sklearn_labels(rows: torch.Tensor, eps: float, min_samples: int) -> np.ndarray:
    return DBSCAN(eps=eps, min_samples=min_samples).fit(rows.numpy()).labels_


def test_every_fixture_case_equals_the_authors_dbscan():
    require_fixtures()
    with open(os.path.join(FIXTURES, "cases", "manifest.json")) as f:
        manifest = json.load(f)
    checked = 0
    for run in manifest["runs"]:
        arrays = [np.load(os.path.join(FIXTURES, "cases", case["file"])) for case in run["cases"]]
        affinity = torch.stack([torch.from_numpy(a["affinity"]) for a in arrays])  # (4, n, n)
        labels = cluster_patches(
            affinity, run["eps"], run["min_samples"]
        )  # the whole run as one batch
        for a, image_labels in zip(arrays, labels):
            np.testing.assert_array_equal(image_labels.numpy(), a["dbscan"])
            np.testing.assert_array_equal(
                image_labels.numpy(),
                sklearn_labels(torch.from_numpy(a["affinity"]), run["eps"], run["min_samples"]),
            )
            checked += 1
    assert checked == sum(len(run["cases"]) for run in manifest["runs"]) >= 40


@pytest.mark.parametrize("seed", range(12))
def test_random_points_with_ties_and_duplicates(seed):
    """Integer coordinates make distances exactly eps (ties) and exact duplicates common; borders
    reachable from two clusters, chains and isolated points all occur."""
    generator = torch.Generator().manual_seed(seed)
    n = [5, 40, 300][seed % 3]
    dims = [2, 3, 20][seed % 3]
    rows = torch.randint(0, [4, 6, 3][seed % 3], (n, dims), generator=generator).float()
    rows[n // 2 :] = rows[: n - n // 2][
        torch.randperm(n - n // 2, generator=generator)
    ]  # duplicates
    for eps in (0.5, 1.0, 2.0, 3.0):
        for min_samples in (1, 2, 3, 5, 9):
            expected = sklearn_labels(rows, eps, min_samples)
            np.testing.assert_array_equal(
                cluster_patches(rows, eps, min_samples).numpy(),
                expected,
                err_msg=f"eps={eps} min_samples={min_samples}",
            )


def test_borders_join_the_first_cluster_and_the_noise_stays_out():
    # Two groups 2 apart and a point exactly 1 from a core point of each (3 neighbours with
    # itself, fewer than 4: not core): a border of both clusters, taken by the first-numbered one.
    left = torch.tensor([[3.0, 0], [3.0, 0.1], [3.0, -0.1], [2.9, 0]])
    right = left * torch.tensor([-1.0, 1.0]) + torch.tensor([8.0, 0])  # mirrored around x = 4
    rows = torch.cat([torch.tensor([[4.0, 0]]), right, torch.tensor([[9.0, 9.0]]), left])
    labels = cluster_patches(rows, eps=1.0, min_samples=4)
    assert labels.tolist() == [0, 0, 0, 0, 0, -1, 1, 1, 1, 1]
    np.testing.assert_array_equal(labels.numpy(), sklearn_labels(rows, 1.0, 4))
    swapped = torch.cat(
        [rows[:1], rows[6:], rows[5:6], rows[1:5]]
    )  # left group first: it takes the border
    assert cluster_patches(swapped, eps=1.0, min_samples=4).tolist() == [
        0,
        0,
        0,
        0,
        0,
        -1,
        1,
        1,
        1,
        1,
    ]
    assert (
        cluster_patches(rows, eps=1.0, min_samples=3).tolist() == [0] * 5 + [-1] + [0] * 4
    )  # now core: one cluster


def test_all_noise_one_cluster_and_long_chains():
    line = torch.arange(64, dtype=torch.float32)[:, None]  # a chain: 63 links between neighbours
    shuffled = line[torch.randperm(64, generator=torch.Generator().manual_seed(3))]
    for rows in (line, line.flip(0), shuffled):
        assert cluster_patches(rows, 1.0, 2).tolist() == [0] * 64  # one cluster
        assert cluster_patches(rows, 0.5, 2).tolist() == [-1] * 64  # all noise
        assert (
            cluster_patches(rows, 0.5, 1).tolist() == sklearn_labels(rows, 0.5, 1).tolist()
        )  # n clusters


def test_large_random_problems_in_one_batch():
    """n up to 4096 points, and a batch whose images have different cluster counts."""
    generator = torch.Generator().manual_seed(7)
    centres = torch.randn(12, 8, generator=generator) * 4
    rows = centres[torch.randint(0, 12, (4096,), generator=generator)] + 0.3 * torch.randn(
        4096, 8, generator=generator
    )
    np.testing.assert_array_equal(
        cluster_patches(rows, 0.9, 6).numpy(), sklearn_labels(rows, 0.9, 6)
    )
    batch = torch.stack([rows[:500], rows[500:1000] * 3, rows[1000:1500] * 100])
    labels = cluster_patches(batch, 0.9, 6)
    assert labels.shape == (3, 500) and labels[2].tolist() == [-1] * 500
    for image, image_labels in zip(batch, labels):
        np.testing.assert_array_equal(image_labels.numpy(), sklearn_labels(image, 0.9, 6))


def test_affinity_rows_of_a_clip_like_size():
    """(n, n) rows as the method feeds them: 196 patches, non-negative, clustered."""
    generator = torch.Generator().manual_seed(11)
    groups = torch.randint(0, 5, (196,), generator=generator)
    affinity = torch.rand(5, 196, generator=generator)[groups] + 0.05 * torch.rand(
        196, 196, generator=generator
    )
    for eps, min_samples in ((0.3, 3), (0.5, 7), (0.05, 3)):
        np.testing.assert_array_equal(
            cluster_patches(affinity, eps, min_samples).numpy(),
            sklearn_labels(affinity, eps, min_samples),
        )


# ---- batched region steps equal the one-image steps ---------------------------------------------


def test_batched_region_map_vote_and_means_equal_one_image_at_a_time():
    generator = torch.Generator().manual_seed(5)
    grid, size = (6, 5), (37, 29)
    affinity = torch.rand(3, 30, 30, generator=generator)
    ids = torch.stack(
        [
            torch.randint(-1, 4, (30,), generator=generator),
            torch.randint(-1, 2, (30,), generator=generator),
            torch.full((30,), -1),
        ]
    )  # 4 clusters, 2 clusters, all noise
    ids[0, :4] = torch.arange(4)
    ids[1, :2] = torch.arange(2)
    regions = region_map(affinity, ids, grid, size, median_size=3, upsample=2)
    assert regions.shape == (3, *size) and regions[2].tolist() == [[-1] * size[1]] * size[0]
    assert region_map(affinity[2], ids[2], grid, size) is None
    for index in range(2):
        single = region_map(
            affinity[index], ids[index].numpy(), grid, size, median_size=3, upsample=2
        )
        assert torch.equal(regions[index], single)
    assert set(regions[1].unique().tolist()) <= {0, 1}  # the second image's empty maps never win

    labels = torch.randint(0, 6, (3, *size), generator=generator)
    voted = vote_refine(labels, regions, 6)
    for index in range(2):
        assert torch.equal(voted[index], vote_refine(labels[index], regions[index], 6))
    assert torch.equal(voted[2], labels[2])  # no regions: unchanged

    scores = torch.randn(3, 6, *size, generator=generator)
    means = region_means(scores[:2], regions[:2])  # (2, 6, 4): the second image's last two are zero
    assert means.shape == (2, 6, 4) and means[1, :, 2:].abs().sum() == 0
    refined = expand_regions(means, regions[:2])
    for index in range(2):
        alone = region_means(scores[index], regions[index])
        assert torch.equal(refined[index], expand_regions(alone, regions[index]))
        expected = torch.stack(
            [
                scores[index][:, regions[index] == r].mean(dim=1)
                for r in range(4)
                if (regions[index] == r).any()
            ],
            dim=1,
        )
        present = [r for r in range(4) if (regions[index] == r).any()]
        torch.testing.assert_close(means[index][:, present], expected, rtol=1e-6, atol=1e-6)


def _pair_at_threshold(generator, dims: int, offset: float):
    """Two float32 rows (the method's kind: 0..1) and an eps whose square lies ``offset``
    (relative) from their squared distance |a|^2 + |b|^2 - 2 a.b in float64: far beyond
    float64's rounding, far inside a float32 product's error. Returns (rows, eps, whether the
    float64 rule makes them neighbours)."""
    rows = torch.rand(2, dims, generator=generator)
    wide = rows.double()
    squared = float((wide[0] * wide[0]).sum() + (wide[1] * wide[1]).sum() - 2 * wide[0] @ wide[1])
    eps = (squared * (1 + offset)) ** 0.5
    return rows, eps, squared <= eps * eps


def test_distances_at_eps_are_decided_in_float64():
    """Within a float32 product's error of eps the neighbourhood is decided by the float64
    distance, as before the float32 products (the rule the fixture cases and scikit-learn's
    labels above hold it to); a float32 distance alone decides some of these pairs the other
    way, so the float64 recheck is what this test sees. (Not scikit-learn itself at this scale:
    its float32 path returns float32-rounded distances, 1e-7 from float64's.)"""
    generator = torch.Generator().manual_seed(5)
    wrong_in_float32 = 0
    for trial in range(60):
        rows, eps, neighbours = _pair_at_threshold(generator, 441, 1e-9 if trial % 2 else -1e-9)
        assert neighbours == bool(trial % 2)
        expected = [0, 0] if neighbours else [-1, -1]
        assert cluster_patches(rows, eps, 2).tolist() == expected
        squares = (rows.double() ** 2).sum(dim=-1)
        float32_distance = float(squares.sum() - 2 * (rows[0] @ rows[1]).double())
        wrong_in_float32 += (float32_distance <= eps * eps) != neighbours
    assert wrong_in_float32 > 0


def test_reduced_precision_matrix_products_keep_the_labels():
    """With TF32/bfloat16 float32 products allowed, every product is computed in float64."""
    generator = torch.Generator().manual_seed(6)
    saved = torch.get_float32_matmul_precision()
    assert refinement._full_float32_products(torch.device("cpu")) == (saved == "highest")
    try:
        torch.set_float32_matmul_precision("medium")
        assert not refinement._full_float32_products(torch.device("cpu"))
        for trial in range(20):
            rows, eps, neighbours = _pair_at_threshold(generator, 441, 1e-9 if trial % 2 else -1e-9)
            assert cluster_patches(rows, eps, 2).tolist() == ([0, 0] if neighbours else [-1, -1])
    finally:
        torch.set_float32_matmul_precision(saved)


def test_many_distances_at_eps_fall_back_to_float64_products():
    """Rows of two ones in disjoint places: every distance is exactly 2 = eps, far more than an
    eighth of them within the float32 bound of eps (every product is recomputed in float64)."""
    rows = torch.zeros(40, 80)
    rows[torch.arange(40), 2 * torch.arange(40)] = 1.0
    rows[torch.arange(40), 2 * torch.arange(40) + 1] = 1.0
    for eps, min_samples, expected in ((2.0, 5, [0] * 40), (2.0, 41, [-1] * 40)):
        labels = cluster_patches(rows, eps, min_samples)
        assert labels.tolist() == expected
        np.testing.assert_array_equal(labels.numpy(), sklearn_labels(rows, eps, min_samples))
