"""Writes the ProxyCLIP reference files of tests/test_proxyclip.py by running the authors' own
segmentor class (mc-lan/ProxyCLIP ``proxyclip_segmentor.py`` with its vendored open_clip) on CPU
in fp32, with the fixtures' tiny CLIP and small random VFMs built from the VFM authors' own code
(DINO's ``vision_transformer.py``, DINOv2's ``dinov2`` package, SAM's ``segment_anything``).

Only what inference does not use is stubbed: mmseg/mmengine (base class, registry, data
preprocessor), openpyxl, einops and MAE; ``torch.hub.load``, ``sam_model_registry`` and
open_clip's ``create_model`` return the small models; ``.half()`` is a no-op (fp32 parity).

    python tests/references/proxyclip/make_references.py --proxyclip DIR --dino DIR \
        --dinov2 DIR --sam DIR --fixtures ../shared/fixtures --out tests/references/proxyclip

DIRs: unpacked copies of the repositories (ProxyCLIP's root; the folder holding DINO's
vision_transformer.py and utils.py; DINOv2's root; SAM's root). Nothing here imports
cliptrase_d2.
"""

import argparse
import json
import os
import sys
import types
from functools import partial

import cv2
import numpy as np
import torch
from torch import nn

# Tiny architectures (the test builds the same ones through timm / segment-anything).
TINY = {
    "dino_vits16": dict(patch_size=16, embed_dim=24, depth=2, num_heads=2),
    "dino_vitb16": dict(patch_size=16, embed_dim=32, depth=2, num_heads=2),
    "dino_vitb8": dict(patch_size=8, embed_dim=32, depth=2, num_heads=2),
    "dinov2_vits14_reg": dict(patch_size=14, embed_dim=24, depth=2, num_heads=2, img_size=518),
    "dinov2_vitb14_reg": dict(patch_size=14, embed_dim=32, depth=2, num_heads=2, img_size=518),
    "sam_vit_b": dict(embed_dim=32, depth=2, num_heads=2, global_attn_indexes=(1,), out_chans=16),
}
# ProxyCLIP's "name; other name" lines: class 0 is the background (thresholded pixels go there)
CLASS_NAMES = ["sky; wall", "cat; kitten", "person", "cup; mug", "grass; tree"]
IMAGES = ("astronaut", "chelsea", "coffee", "vocsample")
PROB_THD = 0.6  # a second label map with ProxyCLIP's probability threshold on
SEED = 20241001


def stub(name, **attributes):
    module = types.ModuleType(name)
    module.__dict__.update(attributes)
    sys.modules[name] = module
    return module


def untidy_(model: nn.Module, generator: torch.Generator) -> None:
    """Every parameter redrawn (LayerNorm and layer-scale weights away from 1 and 1e-5), each
    value exactly representable in fp16 (the reference files store them as fp16)."""
    for name, p in model.named_parameters():
        noise = torch.randn(p.shape, generator=generator)
        if p.dim() >= 2:
            fan_in = int(np.prod(p.shape[1:])) if "pos" not in name and "token" not in name else 4
            value = noise * fan_in**-0.5
        elif name.endswith("bias"):
            value = 0.05 * noise
        elif "gamma" in name:
            value = 0.5 + 0.2 * noise
        else:
            value = 1 + 0.2 * noise
        p.data.copy_(value.to(torch.float16).float())


def read_frame(fixtures: str, image: str):
    """mmseg's test pipeline: cv2 read, keep-ratio resize to (2048, 336) (mmcv.imrescale,
    bilinear), RGB, normalized with CLIP's statistics x 255. -> (1, 3, h, w), (H, W)."""
    bgr = cv2.imread(os.path.join(fixtures, "images", f"{image}.png"))
    height, width = bgr.shape[:2]
    scale = min(2048 / max(height, width), 336 / min(height, width))
    size = (int(width * scale + 0.5), int(height * scale + 0.5))
    resized = cv2.resize(bgr, size, interpolation=cv2.INTER_LINEAR)[..., ::-1]
    mean = np.array([122.771, 116.746, 104.094], np.float32)
    std = np.array([68.501, 66.632, 70.323], np.float32)
    return torch.from_numpy(((resized - mean) / std).transpose(2, 0, 1).copy())[None], (
        height,
        width,
    )


def query_directions(clip, fixtures: str) -> torch.Tensor:
    """The text rows: plain tiny-CLIP patch features of 9 patches of coffee's first window,
    unit-norm (the tiny text tower's embeddings of real names give near-constant label maps).
    -> (9, E)."""
    frame, _ = read_frame(fixtures, "coffee")
    with torch.no_grad():
        tokens = clip.encode_image(frame[..., :336, :336], None, 1.2, 3.0)[0]  # (441, E)
    rows = [2 * 21 + 2, 2 * 21 + 18, 10 * 21 + 10, 18 * 21 + 2, 18 * 21 + 18, 5 * 21 + 12]
    rows += [14 * 21 + 7, 10 * 21 + 19, 7 * 21 + 4]
    return torch.nn.functional.normalize(tokens[rows], dim=-1)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for name in ("proxyclip", "dino", "dinov2", "sam", "fixtures", "out"):
        parser.add_argument(f"--{name}", required=True)
    args = parser.parse_args()
    torch.set_num_threads(2)

    class BaseSegmentor(nn.Module):
        def __init__(self, data_preprocessor=None):
            super().__init__()

    class Registry:
        def register_module(self):
            return lambda cls: cls

    stub("mmseg")
    stub("mmseg.models")
    stub("mmseg.models.segmentors", BaseSegmentor=BaseSegmentor)
    stub("mmseg.models.data_preprocessor", SegDataPreProcessor=lambda **kwargs: None)
    stub("mmseg.registry", MODELS=Registry())
    stub("mmengine")
    stub("mmengine.structures", PixelData=dict)
    stub("openpyxl")
    stub("einops", rearrange=None)
    stub("mae", models_vit=stub("mae.models_vit"))
    stub("mae.pos_embed", interpolate_pos_embed=None)
    sys.path[:0] = [args.proxyclip, args.sam, args.dinov2]
    import segment_anything
    from segment_anything.modeling import ImageEncoderViT

    sys.path.insert(0, args.dino)
    import vision_transformer as dino_vits  # DINO's

    sys.path.remove(args.dino)
    from dinov2.layers import MemEffAttention
    from dinov2.layers import NestedTensorBlock as Block
    from dinov2.models.vision_transformer import DinoVisionTransformer

    import open_clip  # ProxyCLIP's vendored copy
    import proxyclip_segmentor as authors

    torch.Tensor.half = lambda self, *a, **k: self  # fp32 parity: the casts are no-ops
    nn.Module.half = lambda self: self

    open_clip.add_model_config(os.path.join(args.fixtures, "tiny_clip.json"))
    clip = open_clip.create_model("tiny_clip", precision="fp32")
    state = torch.load(os.path.join(args.fixtures, "tiny_clip_openai.pt"), weights_only=True)
    clip.load_state_dict(state)
    authors.create_model = lambda model_type, pretrained, precision: clip

    def build_vfm(name):
        arch = dict(TINY[name])
        if name.startswith("dinov2"):
            return DinoVisionTransformer(
                **arch,
                mlp_ratio=4,
                block_fn=partial(Block, attn_class=MemEffAttention),
                num_register_tokens=4,
                interpolate_antialias=True,
                interpolate_offset=0.0,
                init_values=1.0,
                ffn_layer="mlp",
                block_chunks=0,
            )
        if name.startswith("dino"):
            return dino_vits.VisionTransformer(
                **arch, mlp_ratio=4, qkv_bias=True, norm_layer=partial(nn.LayerNorm, eps=1e-6)
            )
        holder = nn.Module()  # a SAM whose image encoder is the only part ProxyCLIP runs
        holder.image_encoder = ImageEncoderViT(
            **arch,
            img_size=1024,
            mlp_ratio=4,
            norm_layer=partial(nn.LayerNorm, eps=1e-6),
            patch_size=16,
            qkv_bias=True,
            use_rel_pos=True,
            window_size=14,
        )
        return holder

    os.makedirs(args.out, exist_ok=True)
    names_file = os.path.join(args.out, "class_names.txt")
    with open(names_file, "w") as f:
        f.write("\n".join(CLASS_NAMES) + "\n")
    text = query_directions(clip, args.fixtures)
    manifest = {"class_names": CLASS_NAMES, "prob_thd": PROB_THD, "tiny": {}, "files": {}}
    for index, name in enumerate(TINY):
        generator = torch.Generator().manual_seed(SEED + index)
        vfm = build_vfm(name).eval()
        untidy_(vfm, generator)
        torch.hub.load = lambda *a, **k: vfm
        segment_anything.sam_model_registry = {"vit_b": lambda checkpoint=None: vfm}
        authors.sam_model_registry = segment_anything.sam_model_registry
        segmentor = authors.ProxyCLIPSegmentation(
            clip_type="openai",
            model_type="tiny_clip",
            vfm_model=name.split("_")[0],
            name_path=names_file,
            device=torch.device("cpu"),
        )
        windows = []
        encode_image = type(clip).encode_image.__get__(clip)

        def recording(image, external_feats, beta, gamma):
            features = encode_image(image, external_feats, beta, gamma)
            windows.append((features, tuple(external_feats.shape[-2:])))
            return features

        segmentor.clip.encode_image = recording
        segmentor.query_features = text
        arrays = {f"weights/{k}": v.numpy().astype(np.float16) for k, v in vfm.state_dict().items()}
        for image in IMAGES:
            inputs, (height, width) = read_frame(args.fixtures, image)
            windows.clear()
            with torch.no_grad():
                logits = segmentor.forward_slide(inputs, [{"ori_shape": (height, width)}], 112, 336)
                segmentor.prob_thd = 0.0
                pred = segmentor.postprocess_result(logits, None)[0]
                segmentor.prob_thd = PROB_THD
                pred_thd = segmentor.postprocess_result(logits, None)[0]
            features, grid = windows[0]
            features = features / features.norm(dim=-1, keepdim=True)
            cosine = (features @ segmentor.query_features.T)[0].T.reshape(-1, *grid)
            assert torch.isfinite(logits).all(), f"{name} {image}: non-finite logits"
            arrays[f"{image}/pred"] = pred.numpy().astype(np.int16)
            arrays[f"{image}/pred_thd"] = pred_thd.numpy().astype(np.int16)
            arrays[f"{image}/window_cosine"] = cosine.numpy().astype(np.float32)
            arrays[f"{image}/frame_size"] = np.array(inputs.shape[-2:])
            labels = [int((pred == c).sum()) for c in range(len(CLASS_NAMES))]
            thresholded = float((pred_thd != pred).float().mean())
            manifest["files"][f"{name}.npz"] = manifest["files"].get(f"{name}.npz", {})
            manifest["files"][f"{name}.npz"][image] = dict(
                windows=len(windows), grid=list(grid), labels=labels, thresholded=thresholded
            )
        manifest["tiny"][name] = {
            k: list(v) if isinstance(v, tuple) else v for k, v in TINY[name].items()
        }
        arrays["text"] = text.numpy()
        np.savez_compressed(os.path.join(args.out, f"{name}.npz"), **arrays)
        print(name, json.dumps(manifest["files"][f"{name}.npz"]))
    with open(os.path.join(args.out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)


if __name__ == "__main__":
    main()
