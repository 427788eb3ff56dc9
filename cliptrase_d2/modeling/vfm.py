"""Builds ProxyCLIP's vision foundation models: DINO and DINOv2 ViTs through timm, SAM's image
encoder through ``segment-anything``; weights from a checkpoint file (the authors' release or
timm's, read as CLIP's are: no pickled code run, zip CRCs checked), online, or none (random, for
tests)."""

import contextlib
import os
from functools import partial
from pathlib import Path

import torch
from torch import nn

from ..clip_loading import check_values, not_a_file, read_weights
from ..errors import ConfigError, MissingFileError, WeightsError
from ..method.proxyclip import VisionFoundationModel

__all__ = ["VFMS", "build_vfm"]

# name (the authors' torch.hub names) -> (kind, timm model with its online weights, or SAM's URL)
VFMS = {
    "dino_vits16": ("dino", "vit_small_patch16_224.dino"),
    "dino_vitb16": ("dino", "vit_base_patch16_224.dino"),
    "dino_vitb8": ("dino", "vit_base_patch8_224.dino"),
    "dinov2_vits14_reg": ("dinov2", "vit_small_patch14_reg4_dinov2.lvd142m"),
    "dinov2_vitb14_reg": ("dinov2", "vit_base_patch14_reg4_dinov2.lvd142m"),
    "sam_vit_b": ("sam", "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth"),
}
# SAM ViT-B's image encoder: ImageEncoderViT's defaults are ViT-B's (1024 px, 16 px patches,
# width 768, 12 blocks and heads, 256 output channels); segment_anything.build_sam's "vit_b"
# sets these besides
SAM_VIT_B = dict(
    global_attn_indexes=(2, 5, 8, 11),
    norm_layer=partial(nn.LayerNorm, eps=1e-6),
    use_rel_pos=True,
    window_size=14,
)


def build_vfm(
    name: str, weights: str = "online", dtype: torch.dtype = torch.float32, **architecture
) -> VisionFoundationModel:
    """The VFM ``name`` (a key of ``VFMS``) in eval mode, its parameters frozen, in ``dtype``.

    ``weights``: a checkpoint file (``.pth``/``.safetensors``: the authors' release, with
    their key names, or timm's), "online" (timm's published weights through the Hugging Face
    hub; SAM's release URL), or "random" (no weights). ``architecture``: keyword overrides of
    the architecture (timm's ``create_model`` arguments, SAM's ``ImageEncoderViT``'s), for small
    test models.
    """
    if name not in VFMS:
        raise ConfigError(
            f"unknown VFM {name!r} (MODEL.CLIPTRASE.PROXYCLIP.VFM); choose one of {', '.join(VFMS)}"
        )
    kind, source = VFMS[name]
    is_file = weights not in ("online", "random")
    if is_file and not os.path.isfile(weights):
        raise MissingFileError(
            f"VFM weights file {weights!r} (MODEL.CLIPTRASE.PROXYCLIP.VFM_WEIGHTS) "
            f"{not_a_file(Path(weights))}; give the {name} checkpoint's path, or 'online' to "
            "download it"
        )
    if kind == "sam":
        from segment_anything.modeling import ImageEncoderViT

        backbone = ImageEncoderViT(**{**SAM_VIT_B, **architecture})
        state_dict = None
        if weights == "online":
            with _download(name, source):
                state_dict = torch.hub.load_state_dict_from_url(source, weights_only=True)
        elif is_file:
            state_dict = _read(weights)
        if state_dict is not None:  # a whole SAM checkpoint: its image encoder's part
            prefix = "image_encoder."
            if any(key.startswith(prefix) for key in state_dict):
                state_dict = {
                    k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)
                }
            _load(backbone, state_dict, weights)
    else:
        import timm
        from timm.models.vision_transformer import checkpoint_filter_fn

        with _download(name, f"https://huggingface.co/timm/{source}"):
            backbone = timm.create_model(
                source, pretrained=weights == "online", num_classes=0, **architecture
            )
        if is_file:  # DINO's and DINOv2's own key names converted as timm does
            _load(backbone, checkpoint_filter_fn(_read(weights), backbone), weights)
    backbone = backbone.to(dtype).eval().requires_grad_(False)
    return VisionFoundationModel(kind, backbone)


@contextlib.contextmanager
def _download(name: str, source: str):
    """VFM_WEIGHTS 'online' without network (or a failed download): one error saying what to
    download instead of the library's."""
    try:
        yield
    except OSError as error:  # huggingface_hub's cache miss offline, urllib's errors
        raise WeightsError(
            f"Cannot download the {name} weights (MODEL.CLIPTRASE.PROXYCLIP.VFM_WEIGHTS "
            f"'online'): {type(error).__name__}: {str(error).strip().splitlines()[0]}. To run "
            f"offline, download them from {source} on a machine with internet and set "
            "MODEL.CLIPTRASE.PROXYCLIP.VFM_WEIGHTS to the file."
        ) from error


def _read(path: str) -> dict:
    """The tensors of a checkpoint file, read as CLIP's are: data only, zip CRCs checked."""
    try:
        return read_weights(Path(path))[0]
    except WeightsError as error:
        raise WeightsError(
            f"VFM weights (MODEL.CLIPTRASE.PROXYCLIP.VFM_WEIGHTS): {error}"
        ) from None


def _load(backbone: nn.Module, state_dict: dict, weights: str) -> None:
    state_dict = {k: v for k, v in state_dict.items() if not k.startswith("head.")}
    try:
        check_values(backbone.state_dict(), state_dict, weights)
        backbone.load_state_dict(state_dict)
    except WeightsError as error:  # NaN, or integers cast into a weight
        raise WeightsError(
            f"VFM weights (MODEL.CLIPTRASE.PROXYCLIP.VFM_WEIGHTS): {error}"
        ) from None
    except RuntimeError as error:  # its first line names the model, the next ones the keys
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        raise WeightsError(
            f"VFM weights {weights!r} do not fit MODEL.CLIPTRASE.PROXYCLIP.VFM's architecture: "
            f"{lines[min(1, len(lines) - 1)]}"
        ) from None
