"""The recalibrated blocks against direct (slow) transcriptions of docs/method.md sections 1-4."""

import pytest
import torch
import torch.nn.functional as F

from cliptrase_d2.method.dense_clip import (
    block_qkv,
    correlative_attention,
    correlative_block,
    embed_tokens,
    patch_grid,
    residual_block,
    resize_positional_embedding,
    self_correlation,
)


def test_positional_embedding_kept_at_native_grid():
    table = torch.randn(1 + 14 * 14, 8)
    assert resize_positional_embedding(table, (14, 14)) is table


def test_positional_embedding_uses_the_point_one_scale_factor():
    table = torch.randn(1 + 14 * 14, 8)
    resized = resize_positional_embedding(table, (21, 17))
    assert resized.shape == (1 + 21 * 17, 8)
    torch.testing.assert_close(resized[0], table[0])
    grid = table[1:].reshape(1, 14, 14, 8).permute(0, 3, 1, 2)
    expected = F.interpolate(grid, scale_factor=(21.1 / 14, 17.1 / 14), mode="bicubic")
    torch.testing.assert_close(
        resized[1:], expected.permute(0, 2, 3, 1).reshape(-1, 8), rtol=0, atol=0
    )
    plain = F.interpolate(grid, size=(21, 17), mode="bicubic").permute(0, 2, 3, 1).reshape(-1, 8)
    assert (
        resized[1:] - plain
    ).abs().max() > 1e-3  # a plain resize to 21 x 17 is NOT what the paper does


def test_self_correlation_matches_pairwise_cosines():
    images, heads, length, dim = 2, 3, 5, 4
    q, k, v = (torch.randn(images * heads, length, dim) for _ in range(3))  # image-major, then head
    ours = self_correlation(q, k, v, heads)
    assert ours.shape == (images, length, length)
    for image in range(images):
        expected = torch.zeros(length, length)
        for h in range(image * heads, (image + 1) * heads):
            for t in (q, k, v):
                expected += F.cosine_similarity(t[h][:, None], t[h][None], dim=-1) / 3 / heads
        torch.testing.assert_close(ours[image], expected, rtol=1e-5, atol=1e-6)


def test_correlative_attention_sums_three_softmaxes():
    q, k, v = (torch.randn(3, 6, 8) for _ in range(3))
    s = 8**-0.5
    weights = sum(torch.softmax(s * t @ t.transpose(1, 2), dim=-1) for t in (q, k, v))
    torch.testing.assert_close(weights.sum(-1), torch.full((3, 6), 3.0))
    torch.testing.assert_close(correlative_attention(q, k, v), weights @ v, rtol=1e-5, atol=1e-6)


def test_residual_block_equals_open_clip_block(tiny_clip):
    block = tiny_clip.visual.transformer.resblocks[0]
    x = torch.randn(7, 2, block.attn.embed_dim)  # (L, B, C)
    with torch.no_grad():
        ours = residual_block(block, x)
        theirs = block(x.transpose(0, 1)).transpose(0, 1)  # open_clip blocks are batch-first
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)


def test_correlative_block_keeps_residual_and_mlp(tiny_clip):
    block = tiny_clip.visual.transformer.resblocks[-1]
    x = torch.randn(5, 1, block.attn.embed_dim)
    with torch.no_grad():
        q, k, v = block_qkv(block, x)
        attn = correlative_attention(q, k, v).transpose(0, 1).reshape(5, 1, -1)
        y = x + block.attn.out_proj(attn)
        expected = y + block.mlp(block.ln_2(y))
        torch.testing.assert_close(correlative_block(block, x), expected, rtol=1e-5, atol=1e-6)


def test_image_smaller_than_a_patch_is_rejected(tiny_clip):
    with pytest.raises(ValueError, match="smaller than one 16x16 CLIP patch"):
        embed_tokens(tiny_clip.visual, torch.zeros(1, 3, 8, 40))
    assert patch_grid(tiny_clip.visual, 40, 70) == (2, 4)
