"""The faster formulations compute exactly (bit for bit) what the obvious ones compute.

Each fast path in method/ names the plain formula it replaces; these tests hold them to it on
inputs chosen to break a near miss: ties, NaN, duplicated values, odd and even window sizes,
both memory layouts, batches of several images.
"""

import collections
import copy
import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

from cliptrase_d2.method import dense_clip
from cliptrase_d2.method.dense_clip import (
    block_qkv,
    correlative_attention,
    dense_features,
    multi_head_attention,
    resized_positional_embedding,
    residual_block,
    resize_positional_embedding,
)
from cliptrase_d2.method.heads import get_head
from cliptrase_d2.method.pipeline import RefinementSettings, predict
from cliptrase_d2.method.refinement import (
    channel_argmax,
    expand_regions,
    median_filter,
    median_network,
    region_means,
    resize_logits,
)
from cliptrase_d2.method.sliding import sliding_windows


def channels_last(maps: torch.Tensor) -> torch.Tensor:
    """The same (K, H, W) values stored as (H, W, K)."""
    return maps.permute(1, 2, 0).contiguous().permute(2, 0, 1)


# ---- median filter --------------------------------------------------------------------------


@pytest.mark.parametrize("size", [2, 3, 4, 5, 6, 7])
def test_median_filter_equals_scipy(size):
    generator = torch.Generator().manual_seed(size)
    smooth = F.interpolate(
        torch.rand(1, 3, 5, 6, generator=generator),
        size=(20, 23),
        mode="bilinear",
        align_corners=False,
    )[0]
    coarse = torch.randint(0, 4, (2, 9, 8), generator=generator).float()  # many equal values
    for maps in (
        smooth,
        coarse,
        torch.rand(1, 3, 2, generator=generator),
    ):  # map smaller than the window too
        expected = ndimage.median_filter(maps.numpy(), size=(1, size, size))
        assert np.array_equal(median_filter(maps, size).numpy(), expected)


@pytest.mark.parametrize("size", [2, 3, 4, 5, 6, 7])
def test_median_network_selects_the_median_of_every_zero_one_window(size):
    """0-1 principle: the column network sorts every column of zeros and ones, and the window
    network gives rank size * size // 2 for every window of sorted 0-1 columns (a column is
    determined by its number of zeros: all (size + 1) ** size windows), so both do on any
    input."""
    column_comparators, column_order, window_comparators, output = median_network(size)
    columns = np.array(list(itertools.product([0, 1], repeat=size)), dtype=bool).T  # (size, n)
    wires = list(columns)
    for low, high in column_comparators:
        wires[low], wires[high] = wires[low] & wires[high], wires[low] | wires[high]
    assert np.array_equal(np.stack([wires[w] for w in column_order]), np.sort(columns, axis=0))

    zeros = np.array(list(itertools.product(range(size + 1), repeat=size)))  # (n, size columns)
    wires = [zeros[:, column] <= rank for column in range(size) for rank in range(size)]
    for low, high, low_needed, high_needed in window_comparators:
        a, b = wires[low], wires[high]
        wires[low], wires[high] = a & b, a | b
    expected = zeros.sum(axis=1) <= size * size // 2  # the median is 1 unless enough zeros
    assert np.array_equal(wires[output], expected)


def test_median_filter_in_several_chunks(monkeypatch):
    from cliptrase_d2.method import refinement

    maps = torch.rand(5, 12, 10)
    expected = median_filter(maps, 7)
    monkeypatch.setattr(refinement, "MEDIAN_WINDOW_ELEMENTS", 12 * 10 * 49 * 2)  # 2 maps per chunk
    assert torch.equal(median_filter(maps, 7), expected)


# ---- argmax, region means --------------------------------------------------------------------


def test_channel_argmax_equals_argmax_with_ties_and_nan():
    scores = torch.randint(0, 3, (6, 7, 9)).float()  # many ties: the first channel must win
    scores[2, 0, 0] = float("nan")
    for maps in (scores, channels_last(scores), scores[:, 1:, 2:]):
        assert torch.equal(channel_argmax(maps), maps.argmax(dim=0))
    assert channel_argmax(scores)[0, 0] == 2  # NaN is the maximum, as for argmax
    single = torch.rand(1, 4, 4)
    assert torch.equal(channel_argmax(single), torch.zeros(4, 4, dtype=torch.long))


def test_region_means_and_expansion_equal_the_index_add_formula():
    scores = torch.randn(5, 16, 12)
    regions = torch.randint(0, 4, (16, 12))
    regions[regions == 2] = 1  # an empty region id in the middle
    flat = scores.reshape(5, -1)
    sums = torch.zeros(5, 4).index_add_(1, regions.flatten(), flat)
    counts = torch.bincount(regions.flatten(), minlength=4).clamp(min=1).float()
    expected = (sums / counts)[:, regions.flatten()].reshape(scores.shape)
    for layout in (scores, channels_last(scores)):
        assert torch.equal(expand_regions(region_means(layout, regions), regions), expected)
    means = region_means(scores, regions)
    out = channels_last(torch.empty_like(scores))
    assert expand_regions(means, regions, out=out) is out and torch.equal(out, expected)
    assert out.stride() == channels_last(scores).stride()  # written in its own layout


def test_resize_into_a_buffer_equals_resize():
    logits = torch.randn(1, 6, 5, 4).permute(0, 1, 2, 3)
    cl_logits = torch.randn(1, 5, 4, 6).permute(0, 3, 1, 2)  # dense_logits' layout
    for x in (logits, cl_logits):
        expected = F.interpolate(x, size=(20, 16), mode="bilinear", align_corners=False)
        out = torch.empty_like(expected)
        assert resize_logits(x, (20, 16), out=out) is out and torch.equal(out, expected)


# ---- attention ---------------------------------------------------------------------------------


def test_correlative_attention_is_the_authors_sum_of_three_attention_maps():
    q, k, v = (torch.randn(2 * 3, 50, 16) for _ in range(3))  # 2 images x 3 heads
    scale = 16**-0.5
    expected = []
    for index in range(6):  # each head alone, the L x L weights summed first as the authors do
        t3 = [t[index] for t in (q, k, v)]
        weights = sum(torch.softmax(torch.mm(t * scale, t.t()), dim=-1) for t in t3)
        expected.append(torch.mm(weights, v[index]))
    ours = correlative_attention(q, k, v)
    torch.testing.assert_close(ours, torch.stack(expected), rtol=1e-5, atol=1e-5)
    # batch composition does not change a bit: each image alone gives what the batch gives
    for image in range(2):
        heads = slice(3 * image, 3 * image + 3)
        assert torch.equal(correlative_attention(q[heads], k[heads], v[heads]), ours[heads])


@pytest.mark.parametrize("length", [1, 3, 5, 50, 197])
def test_symmetric_gram_is_the_product_with_its_transpose(length):
    """Every block above the diagonal computed, those below mirrored: rows @ rows^T within
    float32 rounding, exactly symmetric, for lengths that leave blocks empty or uneven."""
    rows = torch.randn(2, length, 40)
    gram = dense_clip.symmetric_gram(rows)
    torch.testing.assert_close(gram, torch.bmm(rows, rows.mT), rtol=1e-5, atol=1e-5)
    assert torch.equal(gram, gram.mT)
    expected = torch.bmm(rows.double(), rows.double().mT)
    assert (gram.double() - expected).abs().max() < 1e-4


def test_correlative_attention_in_chunks_of_heads_gives_the_same_bits(monkeypatch):
    """Chunks of 2 heads (the cache-sized chunks a CPU takes at 336) cut across the images'
    heads; every head keeps its bits, so a batch and each of its images agree exactly."""
    q, k, v = (torch.randn(2 * 3, 50, 16) for _ in range(3))
    whole = correlative_attention(q, k, v)  # one chunk
    monkeypatch.setattr(dense_clip, "CPU_MAP_ELEMENTS", 2 * 50 * 50)
    calls = []
    bmm = torch.bmm
    monkeypatch.setattr(torch, "bmm", lambda *a, **kw: calls.append(a[0].shape[0]) or bmm(*a, **kw))
    chunked = correlative_attention(q, k, v)
    assert calls == [2] * 12  # 3 chunks of 2 heads, 4 products each
    assert torch.equal(chunked, whole)
    assert torch.equal(correlative_attention(q[3:], k[3:], v[3:]), whole[3:])  # 2 + 1 heads


def test_shared_projections_give_the_block_its_own_attention(tiny_clip):
    block = tiny_clip.visual.transformer.resblocks[-2]
    x = torch.randn(9, 3, block.attn.embed_dim)
    with torch.no_grad():
        expected = residual_block(block, x)
        y = dense_clip.finish_block(block, x, multi_head_attention(block, *block_qkv(block, x)))
    assert torch.equal(y, expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_mlp_in_one_buffer_equals_the_module(tiny_clip, dtype):
    mlp = tiny_clip.visual.transformer.resblocks[-1].mlp
    assert isinstance(mlp.gelu, dense_clip.QuickGELU)  # OpenAI's activation, as the fixtures'
    mlp = copy.deepcopy(mlp).to(dtype)
    x = (torch.randn(37, 3, mlp.c_fc.in_features) * 4).to(dtype)
    with torch.no_grad():
        expected = mlp(x)
        assert torch.equal(dense_clip.run_mlp(mlp, x), expected)
    # with a gradient through it, the module's own out-of-place ops (in-place ones would break
    # the backward pass)
    x32 = x.float().requires_grad_()
    mlp32 = mlp.float()
    dense_clip.run_mlp(mlp32, x32).sum().backward()
    reference = x32.detach().clone().requires_grad_()
    mlp32(reference).sum().backward()
    assert torch.equal(x32.grad, reference.grad)
    gelu = torch.nn.Sequential(
        collections.OrderedDict(
            c_fc=torch.nn.Linear(8, 32), gelu=torch.nn.GELU(), c_proj=torch.nn.Linear(32, 8)
        )
    )
    y = torch.randn(5, 2, 8)
    with torch.no_grad():
        assert torch.equal(dense_clip.run_mlp(gelu, y), gelu(y))


def test_batch_of_images_equals_images_one_by_one(tiny_clip):
    visual = tiny_clip.visual
    images = torch.randn(3, 3, 48, 64)
    with torch.no_grad():
        batch = dense_features(visual, images)
        for index in range(3):
            single = dense_features(visual, images[index : index + 1])
            torch.testing.assert_close(batch.tokens[index], single.tokens[0], rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(
                batch.correlation[index], single.correlation[0], rtol=1e-5, atol=1e-6
            )


def test_positional_table_is_cached_until_the_weights_change(tiny_clip):
    visual = tiny_clip.visual
    grid = (5, 7)
    with torch.no_grad():
        first = resized_positional_embedding(visual, grid)
        assert resized_positional_embedding(visual, grid) is first
        assert torch.equal(first, resize_positional_embedding(visual.positional_embedding, grid))
        saved = visual.positional_embedding.clone()
        visual.positional_embedding.add_(1.0)  # what load_state_dict's copy_ does to the version
        try:
            changed = resized_positional_embedding(visual, grid)
            assert torch.equal(
                changed, resize_positional_embedding(visual.positional_embedding, grid)
            )
            assert not torch.equal(changed, first)
        finally:
            visual.positional_embedding.copy_(saved)
    # With gradients on, nothing is cached: the table must stay in the autograd graph.
    assert (
        resized_positional_embedding(visual, grid).requires_grad
        == visual.positional_embedding.requires_grad
    )


def test_positional_cache_sees_changes_through_data_and_works_in_inference_mode(tiny_clip):
    visual = tiny_clip.visual
    grid = (6, 4)
    saved = visual.positional_embedding.detach().clone()
    try:
        with torch.no_grad():
            first = resized_positional_embedding(visual, grid)
            visual.positional_embedding.data.mul_(2.0)  # bypasses the version counter
            changed = resized_positional_embedding(visual, grid)
            assert torch.equal(
                changed, resize_positional_embedding(visual.positional_embedding, grid)
            )
            assert not torch.equal(changed, first)
        with torch.inference_mode():
            visual.__dict__.pop("_cliptrase_positional_cache", None)
            table = torch.nn.Parameter(
                visual.positional_embedding.detach().clone()
            )  # an inference tensor
            original, visual.positional_embedding = visual.positional_embedding, table
            try:
                assert torch.equal(resized_positional_embedding(visual, grid), changed)
                assert resized_positional_embedding(visual, grid) is resized_positional_embedding(
                    visual, grid
                )
            finally:
                visual.positional_embedding = original
    finally:
        with torch.no_grad():
            visual.positional_embedding.copy_(saved)
        visual.__dict__.pop("_cliptrase_positional_cache", None)


# ---- the pipeline's outputs ------------------------------------------------------------------


@pytest.mark.parametrize("background", [0, 2])
def test_one_hot_scores_under_vote_are_the_labels(tiny_clip, background):
    visual = tiny_clip.visual
    head = get_head("cliptrase")
    text = F.normalize(torch.randn(4 + background, tiny_clip.text_projection.shape[1]), dim=-1)
    images = torch.randn(2, 3, 64, 64)
    settings = RefinementSettings(refine="vote", dbscan_eps=0.9, dbscan_min_samples=2)
    soft = predict(visual, head, text, 4, images, settings, 100.0)
    hard = predict(visual, head, text, 4, images, settings, 100.0, soft_scores=False)
    assert torch.equal(hard.labels, soft.labels)
    expected = F.one_hot(soft.labels, soft.scores.shape[1]).permute(0, 3, 1, 2).float()
    assert torch.equal(hard.scores, expected)
    assert torch.equal(
        predict(visual, head, text, 4, images, settings, 100.0, soft_scores=False).scores, expected
    )
    assert not torch.equal(soft.scores, expected)  # the soft scores are region-mean logits


def test_channels_last_window_sums_equal_planar_sums():
    image = torch.randn(3, 40, 56)
    weights = torch.randn(5, 3)

    def predict_windows(batch):  # (N, 3, h, w) -> (N, 5, h, w) in dense_logits' layout
        return torch.einsum("kc,nchw->nhwk", weights, batch).permute(0, 3, 1, 2)

    scores = next(sliding_windows([image], predict_windows, window=16, stride=8, batch_size=3))
    assert scores.permute(1, 2, 0).is_contiguous()  # channels-last, as documented
    total, counts = torch.zeros(5, 40, 56), torch.zeros(1, 40, 56)  # the plain planar sums
    for top in (0, 8, 16, 24):
        for left in (0, 8, 16, 24, 32, 40):
            total[:, top : top + 16, left : left + 16] += predict_windows(
                image[None, :, top : top + 16, left : left + 16]
            )[0]
            counts[:, top : top + 16, left : left + 16] += 1
    assert torch.equal(scores, total / counts)


@pytest.mark.parametrize("channels_last", [True, False])
@pytest.mark.parametrize(
    "num_maps, grid, size",
    [(23, (9, 13), (37, 50)), (59, (21, 28), (512, 683)), (171, (24, 32), (300, 400))],
)
def test_resized_argmax_in_channel_groups_equals_the_full_resize(
    channels_last, num_maps, grid, size
):
    """Labels from groups of resized channels equal the argmax of the whole resize, bit for bit:
    ties to the first channel, the first NaN wins, both layouts, remainders of 7 and 3 channels."""
    from cliptrase_d2.method.refinement import resize_maps, resized_argmax

    generator = torch.Generator().manual_seed(num_maps)
    maps = torch.randn(num_maps, *grid, generator=generator).round(
        decimals=1
    )  # rounding makes ties
    maps[5, 2, 3] = float("nan")
    maps[17, 2, 3] = float("nan")
    maps[11, 4, :] = float("nan")
    if channels_last:
        maps = maps.permute(1, 2, 0).contiguous().permute(2, 0, 1)
    resized = resize_maps(maps, size)
    expected = resized.argmax(dim=0)
    plane = size[0] * size[1] * 4
    for max_bytes in (
        1,
        plane * 16,
        plane * 20,
        1 << 34,
    ):  # groups of 8, 16, 16, everything at once
        labels = resized_argmax(maps, size, max_bytes)
        torch.testing.assert_close(labels, expected, rtol=0, atol=0)
    assert (expected == 5).any() and (expected == 11).any()
    # The groups' own numbers are the whole resize's (what makes the labels equal, ties included).
    group = maps[16:num_maps]
    group = (
        group.permute(1, 2, 0).contiguous().permute(2, 0, 1)
        if channels_last
        else group.contiguous()
    )
    assert torch.allclose(resize_maps(group, size), resized[16:], rtol=0, atol=0, equal_nan=True)
