"""Peer methods' heads (MaskCLIP, SCLIP, ClearCLIP, NACLIP), registered in heads.HEADS.

Each peer changes only CLIP's last vision block, so each is a last-block function
``(block, x: (L, B, C), grid: (h, w)) -> (L, B, C)`` plus the logit scale its authors' segmentor
applies to cosine similarities (their Pascal Context 59 setting). Everything before the last
block, and ln_post + proj + L2 normalization after it, is ``dense_clip.dense_features``; what
each function computes follows ../shared/peers/<method>/SPEC.md (the authors' code).

Not part of a head, so not reproduced here: NACLIP's PAMR post-processing, the authors'
sliding-window sizes, probability thresholds (``prob_thd``, 0 for Context59) and SCLIP's
``area_thd`` and per-dataset logit scales (use the logit-scale override for those).
"""
import math
from typing import Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .dense_clip import block_qkv, merge_heads
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
]

# Fixed logit scales of the authors' segmentors on Pascal Context 59.
MASKCLIP_LOGIT_SCALE = 50.0  # ClearCLIP's segmentor, which runs the MaskCLIP baseline
SCLIP_LOGIT_SCALE = 40.0  # SCLIP's default (its VOC21 config uses 65, Context60 / COCO-Object 50)
CLEARCLIP_LOGIT_SCALE = 50.0
NACLIP_LOGIT_SCALE = 40.0
NACLIP_GAUSSIAN_STD = 5.0  # neighbourhood Gaussian's standard deviation, in patches


def self_self_attention(t: torch.Tensor) -> torch.Tensor:
    """softmax(s t t^T) over keys, s = d ** -0.5 applied to the Gram matrix: (B*heads, L, d) -> (B*heads, L, L)."""
    return torch.softmax(torch.bmm(t, t.transpose(1, 2)) * t.shape[-1] ** -0.5, dim=-1)


def _attend(block: nn.Module, weights: torch.Tensor, v: torch.Tensor, length: int, batch: int) -> torch.Tensor:
    """Per-head weights @ v, heads concatenated, then out_proj: (B*heads, L, L), (B*heads, L, d) -> (L, B, C)."""
    merged = merge_heads(torch.bmm(weights, v), length, batch)  # (L, B, C)
    return F.linear(merged, block.attn.out_proj.weight, block.attn.out_proj.bias)


def _residual_and_ffn(block: nn.Module, x: torch.Tensor, attn_out: torch.Tensor) -> torch.Tensor:
    """x + attn_out, then the block's own MLP with its residual: (L, B, C) -> (L, B, C)."""
    x = x + block.ls_1(attn_out)
    return x + block.ls_2(block.mlp(block.ln_2(x)))


def _value_path(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """out_proj(v): every token attends only to itself (MaskCLIP SPEC section 3)."""
    length, batch, _ = x.shape
    _, _, v = block_qkv(block, x)
    return F.linear(merge_heads(v, length, batch), block.attn.out_proj.weight, block.attn.out_proj.bias)


def maskclip_block(block: nn.Module, x: torch.Tensor, grid: Tuple[int, int] = None) -> torch.Tensor:
    """MaskCLIP as ClearCLIP's code runs it: out_proj(v_proj(ln_1(x))); no residual, no FFN."""
    return _value_path(block, x)


def maskclip_residual_block(block: nn.Module, x: torch.Tensor, grid: Tuple[int, int] = None) -> torch.Tensor:
    """MaskCLIP as its own release runs it: x + out_proj(v), then the FFN with its residual."""
    return _residual_and_ffn(block, x, _value_path(block, x))


def sclip_block(block: nn.Module, x: torch.Tensor, grid: Tuple[int, int] = None) -> torch.Tensor:
    """SCLIP's correlative self-attention: (softmax(s q q^T) + softmax(s k k^T)) v; residual and FFN kept."""
    length, batch, _ = x.shape
    q, k, v = block_qkv(block, x)  # (B*heads, L, d) each
    weights = self_self_attention(q) + self_self_attention(k)  # rows sum to 2, not renormalized
    return _residual_and_ffn(block, x, _attend(block, weights, v, length, batch))


def clearclip_block(block: nn.Module, x: torch.Tensor, grid: Tuple[int, int] = None) -> torch.Tensor:
    """ClearCLIP: softmax(s q q^T) v then out_proj; no residual, no FFN."""
    length, batch, _ = x.shape
    q, _, v = block_qkv(block, x)
    return _attend(block, self_self_attention(q), v, length, batch)


def gaussian_window(grid: Tuple[int, int], std: float) -> torch.Tensor:
    """exp(-(dr^2 + dc^2) / (2 std^2)) for every offset (dr, dc) on an h x w grid: (2h - 1, 2w - 1), fp32.

    Built as NACLIP's code builds it (bit-exact): per axis a linspace of offsets / (std * sqrt 2).
    """
    step = 1 / (std * math.sqrt(2))
    rows, cols = (torch.linspace(-(g - 1) * step, (g - 1) * step, 2 * g - 1, dtype=torch.float32) for g in grid)
    return torch.exp(-(rows[:, None] ** 2 + cols[None, :] ** 2))


def neighbourhood_bias(grid: Tuple[int, int], std: float) -> torch.Tensor:
    """NACLIP's additive attention bias Omega: (1 + n, 1 + n), fp32, zero on the [CLS] row and column.

    Omega[(r, c), (r', c')] = exp(-((r - r')^2 + (c - c')^2) / (2 std^2)), untruncated.
    """
    h, w = grid
    window = gaussian_window(grid, std)  # (2h - 1, 2w - 1)
    rows = torch.arange(h).repeat_interleave(w)  # (n,) patch row, row-major
    cols = torch.arange(w).repeat(h)  # (n,) patch column
    patch_bias = window[rows[:, None] - rows[None, :] + h - 1, cols[:, None] - cols[None, :] + w - 1]  # (n, n)
    return F.pad(patch_bias, (1, 0, 1, 0))


def naclip_block(block: nn.Module, x: torch.Tensor, grid: Tuple[int, int]) -> torch.Tensor:
    """NACLIP's reduced last block: softmax(s k k^T + Omega) v then out_proj; no residual, no FFN."""
    length, batch, _ = x.shape
    _, k, v = block_qkv(block, x)
    bias = neighbourhood_bias(grid, NACLIP_GAUSSIAN_STD).to(k)  # (L, L)
    weights = torch.softmax(torch.bmm(k, k.transpose(1, 2)) * k.shape[-1] ** -0.5 + bias, dim=-1)
    return _attend(block, weights, v, length, batch)


register_head(Head("maskclip", maskclip_block, MASKCLIP_LOGIT_SCALE,
                   "MaskCLIP (Zhou et al., ECCV 2022) as ClearCLIP's code runs it: last block = out_proj(value) "
                   "of ln_1(x), no residual, no FFN; logit scale 50"))
register_head(Head("maskclip_residual", maskclip_residual_block, MASKCLIP_LOGIT_SCALE,
                   "MaskCLIP as its own release runs it: value path plus the residual, then the last block's FFN "
                   "with its residual (ClearCLIP's ignore_residual=False); logit scale 50"))
register_head(Head("sclip", sclip_block, SCLIP_LOGIT_SCALE,
                   "SCLIP (Wang et al., ECCV 2024): correlative self-attention softmax(qq^T)+softmax(kk^T) in the "
                   "last block, residual and FFN kept; logit scale 40 (Context59 default)"))
register_head(Head("clearclip", clearclip_block, CLEARCLIP_LOGIT_SCALE,
                   "ClearCLIP (Lan et al., ECCV 2024): q-q self-attention in the last block, no residual, no FFN; "
                   "logit scale 50"))
register_head(Head("naclip", naclip_block, NACLIP_LOGIT_SCALE,
                   "NACLIP (Hajimiri et al., WACV 2025) without PAMR: k-k attention plus a Gaussian neighbourhood "
                   "bias (std 5 patches), no residual, no FFN; logit scale 40"))
