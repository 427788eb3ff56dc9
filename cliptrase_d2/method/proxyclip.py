"""ProxyCLIP (Lan et al., ECCV 2024): CLIP's last-block attention replaced by a vision foundation
model's (VFM's) patch correspondences, the "proxy attention".

The VFM sees the same windows as CLIP, re-normalized from CLIP's statistics to ImageNet's. Its
last-layer patch features give the attention weights: cosine similarities, shifted by ``beta``
times their mean, scaled by ``gamma``, negative entries masked out, softmax. CLIP's last block
keeps only its value path: its values, bilinearly resized to the VFM's patch grid, are averaged
with those weights and out-projected (no residual, no MLP), so the dense features come at the
VFM's grid. DINO and DINOv2 (with registers) are timm ``VisionTransformer``s run with their
authors' positional-embedding interpolation; SAM's image encoder sees the window resized to
1024 x 1024. Everything runs in the VFM's and CLIP's own precision (fp16 on a GPU in the
authors' code).
"""

import functools
from dataclasses import dataclass, replace
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .dense_clip import (
    DenseFeatures,
    block_qkv,
    dense_features,
    output_projection,
    plain_class_token,
    resize_positional_embedding,
)
from .heads import Head, register_head
from .preprocess import CLIP_MEAN, CLIP_STD

__all__ = [
    "PROXYCLIP_BETA",
    "PROXYCLIP_GAMMA",
    "PROXYCLIP_LOGIT_SCALE",
    "PROXYCLIP_WINDOW_MULTIPLE",
    "VFM_KINDS",
    "VisionFoundationModel",
    "imagenet_normalized",
    "proxy_attention",
    "proxy_block",
    "ProxyCLIPHead",
]

PROXYCLIP_BETA = 1.2  # the similarities' mean is scaled by it before it is subtracted
PROXYCLIP_GAMMA = 3.0  # sharpness of the proxy attention's softmax
PROXYCLIP_LOGIT_SCALE = 40.0
PROXYCLIP_WINDOW_MULTIPLE = 56  # its windows are zero-padded to a multiple of 56 pixels
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SAM_INPUT_SIDE = 1024
# What the VFM is: "dino" (timm ViT with a [CLS] token, DINO's interpolation), "dinov2" (timm
# ViT with [CLS] and register tokens, DINOv2's antialiased resize) or "sam" (SAM's image encoder).
VFM_KINDS = ("dino", "dinov2", "sam")


def imagenet_normalized(images: torch.Tensor) -> torch.Tensor:
    """CLIP-normalized images re-normalized with ImageNet's statistics, in fp32 (zero padding,
    CLIP's mean colour, becomes ImageNet's value of that colour): (B, 3, H, W)."""
    images = images.float()

    def column(values):
        return torch.tensor(values, device=images.device).view(3, 1, 1)

    pixels = images * column(CLIP_STD) + column(CLIP_MEAN)
    return (pixels - column(IMAGENET_MEAN)) / column(IMAGENET_STD)


class VisionFoundationModel(nn.Module):
    """A VFM's last-layer patch features of CLIP-normalized windows: (B, 3, H, W) ->
    (B, C', h', w'), in the VFM's precision."""

    def __init__(self, kind: str, backbone: nn.Module):
        super().__init__()
        if kind not in VFM_KINDS:
            raise ValueError(f"unknown VFM kind {kind!r}; choose one of {', '.join(VFM_KINDS)}")
        self.kind, self.backbone = kind, backbone

    @property
    def dtype(self) -> torch.dtype:
        return next(self.backbone.parameters()).dtype

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        pixels = imagenet_normalized(images).to(self.dtype)
        if self.kind == "sam":
            pixels = F.interpolate(pixels, size=(SAM_INPUT_SIDE,) * 2, mode="bilinear")
            return self.backbone(pixels)  # (B, C', 64, 64) from the encoder's neck
        vit = self.backbone
        patch = vit.patch_embed.proj.kernel_size
        grid = (pixels.shape[-2] // patch[0], pixels.shape[-1] // patch[1])
        x = vit.patch_embed.proj(pixels).flatten(2).transpose(1, 2)  # (B, n, C)
        if self.kind == "dino":  # DINO: the [CLS] position in the table, bicubic at (g + 0.1) / G
            x = torch.cat([vit.cls_token.expand(len(x), -1, -1), x], dim=1)
            x = x + resize_positional_embedding(vit.pos_embed[0], grid).to(x.dtype)
        else:  # DINOv2: [CLS] (its position folded in) and registers after the resized positions
            x = x + _dinov2_positions(vit.pos_embed, grid).to(x.dtype)
            prefix = [vit.cls_token, vit.reg_token]
            x = torch.cat([t.expand(len(x), -1, -1) for t in prefix] + [x], dim=1)
        for block in vit.blocks:
            x = block(x)
        x = vit.norm(x)[:, vit.num_prefix_tokens :]  # (B, n, C)
        return x.transpose(1, 2).reshape(len(x), -1, *grid)


def _dinov2_positions(positional_embedding: torch.Tensor, grid: Tuple[int, int]) -> torch.Tensor:
    """DINOv2 (with registers)'s patch positions for an h x w grid: its stored G x G table resized
    to exactly (h, w), bicubic with antialiasing, in fp32. (1, G*G, C) -> (1, h*w, C)."""
    side = int(round(positional_embedding.shape[1] ** 0.5))
    if tuple(grid) == (side, side):
        return positional_embedding
    table = positional_embedding.float().reshape(1, side, side, -1).permute(0, 3, 1, 2)
    table = F.interpolate(table, size=tuple(grid), mode="bicubic", antialias=True)
    return table.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], -1)


def proxy_attention(
    vfm_features: torch.Tensor, beta: float = PROXYCLIP_BETA, gamma: float = PROXYCLIP_GAMMA
) -> torch.Tensor:
    """ProxyCLIP's attention weights from VFM patch features: cosine similarities S, then
    softmax over keys of gamma (S - beta mean(S)) with its negative entries masked out (mean
    over each image's n' x n' map). (B, C', h', w') -> (B, n', n')."""
    units = F.normalize(vfm_features.flatten(2), dim=1)  # (B, C', n')
    similarity = torch.bmm(units.transpose(1, 2), units)  # (B, n', n')
    mean = similarity.mean(dim=(1, 2), keepdim=True)
    logits = (similarity - mean * beta) * gamma
    return torch.softmax(logits.masked_fill(logits < 0, float("-inf")), dim=-1)


def proxy_block(
    block: nn.Module,
    x: torch.Tensor,
    grid: Tuple[int, int],
    vfm_features: torch.Tensor,
    beta: float = PROXYCLIP_BETA,
    gamma: float = PROXYCLIP_GAMMA,
) -> torch.Tensor:
    """CLIP's last block as ProxyCLIP runs it: the proxy attention of ``vfm_features`` over the
    block's values resized (bilinear) to the VFM's grid, out_proj; no residual, no MLP. The [CLS]
    row is plain CLIP's (ProxyCLIP has none). x: (1 + n, B, C) -> (1 + n', B, C)."""
    batch = x.shape[1]
    _, _, v = block_qkv(block, x)  # (B * heads, 1 + n, d)
    v = v[:, 1:].transpose(1, 2).reshape(len(v), -1, *grid)  # (B * heads, d, h, w)
    v = F.interpolate(v, size=tuple(vfm_features.shape[-2:]), mode="bilinear")
    # every head has the same weights: one product over the heads side by side
    v = v.flatten(2).view(batch, -1, v.shape[-2] * v.shape[-1]).transpose(1, 2)  # (B, n', C)
    weights = proxy_attention(vfm_features, beta, gamma).to(v.dtype)  # (B, n', n')
    attended = torch.bmm(weights, v).transpose(0, 1)  # (n', B, C)
    return torch.cat([plain_class_token(block, x), output_projection(block, attended)])


@dataclass(frozen=True)
class ProxyCLIPHead(Head):
    """A head whose last block reads the VFM's features of the same images (``vfm``: set by
    ``configured(vfm=...)``); its dense features come at the VFM's patch grid."""

    vfm: Optional[VisionFoundationModel] = None

    def configured(self, vfm: Optional[VisionFoundationModel] = None, **options) -> "Head":
        head = super().configured(**options)
        return head if vfm is None else replace(head, vfm=vfm)

    def features(self, visual: nn.Module, images: torch.Tensor) -> DenseFeatures:
        if self.vfm is None:
            raise ValueError(
                f"head {self.name!r} needs a vision foundation model; build the model from a "
                "config (MODEL.CLIPTRASE.PROXYCLIP) or pass configured(vfm=...)"
            )
        with torch.profiler.record_function("cliptrase/backbone"):  # the VFM and CLIP
            guide = self.vfm(images)  # (B, C', h', w')
            last_block = functools.partial(self.last_block, vfm_features=guide)
            features = dense_features(visual, images, last_block)
        return replace(features, grid=tuple(guide.shape[-2:]))


register_head(
    ProxyCLIPHead(
        "proxyclip",
        proxy_block,
        PROXYCLIP_LOGIT_SCALE,
        "ProxyCLIP (Lan et al., ECCV 2024): CLIP's last-block values averaged with a vision "
        "foundation model's patch correspondences (DINO, DINOv2 or SAM), no residual, no FFN; "
        "logit scale 40",
        options=("vfm", "beta", "gamma"),
    )
)
