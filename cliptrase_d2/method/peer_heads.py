"""Peer methods' heads (MaskCLIP, SCLIP, ClearCLIP, NACLIP, SC-CLIP, PEARL), in heads.HEADS.

Each peer changes only CLIP's last vision block, so each is a last-block function
``(block, x: (L, B, C), grid: (h, w)) -> (L, B, C)`` plus the logit scale its authors' segmentor
applies to cosine similarities (their Pascal Context 59 setting). SC-CLIP also reads earlier
blocks' outputs (``Head(hidden_states=True)``) and replaces the last block's input. Everything
before the last block, and ln_post + proj + L2 normalization after it, is
``dense_clip.dense_features``; what each function computes follows
the authors' released code (docs/methods.md).

Not part of a head, so not reproduced here: NACLIP's PAMR post-processing, PEARL's TLP
(``REFINE tlp``, propagation.py), the authors' sliding-window sizes, probability thresholds
(``prob_thd``, 0 for Context59) and SCLIP's ``area_thd`` and per-dataset logit scales (use the
logit-scale override for those).
"""

import math
from typing import Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .dense_clip import (
    block_qkv,
    finish_block,
    merge_heads,
    output_projection,
    plain_class_token,
)
from .heads import Head, register_head

__all__ = [
    "MASKCLIP_LOGIT_SCALE",
    "SCLIP_LOGIT_SCALE",
    "CLEARCLIP_LOGIT_SCALE",
    "NACLIP_LOGIT_SCALE",
    "NACLIP_GAUSSIAN_STD",
    "self_self_attention",
    "gaussian_window",
    "neighbourhood_bias",
    "maskclip_block",
    "maskclip_residual_block",
    "sclip_block",
    "clearclip_block",
    "naclip_block",
    "SCCLIP_LOGIT_SCALE",
    "PEARL_LOGIT_SCALE",
    "local_outlier_factor",
    "anomalous_tokens",
    "repair_anomalies",
    "token_similarity",
    "drop_weak",
    "aggregate_tokens",
    "similarity_guided_attention",
    "scclip_branches",
    "scclip_block",
    "polar_factor_rotation",
    "procrustes_attention",
    "pearl_block",
]

# Fixed logit scales of the authors' segmentors on Pascal Context 59.
MASKCLIP_LOGIT_SCALE = 50.0  # ClearCLIP's segmentor, which runs the MaskCLIP baseline
SCLIP_LOGIT_SCALE = 40.0  # SCLIP's default (its VOC21 config uses 65, Context60 / COCO-Object 50)
CLEARCLIP_LOGIT_SCALE = 50.0
NACLIP_LOGIT_SCALE = 40.0
NACLIP_GAUSSIAN_STD = 5.0  # neighbourhood Gaussian's standard deviation, in patches
SCCLIP_LOGIT_SCALE = 40.0  # its VOC21 config uses 50, COCO-Object 55
PEARL_LOGIT_SCALE = 40.0

# SC-CLIP's constants (its defaults, for 12-block ViTs; block indices 0-based).
SCCLIP_LOF_NEIGHBOURS = 30
SCCLIP_LOF_CONTAMINATION = 0.05  # share of patch tokens taken as anomalies
SCCLIP_SIMILARITY_THRESHOLD = 0.4  # similarities below it do not aggregate
SCCLIP_GUIDE_SHARPNESS = 3.0
SCCLIP_CLS_WEIGHT = 0.3  # the [CLS] token added back to each branch
SCCLIP_MIDDLE_BLOCK = 8  # its similarities guide the attention and aggregate before it
SCCLIP_EARLY_BLOCK = 3  # its similarities aggregate after the attention
SCCLIP_FUSED_BLOCKS = tuple(range(3, 10))  # summed into the multi-level branch
SCCLIP_DISTANCE_ELEMENTS = 1 << 24  # most values of (rows, n, C) token differences held at once
# PEARL's constants.
PEARL_KEY_KEY_WEIGHT = 0.08
PEARL_POLAR_ITERATIONS = 5


def self_self_attention(t: torch.Tensor) -> torch.Tensor:
    """softmax(s t t^T) over keys, s = d ** -0.5 applied to the Gram matrix: (B*heads, L, d) ->
    (B*heads, L, L)."""
    return torch.softmax(torch.bmm(t, t.transpose(1, 2)) * t.shape[-1] ** -0.5, dim=-1)


def _attend(
    block: nn.Module, weights: torch.Tensor, v: torch.Tensor, length: int, batch: int
) -> torch.Tensor:
    """Per-head weights @ v, heads concatenated, then out_proj: (B*heads, L, L), (B*heads, L, d) ->
    (L, B, C)."""
    merged = merge_heads(torch.bmm(weights, v), length, batch)  # (L, B, C)
    return output_projection(block, merged)


def _value_path(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """out_proj(v): every token attends only to itself (MaskCLIP's dense path)."""
    length, batch, _ = x.shape
    _, _, v = block_qkv(block, x)
    return output_projection(block, merge_heads(v, length, batch))


def maskclip_block(block: nn.Module, x: torch.Tensor, grid: Tuple[int, int] = None) -> torch.Tensor:
    """MaskCLIP as ClearCLIP's code runs it: out_proj(v_proj(ln_1(x))); no residual, no FFN."""
    return _value_path(block, x)


def maskclip_residual_block(
    block: nn.Module, x: torch.Tensor, grid: Tuple[int, int] = None
) -> torch.Tensor:
    """MaskCLIP as its own release runs it: x + out_proj(v), then the FFN with its residual."""
    return finish_block(block, x, _value_path(block, x))


def sclip_block(block: nn.Module, x: torch.Tensor, grid: Tuple[int, int] = None) -> torch.Tensor:
    """SCLIP's correlative self-attention: (softmax(s q q^T) + softmax(s k k^T)) v; residual and
    FFN kept."""
    length, batch, _ = x.shape
    q, k, v = block_qkv(block, x)  # (B*heads, L, d) each
    weights = self_self_attention(q) + self_self_attention(k)  # rows sum to 2, not renormalized
    return finish_block(block, x, _attend(block, weights, v, length, batch))


def clearclip_block(
    block: nn.Module, x: torch.Tensor, grid: Tuple[int, int] = None
) -> torch.Tensor:
    """ClearCLIP: softmax(s q q^T) v then out_proj; no residual, no FFN."""
    length, batch, _ = x.shape
    q, _, v = block_qkv(block, x)
    return _attend(block, self_self_attention(q), v, length, batch)


def gaussian_window(grid: Tuple[int, int], std: float) -> torch.Tensor:
    """exp(-(dr^2 + dc^2) / (2 std^2)) for every offset (dr, dc) on an h x w grid: (2h - 1, 2w -
    1), fp32.

    Built as NACLIP's code builds it (bit-exact): per axis a linspace of offsets / (std * sqrt 2).
    """
    step = 1 / (std * math.sqrt(2))
    rows, cols = (
        torch.linspace(-(g - 1) * step, (g - 1) * step, 2 * g - 1, dtype=torch.float32)
        for g in grid
    )
    return torch.exp(-(rows[:, None] ** 2 + cols[None, :] ** 2))


def neighbourhood_bias(grid: Tuple[int, int], std: float) -> torch.Tensor:
    """NACLIP's additive attention bias Omega: (1 + n, 1 + n), fp32, zero on the [CLS] row and
    column.

    Omega[(r, c), (r', c')] = exp(-((r - r')^2 + (c - c')^2) / (2 std^2)), untruncated.
    """
    h, w = grid
    window = gaussian_window(grid, std)  # (2h - 1, 2w - 1)
    rows = torch.arange(h).repeat_interleave(w)  # (n,) patch row, row-major
    cols = torch.arange(w).repeat(h)  # (n,) patch column
    patch_bias = window[
        rows[:, None] - rows[None, :] + h - 1, cols[:, None] - cols[None, :] + w - 1
    ]  # (n, n)
    return F.pad(patch_bias, (1, 0, 1, 0))


def naclip_block(block: nn.Module, x: torch.Tensor, grid: Tuple[int, int]) -> torch.Tensor:
    """NACLIP's reduced last block: softmax(s k k^T + Omega) v then out_proj; no residual, no
    FFN."""
    length, batch, _ = x.shape
    _, k, v = block_qkv(block, x)
    bias = neighbourhood_bias(grid, NACLIP_GAUSSIAN_STD).to(k)  # (L, L)
    weights = torch.softmax(torch.bmm(k, k.transpose(1, 2)) * k.shape[-1] ** -0.5 + bias, dim=-1)
    return _attend(block, weights, v, length, batch)


register_head(
    Head(
        "maskclip",
        maskclip_block,
        MASKCLIP_LOGIT_SCALE,
        "MaskCLIP (Zhou et al., ECCV 2022) as ClearCLIP's code runs it: last block = "
        "out_proj(value) "
        "of ln_1(x), no residual, no FFN; logit scale 50",
    )
)
register_head(
    Head(
        "maskclip_residual",
        maskclip_residual_block,
        MASKCLIP_LOGIT_SCALE,
        "MaskCLIP as its own release runs it: value path plus the residual, then the last block's "
        "FFN "
        "with its residual (ClearCLIP's ignore_residual=False); logit scale 50",
    )
)
register_head(
    Head(
        "sclip",
        sclip_block,
        SCLIP_LOGIT_SCALE,
        "SCLIP (Wang et al., ECCV 2024): correlative self-attention softmax(qq^T)+softmax(kk^T) in "
        "the "
        "last block, residual and FFN kept; logit scale 40 (Context59 default)",
    )
)
register_head(
    Head(
        "clearclip",
        clearclip_block,
        CLEARCLIP_LOGIT_SCALE,
        "ClearCLIP (Lan et al., ECCV 2024): q-q self-attention in the last block, no residual, no "
        "FFN; "
        "logit scale 50",
    )
)
register_head(
    Head(
        "naclip",
        naclip_block,
        NACLIP_LOGIT_SCALE,
        "NACLIP (Hajimiri et al., WACV 2025) without PAMR: k-k attention plus a Gaussian "
        "neighbourhood "
        "bias (std 5 patches), no residual, no FFN; logit scale 40",
    )
)


# ---- SC-CLIP --------------------------------------------------------------------------------


def local_outlier_factor(
    tokens: torch.Tensor, neighbours: int = SCCLIP_LOF_NEIGHBOURS
) -> torch.Tensor:
    """SC-CLIP's local outlier factor of each token among its ``neighbours`` nearest tokens.

    Squared Euclidean distances as ``torch.norm(a - b) ** 2`` (the authors' formula: the outlier
    set is discrete, another formula can flip one), computed in blocks of rows. The reachability
    distance of a neighbour is the larger of its distance and the token's OWN k-distance, as in
    their code (not the neighbour's k-distance of textbook LOF). Computed in fp32 whatever the
    tokens' precision. tokens: (B, n, C) -> (B, n).
    """
    tokens = tokens.float()
    batch, count, width = tokens.shape
    if count <= neighbours:
        raise ValueError(
            f"SC-CLIP's anomaly detection compares each patch with its {neighbours} nearest "
            f"patches, which needs a patch grid of more than {neighbours} patches; got {count}. "
            "Use a larger image or window"
        )
    rows = max(1, SCCLIP_DISTANCE_ELEMENTS // (batch * count * width))
    distances = torch.cat(
        [
            torch.norm(tokens[:, start : start + rows, None] - tokens[:, None], dim=-1, p=2) ** 2
            for start in range(0, count, rows)
        ],
        dim=1,
    )  # (B, n, n)
    nearest, indices = torch.topk(distances, k=neighbours + 1, dim=-1, largest=False)
    nearest, indices = nearest[..., 1:], indices[..., 1:]  # column 0 is the token itself
    reach = torch.maximum(nearest, nearest[..., -1:])  # (B, n, k)
    density = neighbours / torch.nan_to_num(reach.mean(dim=-1), nan=1e-6)  # (B, n)
    neighbour_density = torch.gather(density[:, None].expand(-1, count, -1), 2, indices)
    return (neighbour_density / density[..., None]).mean(dim=-1)


def anomalous_tokens(
    scores: torch.Tensor, contamination: float = SCCLIP_LOF_CONTAMINATION
) -> torch.Tensor:
    """Tokens whose outlier factor exceeds the (1 - contamination) quantile: (B, n) -> bool."""
    return scores > torch.quantile(scores, 1 - contamination, dim=-1, keepdim=True)


def repair_anomalies(
    tokens: torch.Tensor, anomalies: torch.Tensor, grid: Tuple[int, int]
) -> torch.Tensor:
    """Each anomalous token becomes the mean of its non-anomalous 3 x 3 neighbours (left as it is
    when it has none); the others are unchanged.

    tokens: (B, n, C), anomalies: (B, n) -> (B, n, C).
    """
    batch, count, width = tokens.shape
    keep = (~anomalies).to(tokens.dtype).view(batch, 1, *grid)  # (B, 1, h, w)
    kernel = torch.ones(3, 3, dtype=tokens.dtype, device=tokens.device)
    kernel[1, 1] = 0
    maps = tokens.transpose(1, 2).reshape(batch, width, *grid)  # (B, C, h, w)
    sums = F.conv2d(maps * keep, kernel.expand(width, 1, 3, 3), padding=1, groups=width)
    counts = F.conv2d(keep, kernel.view(1, 1, 3, 3), padding=1)  # (B, 1, h, w)
    replaced = anomalies.view(batch, 1, *grid) & (counts > 0)
    repaired = torch.where(replaced, sums / counts.clamp_min(1), maps)
    return repaired.reshape(batch, width, count).transpose(1, 2)


def token_similarity(tokens: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of every pair of tokens: (B, n, C) -> (B, n, n)."""
    units = F.normalize(tokens, dim=-1)
    return torch.bmm(units, units.transpose(1, 2))


def drop_weak(
    similarity: torch.Tensor, threshold: float = SCCLIP_SIMILARITY_THRESHOLD
) -> torch.Tensor:
    """Similarities below ``threshold`` set to 0 (the others kept): (B, n, n) -> (B, n, n)."""
    return similarity.masked_fill(similarity < threshold, 0)


def aggregate_tokens(tokens: torch.Tensor, affinity: torch.Tensor) -> torch.Tensor:
    """Row-normalised affinity times the tokens: (B, n, C), (B, n, n) -> (B, n, C)."""
    return torch.bmm(affinity / (affinity.sum(dim=-1, keepdim=True) + 1e-6), tokens)


def similarity_guided_attention(
    block: nn.Module, x: torch.Tensor, similarity: torch.Tensor
) -> torch.Tensor:
    """SC-CLIP's last-block attention, no residual, no FFN: per head
    (softmax(M) + softmax(s k k^T)) / 2 @ v, then out_proj. M = 3 (sim - mean(sim)) with its
    negative entries masked out, the same for every head.

    x: (n, B, C), similarity: (B, n, n) -> (n, B, C).
    """
    length, batch, _ = x.shape
    _, k, v = block_qkv(block, x)  # (B*heads, n, d)
    guide = SCCLIP_GUIDE_SHARPNESS * (similarity - similarity.mean(dim=(-2, -1), keepdim=True))
    guide = torch.softmax(guide.masked_fill(guide < 0, float("-inf")), dim=-1)  # (B, n, n)
    keys = self_self_attention(k).view(batch, -1, length, length)  # (B, heads, n, n)
    weights = ((guide[:, None] + keys) / 2).view(-1, length, length)
    return _attend(block, weights, v, length, batch)


def scclip_branches(
    block: nn.Module, hidden: Sequence[torch.Tensor], grid: Tuple[int, int]
) -> Tuple[torch.Tensor, torch.Tensor]:
    """SC-CLIP's main and multi-level branches, each (B, n, C), no [CLS].

    hidden: the outputs F_0 .. F_10 of blocks 0 .. 10, each (1 + n, B, C).
    """

    def patches(t):  # (1 + n, B, C) -> (B, n, C)
        return t[1:].transpose(0, 1)

    final, middle = hidden[-1], hidden[SCCLIP_MIDDLE_BLOCK]
    anomalies = anomalous_tokens(local_outlier_factor(patches(final)))
    calibrated = repair_anomalies(patches(final), anomalies, grid)
    guide = token_similarity(repair_anomalies(patches(middle), anomalies, grid))
    before = drop_weak(guide)
    after = drop_weak(token_similarity(patches(hidden[SCCLIP_EARLY_BLOCK])))

    def branch(tokens, cls):  # tokens (B, n, C), cls (B, C)
        attended = similarity_guided_attention(block, tokens.transpose(0, 1), guide)
        return aggregate_tokens(attended.transpose(0, 1) + SCCLIP_CLS_WEIGHT * cls[:, None], after)

    main = branch(aggregate_tokens(calibrated, before), final[0])
    fused = hidden[SCCLIP_FUSED_BLOCKS[0]]
    for index in SCCLIP_FUSED_BLOCKS[1:]:
        fused = fused + hidden[index]
    return main, branch(patches(fused), fused[0])


def scclip_block(
    block: nn.Module, x: torch.Tensor, grid: Tuple[int, int], hidden: Sequence[torch.Tensor]
) -> torch.Tensor:
    """SC-CLIP's last block: the sum of its two branches for the patches. SC-CLIP has no [CLS]
    output, so the [CLS] row is plain CLIP's (for image-level weighting). -> (1 + n, B, C)."""
    main, multi = scclip_branches(block, hidden, grid)
    return torch.cat([plain_class_token(block, x), (main + multi).transpose(0, 1)], dim=0)


# ---- PEARL ----------------------------------------------------------------------------------


def polar_factor_rotation(
    cross: torch.Tensor, iterations: int = PEARL_POLAR_ITERATIONS
) -> torch.Tensor:
    """R = M (M^T M)^(-1/2) by Newton-Schulz iterations, as PEARL computes it.

    cross: (N, d, d) -> (N, d, d).
    """
    gram = cross.transpose(1, 2) @ cross  # (N, d, d)
    norm = torch.linalg.matrix_norm(gram).clamp_min(1e-6)[:, None, None]  # Frobenius
    identity = torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device).expand_as(gram)
    y, z = gram / norm + 1e-6 * identity, identity
    for _ in range(iterations):
        t = 0.5 * (3 * identity - z @ y)
        y, z = y @ t, t @ z
    return cross @ (z / torch.sqrt(norm))


def procrustes_attention(
    q: torch.Tensor, k: torch.Tensor, key_key_weight: float = PEARL_KEY_KEY_WEIGHT
) -> torch.Tensor:
    """PEARL's attention weights: softmax(s q (k R)^T + a s k_c k_c^T) per head (a =
    ``key_key_weight``, the authors' alpha_kk: 0.08, 0.3 on ADE20K and Cityscapes), R rotating
    the centred keys onto the centred queries (query-norm weighted centres, [CLS] weight 0).

    q, k: (B*heads, L, d) -> (B*heads, L, L), computed in fp32 (as the authors do) and returned
    in q's precision.
    """
    dtype, q, k = q.dtype, q.float(), k.float()
    scale = q.shape[-1] ** -0.5
    weights = torch.linalg.vector_norm(q, dim=-1)  # (N, L)
    weights[:, 0] = 0
    weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-6)
    q_centred = q - (weights[..., None] * q).sum(dim=1, keepdim=True)
    k_centred = k - (weights[..., None] * k).sum(dim=1, keepdim=True)
    rotation = polar_factor_rotation(k_centred.transpose(1, 2) @ q_centred)  # (N, d, d)
    logits = torch.bmm(q * scale, (k @ rotation).transpose(1, 2))
    key_key = torch.bmm(k_centred, k_centred.transpose(1, 2)) * scale
    return torch.softmax(logits + key_key_weight * key_key, dim=-1).to(dtype)


def pearl_block(
    block: nn.Module,
    x: torch.Tensor,
    grid: Tuple[int, int] = None,
    key_key_weight: float = PEARL_KEY_KEY_WEIGHT,
) -> torch.Tensor:
    """PEARL's reduced last block: Procrustes-aligned attention, out_proj; no residual, no FFN."""
    length, batch, _ = x.shape
    q, k, v = block_qkv(block, x)
    return _attend(block, procrustes_attention(q, k, key_key_weight), v, length, batch)


register_head(
    Head(
        "scclip",
        scclip_block,
        SCCLIP_LOGIT_SCALE,
        "SC-CLIP (Bai et al., arXiv 2411.15869): anomaly tokens (LOF after block 11) "
        "repaired from their neighbours, the last block's attention guided by block-9 "
        "similarities and aggregated by block-4 ones, plus a multi-level branch; no "
        "residual, no FFN; logit scale 40",
        hidden_states=True,
    )
)
register_head(
    Head(
        "pearl",
        pearl_block,
        PEARL_LOGIT_SCALE,
        "PEARL (Pei et al., CVPR 2026): last-block attention with keys rotated onto "
        "the queries (Procrustes) plus a small k-k term, no residual, no FFN; logit "
        "scale 40 (its TLP is REFINE tlp)",
        options=("key_key_weight",),
    )
)
