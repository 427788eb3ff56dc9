"""The ``proxyclip`` head against ProxyCLIP's own segmentor (tests/references/proxyclip).

For each VFM the reference file holds the small random VFM's weights (the VFM authors' key
names, fp16-exact values), the text rows, and per fixture photo ProxyCLIP's label maps at the
photo's size (probability threshold off and on) and its first window's patch cosines. Here the
VFM is built from those weights by ``build_vfm`` (timm / segment-anything), the model runs
ProxyCLIP's published geometry (shorter side 336, windows 336 / 112 padded evenly to a multiple
of 56) through ``CLIPtrase.forward``, and must give the same label maps and cosines within
fp32 tolerance. make_references.py says how the files were made.
"""

import json
import os

import numpy as np
import pytest
import torch

from conftest import (
    FIXTURES,
    REPO,
    TINY_CONFIG,
    TINY_WEIGHTS,
    WritesMarker,
    flip_byte_in_first_tensor,
    require_fixtures,
)
from cliptrase_d2.errors import ConfigError, MissingFileError, WeightsError
from cliptrase_d2.method.heads import get_head
from cliptrase_d2.method.pipeline import RefinementSettings
from cliptrase_d2.method.preprocess import CLIP_MEAN, CLIP_STD, keep_ratio_size
from cliptrase_d2.method.proxyclip import (
    PROXYCLIP_LOGIT_SCALE,
    PROXYCLIP_WINDOW_MULTIPLE,
    imagenet_normalized,
    proxy_attention,
)
from cliptrase_d2.modeling.vfm import VFMS, build_vfm
from cliptrase_d2.vocabulary import Vocabulary, template_set

REFERENCES = os.path.join(REPO, "tests", "references", "proxyclip")
with open(os.path.join(REFERENCES, "manifest.json")) as _f:
    MANIFEST = json.load(_f)
# ProxyCLIP masks attention logits below 0: a logit within float rounding of 0 (the VFMs here
# differ from their authors' code by about 1e-6) drops or keeps a whole attention weight, which
# moves a few cosines by a few 1e-4 while almost all agree within 1e-5.
COSINE_ATOL, CLOSE_ATOL = 1e-3, 1e-5
MAX_DIFFERING = 2e-5  # fraction of a label map's pixels that may differ (a few near-ties)
# the threshold's map on one photo, SAM (64 x 64 tokens a window) on two (the test's time)
THRESHOLDED_PHOTOS = ("vocsample",)
PHOTOS = {"sam_vit_b": ("coffee", "vocsample")}
TIE = 0.05  # largest top1 - top2 margin (scaled logits) of a pixel whose label may differ
# ProxyCLIP's "a; b" lines, the first its background: here background words after the classes
_LINES = [line.split("; ") for line in MANIFEST["class_names"]]
VOCABULARY = Vocabulary(
    classes=tuple(names[0] for names in _LINES[1:]),
    extra_names=tuple(tuple(names[1:]) for names in _LINES[1:]),
    background=tuple(_LINES[0]),
)
BACKGROUND_ROWS = len(_LINES[0])


def background_last(rows: np.ndarray) -> torch.Tensor:
    """Rows of the reference's text order (background words first) in ours (background last)."""
    rows = torch.from_numpy(rows)
    return torch.cat([rows[BACKGROUND_ROWS:], rows[:BACKGROUND_ROWS]])


def our_labels(labels: np.ndarray) -> np.ndarray:
    """ProxyCLIP's labels (background 0) as ours (background last)."""
    return (labels.astype(np.int64) - 1) % len(_LINES)


def tiny_vfm(name, tmp_path, dtype=torch.float32):
    """The reference's VFM, built from a checkpoint file with its authors' key names."""
    arrays = np.load(os.path.join(REFERENCES, f"{name}.npz"))
    state = {
        k[len("weights/") :]: torch.from_numpy(arrays[k].astype(np.float32))
        for k in arrays.files
        if k.startswith("weights/")
    }
    path = tmp_path / f"{name}.pth"
    torch.save(state, path)
    architecture = dict(MANIFEST["tiny"][name])
    if name == "sam_vit_b":
        architecture["global_attn_indexes"] = tuple(architecture["global_attn_indexes"])
    return build_vfm(name, str(path), dtype, **architecture), arrays


def proxyclip_model(tiny_clip, tiny_tokenizer, vfm, text, prob_thd=0.0):
    from cliptrase_d2.modeling.meta_arch import CLIPtrase

    model = CLIPtrase(
        clip_model=tiny_clip,
        tokenizer=tiny_tokenizer,
        templates=template_set("imagenet80"),
        vocabulary=VOCABULARY,
        head="proxyclip",
        refinement=RefinementSettings(refine="none"),
        protocol="standard",
        standard_short_side=336,
        window_size=336,
        window_stride=112,
        window_padding="even",
        window_multiple=PROXYCLIP_WINDOW_MULTIPLE,
        prob_thd=prob_thd,
        vfm=vfm,
    ).eval()
    model.text_embeddings = lambda vocabulary: text  # the reference's text rows
    return model


def photo(name):
    from cliptrase_d2.data.image_io import read_rgb

    return torch.from_numpy(read_rgb(f"{FIXTURES}/images/{name}.png").transpose(2, 0, 1).copy())


def clip_frame(image: torch.Tensor) -> torch.Tensor:
    """The standard protocol's frame of a (3, H, W) uint8 photo: (3, h, w) normalized."""
    from cliptrase_d2.method.preprocess import resize_linear_uint8

    size = keep_ratio_size(*image.shape[-2:], 336, 2048)
    pixels = resize_linear_uint8(image.permute(1, 2, 0).numpy(), size)
    frame = torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1).float() / 255
    return (frame - torch.tensor(CLIP_MEAN)[:, None, None]) / torch.tensor(CLIP_STD)[:, None, None]


@pytest.mark.parametrize("name", sorted(VFMS))
def test_matches_authors_code(name, tiny_clip, tiny_tokenizer, tmp_path):
    require_fixtures()
    vfm, reference = tiny_vfm(name, tmp_path)
    text = background_last(reference["text"])
    models = {
        key: proxyclip_model(tiny_clip, tiny_tokenizer, vfm, text, prob_thd)
        for key, prob_thd in (("pred", 0.0), ("pred_thd", MANIFEST["prob_thd"]))
    }
    for image_name in PHOTOS.get(name, MANIFEST["files"][f"{name}.npz"]):
        image = photo(image_name)
        frame = clip_frame(image)
        assert tuple(frame.shape[-2:]) == tuple(reference[f"{image_name}/frame_size"])
        with torch.no_grad():
            features = models["pred"].head.features(tiny_clip.visual, frame[None, :, :336, :336])
        cosine = (features.patch_tokens[0] @ text.T).T.reshape(-1, *features.grid)
        error = (cosine - background_last(reference[f"{image_name}/window_cosine"])).abs()
        where = f"{name} {image_name}: first window's patch cosines"
        assert error.max() <= COSINE_ATOL, f"{where} differ by up to {error.max():.1e}"
        assert (error > CLOSE_ATOL).float().mean() <= 0.01, f"{where}: many differ"
        for key, model in models.items():
            if key == "pred_thd" and image_name not in THRESHOLDED_PHOTOS:
                continue
            record = {"image": image, "vocabulary": VOCABULARY, "scores": "soft"}
            with torch.no_grad():
                prediction = model([record])[0]
            labels, expected = (
                prediction["labels"].numpy(),
                our_labels(reference[f"{image_name}/{key}"]),
            )
            assert labels.shape == expected.shape
            differ = labels != expected
            assert differ.mean() <= MAX_DIFFERING, (
                f"{name} {image_name} {key}: {differ.sum()} differ"
            )
            if key == "pred" and differ.any():  # each one a near-tie of our scores
                top2 = prediction["sem_seg"].topk(2, dim=0).values
                margins = (top2[0] - top2[1]).numpy()[differ]
                assert margins.max() <= TIE, f"{name} {image_name}: margins {margins.max():.1e}"


def test_head_is_registered_with_the_authors_logit_scale():
    head = get_head("proxyclip")
    assert head.logit_scale == PROXYCLIP_LOGIT_SCALE == 40.0
    assert set(head.options) == {"vfm", "beta", "gamma"}
    with pytest.raises(ValueError, match="needs a vision foundation model"):
        head.features(None, torch.zeros(1, 3, 32, 32))


def test_vfm_input_is_clip_input_renormalized_for_imagenet():
    pixels = torch.tensor([0.0, 0.5, 1.0])
    rgb = pixels.view(1, 1, 3, 1).expand(1, 3, 3, 1)  # three grey levels, every channel
    clip_input = (rgb - torch.tensor(CLIP_MEAN).view(3, 1, 1)) / torch.tensor(CLIP_STD).view(
        3, 1, 1
    )
    expected = (rgb - torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)) / torch.tensor(
        [0.229, 0.224, 0.225]
    ).view(3, 1, 1)
    torch.testing.assert_close(imagenet_normalized(clip_input), expected, rtol=0, atol=1e-6)
    padding = imagenet_normalized(torch.zeros(1, 3, 1, 1)).flatten()  # CLIP's mean colour
    torch.testing.assert_close(
        padding,
        (torch.tensor(CLIP_MEAN) - torch.tensor([0.485, 0.456, 0.406]))
        / torch.tensor([0.229, 0.224, 0.225]),
    )


def test_proxy_attention_by_hand():
    """gamma (S - beta mean S) with negative entries masked, softmax over keys; the mean is each
    image's own, so an image's weights do not depend on its batch."""
    features = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]).T.reshape(1, 2, 1, 3)
    units = torch.nn.functional.normalize(features.flatten(2), dim=1)[0]
    similarity = units.T @ units  # (3, 3)
    logits = (similarity - similarity.mean() * 1.2) * 3.0
    expected = torch.softmax(logits.masked_fill(logits < 0, float("-inf")), dim=-1)
    weights = proxy_attention(features, beta=1.2, gamma=3.0)[0]
    torch.testing.assert_close(weights, expected)
    assert weights[0, 2] == 0 and weights[2, 0] == 0  # orthogonal patches: masked out
    other = torch.randn(1, 2, 1, 3)
    both = proxy_attention(torch.cat([features, other]), beta=1.2, gamma=3.0)
    torch.testing.assert_close(both[0], weights)


def test_windows_in_a_batch_get_what_they_get_alone(tiny_clip, tmp_path):
    require_fixtures()
    vfm, _ = tiny_vfm("dinov2_vits14_reg", tmp_path)
    head = get_head("proxyclip").configured(vfm=vfm)
    frame = clip_frame(photo("coffee"))
    windows = torch.stack([frame[:, :, :336], frame[:, :, 112:448]])
    with torch.no_grad():
        together = head.features(tiny_clip.visual, windows)
        alone = head.features(tiny_clip.visual, windows[1:])
    assert together.grid == (24, 24) and together.tokens.shape[1] == 1 + 24 * 24
    torch.testing.assert_close(together.tokens[1:], alone.tokens, rtol=0, atol=1e-6)


def test_half_precision_runs_the_vfm_and_the_attention_in_fp16(tiny_clip, tmp_path):
    """As the authors run it on a GPU: CLIP and the VFM in fp16 (CLIP's LayerNorms in fp32)."""
    require_fixtures()
    from cliptrase_d2.clip_loading import build_clip

    frame = clip_frame(photo("coffee"))[None, :, :336, :336]
    tokens = {}
    for dtype, clip in (
        (torch.float32, tiny_clip),
        (torch.float16, build_clip(TINY_CONFIG, TINY_WEIGHTS, precision="fp16")),
    ):
        vfm, _ = tiny_vfm("dinov2_vits14_reg", tmp_path, dtype)
        assert vfm.dtype == dtype and not any(p.requires_grad for p in vfm.parameters())
        with torch.no_grad():
            tokens[dtype] = get_head("proxyclip").configured(vfm=vfm).features(clip.visual, frame)
    assert tokens[torch.float16].tokens.dtype == torch.float16
    torch.testing.assert_close(
        tokens[torch.float16].tokens.float(), tokens[torch.float32].tokens, rtol=0, atol=1e-2
    )


def test_bad_vfm_settings_are_named(tmp_path):
    with pytest.raises(ConfigError, match="unknown VFM 'dino_vitl14'.*dino_vitb8"):
        build_vfm("dino_vitl14", "random")
    with pytest.raises(MissingFileError, match="PROXYCLIP.VFM_WEIGHTS\\) not found"):
        build_vfm("dino_vitb8", str(tmp_path / "missing.pth"))
    (tmp_path / "link.pth").symlink_to(tmp_path / "gone.pth")
    for other, problem in (
        (tmp_path, "is a folder"),
        ("/dev/zero", "is not a regular file \\(a pipe or device\\)"),
        (tmp_path / "link.pth", "is a link to .*gone.pth, which does not exist"),
    ):
        with pytest.raises(MissingFileError, match=f"PROXYCLIP.VFM_WEIGHTS\\) {problem}; give"):
            build_vfm("dino_vitb8", str(other))
    wrong = tmp_path / "wrong.pth"
    torch.save({"pos_embed": torch.zeros(1, 5, 8)}, wrong)
    with pytest.raises(WeightsError, match="do not fit"):
        build_vfm("dino_vitb8", str(wrong), depth=1, embed_dim=16, num_heads=2)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="VFM_WEIGHTS.*garbage.pth is not a readable checkpoint"):
        build_vfm("sam_vit_b", str(garbage), depth=1, embed_dim=16, num_heads=2)


def test_vfm_weights_are_read_as_clip_weights_are(tmp_path, monkeypatch):
    """CLIP's reader reads the VFM's checkpoint too: pickled code is refused without running, a
    record whose bytes disagree with its CRC-32 is named (torch.load would load it), and
    TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD (which would allow a full unpickle) is refused."""
    small = dict(depth=1, embed_dim=16, num_heads=2)
    marker, evil = tmp_path / "marker", tmp_path / "evil.pth"
    torch.save({"pos_embed": torch.zeros(1), "evil": WritesMarker(marker)}, evil)
    with pytest.raises(WeightsError, match=r"VFM_WEIGHTS.*evil.pth.*pickled code.*refused"):
        build_vfm("dino_vitb8", str(evil), **small)
    assert not marker.exists()

    good = tmp_path / "good.pth"
    torch.save(build_vfm("dino_vitb8", "random", **small).backbone.state_dict(), good)
    build_vfm("dino_vitb8", str(good), **small)  # the same file, intact, loads
    flip_byte_in_first_tensor(good)
    with pytest.raises(WeightsError, match=r"VFM_WEIGHTS.*good.pth.*CRC-32.*damaged"):
        build_vfm("dino_vitb8", str(good), **small)

    torch.save(build_vfm("dino_vitb8", "random", **small).backbone.state_dict(), good)
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    with pytest.raises(WeightsError, match=r"VFM_WEIGHTS.*TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"):
        build_vfm("dino_vitb8", str(good), **small)


@pytest.mark.parametrize("change", ["nan", "int"])
def test_vfm_weights_that_load_state_dict_would_take_silently_are_refused(tmp_path, change):
    """Before, NaN weights loaded and integer ones were cast, without a word (CLIP's were
    refused)."""
    small = dict(depth=1, embed_dim=16, num_heads=2)
    state = build_vfm("dino_vitb8", "random", **small).backbone.state_dict()
    key = "patch_embed.proj.weight"
    state[key] = state[key].int() if change == "int" else torch.full_like(state[key], torch.nan)
    torch.save(state, tmp_path / "vfm.pth")
    what = "as torch.int32, not floating point" if change == "int" else "NaN or infinite values"
    with pytest.raises(WeightsError, match=f"VFM_WEIGHTS.*vfm.pth holds .*{what}"):
        build_vfm("dino_vitb8", str(tmp_path / "vfm.pth"), **small)


def test_online_vfm_weights_without_network_say_what_to_download(monkeypatch):
    """Before, urllib's URLError (SAM) or huggingface_hub's LocalEntryNotFoundError (DINO, the
    default VFM_WEIGHTS 'online') ended the run."""
    import urllib.error

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(
        WeightsError,
        match=r"sam_vit_b weights.*VFM_WEIGHTS 'online'.*URLError.*"
        r"download them from https://dl.fbaipublicfiles.com/.*VFM_WEIGHTS to the",
    ):
        build_vfm("sam_vit_b", "online", depth=1, embed_dim=16, num_heads=2)


# (short side, window, stride, prob_thd) of ProxyCLIP's configs/cfg_<dataset>.py
PUBLISHED = {
    "voc21": (336, 336, 112, 0.2),
    "voc20": (336, 336, 112, 0.0),
    "pc60": (336, 336, 112, 0.15),
    "pc59": (336, 336, 112, 0.0),
    "coco_object80": (336, 336, 112, 0.25),
    "coco_stuff171": (336, 336, 112, 0.0),
    "ade150": (448, 336, 112, 0.0),
    "cityscapes19": (448, 224, 112, 0.0),
}


@pytest.mark.parametrize("benchmark", sorted(PUBLISHED))
def test_published_configs_are_the_authors_setting(benchmark):
    from cliptrase_d2.engine.trainer import load_config
    from cliptrase_d2.vocabulary import resolve_vocabulary

    path = os.path.join(REPO, "configs", "proxyclip", "published", f"{benchmark}.yaml")
    c = load_config(path).MODEL.CLIPTRASE
    assert (c.HEAD, c.PUBLISHED, c.VOCABULARY) == ("proxyclip", *[f"proxyclip/{benchmark}"] * 2)
    assert (c.PROTOCOL, c.STANDARD_LONG_SIDE, c.TEMPLATES, c.REFINE) == (
        "standard",
        2048,
        "imagenet80",
        "none",
    )
    assert (c.WINDOW_PADDING, c.WINDOW_MULTIPLE, c.LOGIT_SCALE, c.AREA_THD) == ("even", 56, 40, 0)
    assert (c.PROXYCLIP.VFM, c.PROXYCLIP.VFM_WEIGHTS) == ("dino_vitb8", "online")
    assert (c.STANDARD_SHORT_SIDE, c.WINDOW_SIZE, c.WINDOW_STRIDE, c.PROB_THD) == (
        PUBLISHED[benchmark]
    )
    vocabulary = resolve_vocabulary(c.VOCABULARY)
    assert vocabulary.num_classes == resolve_vocabulary(benchmark).num_classes
    if benchmark in ("voc21", "coco_object80"):  # its own lists: single names, sky ... rail
        assert not vocabulary.has_multiple_names
        assert vocabulary.background[:3] == ("sky", "wall", "tree")
        assert len(vocabulary.background) == (26 if benchmark == "voc21" else 17)


def test_standard_config_and_model_from_config(tiny_opts, tmp_path, monkeypatch):
    """The common protocol's config builds the model with its VFM as a submodule (so ``.to()``
    moves it); an unknown VFM or a missing weights file is refused naming the key."""
    from detectron2.modeling import build_model

    from cliptrase_d2.engine.trainer import load_config
    from cliptrase_d2.modeling import meta_arch, vfm as vfm_module

    path = os.path.join(REPO, "configs", "proxyclip", "standard.yaml")
    built = []

    def small_vfm(name, weights, dtype):
        built.append((name, weights, dtype))
        return build_vfm(name, "random", dtype, depth=1, embed_dim=16, num_heads=2)

    monkeypatch.setattr(vfm_module, "build_vfm", small_vfm)
    cfg = load_config(path, [*tiny_opts, "MODEL.CLIPTRASE.PROXYCLIP.VFM", "dinov2_vits14_reg"])
    model = build_model(cfg).eval()
    assert isinstance(model, meta_arch.CLIPtrase) and model.head.name == "proxyclip"
    assert built == [("dinov2_vits14_reg", "online", torch.float32)]
    assert model.head.vfm is model.vfm and "vfm" in dict(model.named_children())
    assert (model.window_size, model.refinement.refine, model.window_multiple) == (224, "none", 0)
    image = photo("chelsea")
    output = model([{"image": image, "vocabulary": "cat, grass, sky"}])[0]["sem_seg"]
    assert output.shape == (3, *image.shape[-2:]) and torch.isfinite(output).all()
    monkeypatch.undo()
    for opts, error, message in (
        (["MODEL.CLIPTRASE.PROXYCLIP.VFM", "dino_vitl14"], ConfigError, "unknown VFM"),
        (
            ["MODEL.CLIPTRASE.PROXYCLIP.VFM_WEIGHTS", str(tmp_path / "no.pth")],
            MissingFileError,
            "PROXYCLIP.VFM_WEIGHTS",
        ),
    ):
        with pytest.raises(error, match=message):
            build_model(load_config(path, [*tiny_opts, *opts]))


def test_region_refinement_is_refused(tiny_clip, tiny_tokenizer):
    from cliptrase_d2.modeling.meta_arch import CLIPtrase

    for refine in ("vote", "mean"):
        with pytest.raises(ConfigError, match=f"REFINE '{refine}': set MODEL.CLIPTRASE.REFINE"):
            CLIPtrase(
                clip_model=tiny_clip,
                tokenizer=tiny_tokenizer,
                templates=template_set("vild14"),
                head="proxyclip",
                refinement=RefinementSettings(refine=refine),
            )
