"""Dense CLIP features with CLIPtrase's recalibrated last two blocks (docs/method.md sections 1-4).

Pure tensor functions over an open_clip ``VisionTransformer`` (``model.visual``); nothing here
knows about Detectron2. This module is also the one adapter to open_clip's internals (the
attention's projections and layout, LayerNorms, patch embedding): the heads and the glue go
through ``embed_tokens``, ``block_qkv``, ``output_projection``, ``finish_block``,
``project_tokens`` and ``patch_size``, so an open_clip upgrade changes this file only. Token layout
everywhere: index 0 is [CLS], then the h x w patches
row-major. Blocks run sequence-first through ``F.multi_head_attention_forward`` exactly as
OpenAI's CLIP (``nn.MultiheadAttention(batch_first=False)``) does, which is what makes the
features bit-identical to the authors' code. Block N-1 projects q, k, v once and shares them
between its self-correlation and its attention (``multi_head_attention``: the same
``scaled_dot_product_attention`` call on the same views as that function), so its output is
bit-identical too.

The L x L maps of the last two blocks are batched matrix products over every image and head (the
correlative attention's in chunks of heads, cache-sized on a CPU), the same code on any device.
"""

from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from open_clip.transformer import QuickGELU
from torch import nn

# A replacement for the last block: (block, x: (L, B, C), grid: (h, w)) -> (L, B, C).
LastBlock = Callable[[nn.Module, torch.Tensor, Tuple[int, int]], torch.Tensor]
# One that also reads every earlier block's output (``dense_features(hidden_states=True)``):
# (block, x: (L, B, C), grid: (h, w), hidden: outputs of blocks 0 .. N-2, each (L, B, C))
# -> (L, B, C).
LastBlockWithHidden = Callable[
    [nn.Module, torch.Tensor, Tuple[int, int], Sequence[torch.Tensor]], torch.Tensor
]

__all__ = [
    "DenseFeatures",
    "dense_features",
    "merge_heads",
    "patch_grid",
    "resize_positional_embedding",
    "resized_positional_embedding",
    "embed_tokens",
    "residual_block",
    "plain_class_token",
    "block_qkv",
    "multi_head_attention",
    "finish_block",
    "run_mlp",
    "self_correlation",
    "symmetric_gram",
    "correlative_attention",
    "correlative_block",
    "project_tokens",
]


@dataclass
class DenseFeatures:
    """Output of the recalibrated vision tower for a batch of B images."""

    tokens: torch.Tensor  # (B, 1 + n, E): [CLS] then patches, L2-normalized
    correlation: torch.Tensor  # (B, 1 + n, 1 + n): block-11 self-correlation A11 (docs/method.md 3)
    grid: Tuple[int, int]  # (h, w) patch grid, n = h * w

    @property
    def cls_tokens(self) -> torch.Tensor:
        return self.tokens[:, 0]  # (B, E)

    @property
    def patch_tokens(self) -> torch.Tensor:
        return self.tokens[:, 1:]  # (B, n, E)


def patch_grid(visual: nn.Module, height: int, width: int) -> Tuple[int, int]:
    """(h, w) = (H // p, W // p) for the vision tower's patch size p."""
    patch_h, patch_w = patch_size(visual)
    if height < patch_h or width < patch_w:
        raise ValueError(
            f"image of {height}x{width} pixels is smaller than one {patch_h}x{patch_w} CLIP patch; "
            f"resize it to at least {patch_h}x{patch_w} pixels"
        )
    return height // patch_h, width // patch_w


def resize_positional_embedding(
    positional_embedding: torch.Tensor, grid: Tuple[int, int]
) -> torch.Tensor:
    """Positional table for an h x w grid (docs/method.md section 1).

    The stored G x G patch part is resized with bicubic interpolation at scale factor
    ((h + 0.1) / G, (w + 0.1) / G), which yields exactly h x w; the [CLS] row is kept.
    positional_embedding: (1 + G*G, C) -> (1 + h*w, C).
    """
    h, w = grid
    num_stored = positional_embedding.shape[0] - 1
    side = int(round(num_stored**0.5))
    if side * side != num_stored:
        raise ValueError(f"positional embedding with {num_stored} patch rows is not a square grid")
    if (h, w) == (side, side):
        return positional_embedding
    cls_row, patch_rows = positional_embedding[:1], positional_embedding[1:]
    width = patch_rows.shape[1]
    table = patch_rows.reshape(1, side, side, width).permute(0, 3, 1, 2)  # (1, C, G, G)
    table = F.interpolate(table, scale_factor=((h + 0.1) / side, (w + 0.1) / side), mode="bicubic")
    table = table.permute(0, 2, 3, 1).reshape(h * w, width)  # (h*w, C)
    return torch.cat([cls_row, table], dim=0)


def resized_positional_embedding(visual: nn.Module, grid: Tuple[int, int]) -> torch.Tensor:
    """``resize_positional_embedding`` of ``visual``'s table, kept per grid while gradients are off.

    Every image of a grid size gets the same table (sliding windows, a benchmark's images), so it
    is computed once. The cache keeps a copy of the stored table it was computed from and is
    emptied when the table differs from that copy in any way (values, dtype, device), however it
    was changed: ``load_state_dict``, ``.to()``, in place through ``.data``. It works under
    ``torch.inference_mode`` too (no version counter is read).
    """
    table = visual.positional_embedding
    if torch.is_grad_enabled():
        return resize_positional_embedding(table, grid)
    cache = visual.__dict__.get("_cliptrase_positional_cache")
    if (
        cache is None
        or len(cache[1]) >= 16
        or cache[0].dtype != table.dtype
        or cache[0].device != table.device
        or cache[0].shape != table.shape
        or not torch.equal(cache[0], table)
    ):
        cache = visual.__dict__["_cliptrase_positional_cache"] = (table.detach().clone(), {})
    tables = cache[1]
    if tuple(grid) not in tables:
        tables[tuple(grid)] = resize_positional_embedding(table, grid)
    return tables[tuple(grid)]


def embed_tokens(visual: nn.Module, images: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int]]:
    """Patch embedding, [CLS], positional embedding and ln_pre.

    images: (B, 3, H, W) normalized -> tokens (1 + n, B, C) sequence-first, grid (h, w).
    """
    grid = patch_grid(visual, images.shape[-2], images.shape[-1])
    x = visual.conv1(images.to(visual.conv1.weight.dtype))  # (B, C, h, w)
    x = x.flatten(2).transpose(1, 2)  # (B, n, C)
    cls = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], dim=1)  # (B, 1 + n, C)
    x = x + resized_positional_embedding(visual, grid).to(x.dtype)
    x = visual.ln_pre(x)
    return x.transpose(0, 1), grid  # (1 + n, B, C)


def _attention(block: nn.Module, queries: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The block's attention of ``queries`` over ``y`` (both after ln_1), exactly as OpenAI's
    ``nn.MultiheadAttention`` computes it: (Lq, B, C), (L, B, C) -> (Lq, B, C)."""
    attn = block.attn
    return F.multi_head_attention_forward(
        queries,
        y,
        y,
        attn.embed_dim,
        attn.num_heads,
        attn.in_proj_weight,
        attn.in_proj_bias,
        None,
        None,
        False,
        0.0,
        attn.out_proj.weight,
        attn.out_proj.bias,
        training=False,
        need_weights=False,
    )[0]


def residual_block(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A standard pre-LN CLIP block on sequence-first tokens x: (L, B, C) -> (L, B, C)."""
    y = block.ln_1(x)
    return finish_block(block, x, _attention(block, y, y))


def plain_class_token(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The [CLS] row of ``residual_block(block, x)``, with [CLS] as the only query.

    x: (L, B, C) -> (1, B, C).
    """
    y = block.ln_1(x)
    return finish_block(block, x[:1], _attention(block, y[:1], y))


def block_qkv(block: nn.Module, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k, v of a block's attention from ln_1(x), biases included, NOT pre-scaled.

    x: (L, B, C) -> three (B * heads, L, d) tensors (batch-major, then head).
    """
    attn = block.attn
    length, batch, width = x.shape
    heads = attn.num_heads
    qkv = F.linear(block.ln_1(x), attn.in_proj_weight, attn.in_proj_bias)  # (L, B, 3C)
    q, k, v = qkv.chunk(3, dim=-1)

    def split_heads(t):
        return t.contiguous().view(length, batch * heads, width // heads).transpose(0, 1)

    return split_heads(q), split_heads(k), split_heads(v)


def multi_head_attention(
    block: nn.Module, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
) -> torch.Tensor:
    """The block's standard attention from its split heads (``block_qkv``), out-projection included.

    The same ``scaled_dot_product_attention`` call on the same views as
    ``F.multi_head_attention_forward`` (``residual_block``), so the result is bit-identical.
    q, k, v: (B * heads, L, d) -> (L, B, C).
    """
    attn = block.attn
    batch_heads, length, head_dim = q.shape
    shape = (batch_heads // attn.num_heads, attn.num_heads, length, head_dim)  # (B, heads, L, d)
    out = F.scaled_dot_product_attention(q.view(shape), k.view(shape), v.view(shape))
    out = out.permute(2, 0, 1, 3).reshape(length * shape[0], attn.embed_dim)  # (L * B, C)
    return output_projection(block, out).view(length, shape[0], -1)


def output_projection(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The attention's output projection of merged heads: (..., C) -> (..., C)."""
    return F.linear(x, block.attn.out_proj.weight, block.attn.out_proj.bias)


def patch_size(visual: nn.Module) -> Tuple[int, int]:
    """(p_h, p_w) of the vision tower's patch embedding."""
    return tuple(visual.conv1.kernel_size)


def finish_block(block: nn.Module, x: torch.Tensor, attn_out: torch.Tensor) -> torch.Tensor:
    """The rest of a pre-LN block after its attention: ``x + attn_out``, then the MLP residual."""
    x = x + block.ls_1(attn_out)
    return x + block.ls_2(run_mlp(block.mlp, block.ln_2(x)))


def run_mlp(mlp: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """open_clip's MLP (an ``nn.Sequential``: c_fc, activation, [ln], c_proj) on ``x``, the same
    numbers as ``mlp(x)``. OpenAI's QuickGELU, ``h * sigmoid(1.702 h)``, is computed in one
    buffer (``sigmoid(1.702 h) * h``, the same product) when no gradient is recorded through
    it: one (L, B, 4C) tensor instead of three."""
    for layer in mlp:
        if isinstance(layer, QuickGELU) and not (torch.is_grad_enabled() and x.requires_grad):
            x = torch.mul(x, 1.702).sigmoid_().mul_(x)
        else:
            x = layer(x)
    return x


def self_correlation(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """A11 = mean over heads of (cos(q_i, q_j) + cos(k_i, k_j) + cos(v_i, v_j)) / 3 (docs/method.md
    section 3).

    The 3 x heads cosine maps of an image summed in one product: the unit q, k and v rows of
    every head side by side, (L, 3 * heads * d), times their transpose, divided by 3 * heads
    (one deep, symmetric product, ``symmetric_gram``, instead of 3 * heads shallow ones and their
    sum: the same value up to the order of the additions). q, k, v: (B * heads, L, d) ->
    (B, L, L).
    """
    batch_heads, length, dim = q.shape
    units = torch.cat([F.normalize(t, dim=-1) for t in (q, k, v)], dim=-1)  # (B * heads, L, 3d)
    units = units.view(-1, heads, length, 3 * dim).transpose(1, 2)  # (B, L, heads, 3d)
    units = units.reshape(-1, length, heads * 3 * dim)
    return symmetric_gram(units).div_(3 * heads)


GRAM_BLOCKS = 4  # row blocks of ``symmetric_gram``: it computes 5/8 of the products


def symmetric_gram(rows: torch.Tensor) -> torch.Tensor:
    """rows @ rows^T for (B, L, D) rows -> (B, L, L), exactly symmetric: in ``GRAM_BLOCKS``
    blocks of rows, each block's products with itself and the rows after it, the blocks below
    the diagonal mirrored from those above."""
    length = rows.shape[1]
    gram = rows.new_empty(rows.shape[0], length, length)
    edges = [length * i // GRAM_BLOCKS for i in range(GRAM_BLOCKS + 1)]
    for start, end in zip(edges[:-1], edges[1:]):
        if start == end:
            continue
        block = torch.bmm(rows[:, start:end], rows[:, start:].mT)  # (B, end - start, L - start)
        gram[:, start:end, start:] = block
        gram[:, end:, start:end] = block[:, :, end - start :].mT
    return gram


# Elements of the L x L maps ``correlative_attention`` holds at once: on a CPU a few heads at a
# time, so that the three maps of a chunk stay in cache (2 MB of fp32 each: two heads of
# ViT-B/16 at 336, all twelve at 224); elsewhere every head of the batch up to 512 MB of fp32.
CPU_MAP_ELEMENTS = 1 << 19
MAP_ELEMENTS = 1 << 27


def correlative_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """(softmax(s q q^T) + softmax(s k k^T) + softmax(s v v^T)) @ v per head, s = d ** -0.5,
    for every image and head in batched products.

    The three softmax maps are added, then multiplied by v once (the authors' order of
    operations, one P @ v product instead of three), in chunks of heads whose maps hold at most
    ``CPU_MAP_ELEMENTS`` (CPU) or ``MAP_ELEMENTS`` elements. Each head's numbers do not depend on
    the chunk it is in: an image alone gives what its batch gives, bit for bit.
    q, k, v: (B * heads, L, d) -> (B * heads, L, d).
    """
    batch_heads, length, dim = q.shape
    scale = dim**-0.5
    budget = CPU_MAP_ELEMENTS if q.device.type == "cpu" else MAP_ELEMENTS
    step = max(1, budget // (length * length))
    parts = []
    for start in range(0, batch_heads, step):
        heads = slice(start, start + step)
        weights = None  # (heads, L, L)
        for t in (q[heads], k[heads], v[heads]):
            probabilities = torch.softmax(torch.bmm(t * scale, t.mT), dim=-1)
            weights = probabilities if weights is None else weights.add_(probabilities)
        parts.append(torch.bmm(weights, v[heads]))
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def merge_heads(out: torch.Tensor, length: int, batch: int) -> torch.Tensor:
    """(B * heads, L, d) -> (L, B, C), heads concatenated along channels."""
    return out.transpose(0, 1).contiguous().view(length, batch, -1)


def correlative_block(
    block: nn.Module, x: torch.Tensor, grid: Tuple[int, int] = None
) -> torch.Tensor:
    """The last block with correlative attention; residual and MLP kept (docs/method.md 4)."""
    length, batch, _ = x.shape
    q, k, v = block_qkv(block, x)
    attn_out = F.linear(
        merge_heads(correlative_attention(q, k, v), length, batch),
        block.attn.out_proj.weight,
        block.attn.out_proj.bias,
    )
    return finish_block(block, x, attn_out)


def project_tokens(visual: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """ln_post, projection and L2 normalization of every token: (L, B, C) -> (B, L, E)."""
    x = visual.ln_post(x.transpose(0, 1))  # (B, L, C)
    return F.normalize(x @ visual.proj, dim=-1)


def dense_features(
    visual: nn.Module,
    images: torch.Tensor,
    last_block: Optional[LastBlock] = None,
    hidden_states: bool = False,
) -> DenseFeatures:
    """Runs the vision tower, replacing its last block by ``last_block(block, x, grid) -> x``
    (default: CLIPtrase's correlative block). The block-11 self-correlation is always returned,
    so region refinement composes with any last block. images: (B, 3, H, W) normalized.
    ``hidden_states``: ``last_block`` is a ``LastBlockWithHidden``, called with the outputs of
    every block before it as a fourth argument (for heads that combine several blocks).
    """
    last_block = correlative_block if last_block is None else last_block
    blocks = visual.transformer.resblocks
    x, grid = embed_tokens(visual, images)
    hidden = []  # kept only for a LastBlockWithHidden
    for block in blocks[:-2]:
        x = residual_block(block, x)
        if hidden_states:
            hidden.append(x)
    penultimate = blocks[-2]
    # q, k, v shared by the self-correlation and the block's own attention
    q, k, v = block_qkv(penultimate, x)
    correlation = self_correlation(q, k, v, penultimate.attn.num_heads)  # (B, L, L)
    x = finish_block(penultimate, x, multi_head_attention(penultimate, q, k, v))
    if hidden_states:
        x = last_block(blocks[-1], x, grid, tuple(hidden) + (x,))
    else:
        x = last_block(blocks[-1], x, grid)
    return DenseFeatures(tokens=project_tokens(visual, x), correlation=correlation, grid=grid)
