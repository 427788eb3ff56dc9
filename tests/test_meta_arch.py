"""The CLIPtrase meta-architecture through Detectron2's config and build_model."""

import logging

import numpy as np
import pytest
import torch
from PIL import Image
from detectron2.modeling import build_model

from conftest import FIXTURES, REPO, require_fixtures
from cliptrase_d2.data.image_io import read_rgb
from cliptrase_d2.config import load_config
from cliptrase_d2.errors import InputError
from cliptrase_d2.method.preprocess import CLIP_MEAN, CLIP_STD

PAPER_224 = f"{REPO}/configs/paper/Base-paper-224.yaml"
STANDARD = f"{REPO}/configs/standard/Base-standard.yaml"


@pytest.fixture(scope="module")
def photo():
    require_fixtures()
    return torch.from_numpy(
        read_rgb(f"{FIXTURES}/images/coffee.png").transpose(2, 0, 1).copy()
    )  # (3, 400, 600)


def _model(tiny_opts, config=PAPER_224, **overrides):
    opts = list(tiny_opts) + ["MODEL.CLIPTRASE.VOCABULARY", "cup, table, wall, plant"]
    for key, value in overrides.items():
        opts += [f"MODEL.CLIPTRASE.{key}", str(value)]
    return build_model(load_config(config, opts)).eval()


def _clip_tensor(pixels):
    """(H, W, 3) uint8 -> (1, 3, H, W) CLIP-normalized float32, as the model normalizes."""
    image = torch.from_numpy(pixels.copy()).permute(2, 0, 1).float() / 255
    mean, std = torch.tensor(CLIP_MEAN).view(3, 1, 1), torch.tensor(CLIP_STD).view(3, 1, 1)
    return ((image - mean) / std)[None].contiguous()


def _hwc(image):
    return image.permute(1, 2, 0).contiguous().numpy()


def _labels(model, image, **extra):
    return model([{"image": image, **extra}])[0]["sem_seg"].argmax(dim=0)


def test_paper_protocol_predicts_the_center_crop(tiny_opts, photo):
    """The 400 x 600 photo: shorter side to 224 (bicubic) gives 224 x 336, the center crop is
    columns 56..279; the output is the method's one-hot prediction on exactly those pixels."""
    model = _model(tiny_opts)
    output = model([{"image": photo, "height": 400, "width": 600}])[0]["sem_seg"]
    assert output.shape == (4, 224, 224)
    assert torch.equal(output.sum(dim=0), torch.ones(224, 224))  # vote: one-hot scores
    resized = Image.fromarray(photo.permute(1, 2, 0).numpy()).resize((336, 224), Image.BICUBIC)
    crop = np.asarray(resized)[:, 56:280]
    np.testing.assert_array_equal(model.frame(_hwc(photo)), crop)
    with torch.no_grad():
        expected = model._predict(_clip_tensor(crop), model.vocabulary, soft_scores=False).scores[0]
    assert torch.equal(output, expected)


def test_the_test_mapper_crops_in_the_loader_with_the_same_prediction(tiny_opts, photo, tmp_path):
    """Under the paper protocol the test mapper gives the model the S x S crop (the bicubic
    resize runs in the loader's processes), keeps the original height/width for the ground
    truth, and the prediction is bit for bit the one from the whole photo; an S x S image is
    its own crop."""
    from cliptrase_d2.data.dataset_mapper import SemSegTestMapper

    model = _model(tiny_opts, DBSCAN_EPS=0.5)
    path = tmp_path / "coffee.png"
    Image.fromarray(photo.permute(1, 2, 0).numpy()).save(path)
    cfg = load_config(PAPER_224, list(tiny_opts))
    record = SemSegTestMapper(cfg)({"file_name": str(path)})
    assert record["image"].shape == (3, 224, 224) and (record["height"], record["width"]) == (
        400,
        600,
    )
    crop = model.frame(_hwc(photo))
    np.testing.assert_array_equal(record["image"].permute(1, 2, 0).numpy(), crop)
    np.testing.assert_array_equal(model.frame(_hwc(record["image"])), crop)
    whole, cropped = model([{"image": photo}, record])
    assert torch.equal(whole["sem_seg"], cropped["sem_seg"])
    bgr = SemSegTestMapper(load_config(PAPER_224, list(tiny_opts) + ["INPUT.FORMAT", "BGR"]))
    assert torch.equal(bgr({"file_name": str(path)})["image"], record["image"].flip(0))
    standard = SemSegTestMapper(load_config(STANDARD, list(tiny_opts)))
    record = standard({"file_name": str(path)})  # the keep-ratio frame, at short side 336
    assert record["image"].shape == (3, 336, 504) and (record["height"], record["width"]) == (
        400,
        600,
    )
    model = _model(tiny_opts, STANDARD)
    assert torch.equal(model([record])[0]["sem_seg"], model([{"image": photo}])[0]["sem_seg"])


def test_the_mapper_refuses_or_frames_as_the_model_does(tiny_opts, tmp_path):
    """Images refused (a resized frame over MAX_PIXELS) are refused by the mapper with the
    model's own error, before any resize; an image smaller than one patch is refused by the
    model from the original height/width the mapper passes on; an image the protocol enlarges
    gets the same prediction from the mapper's frame as whole."""
    from cliptrase_d2.data.dataset_mapper import SemSegTestMapper

    rng = np.random.default_rng(0)
    small, wide = (
        rng.integers(0, 256, shape, dtype=np.uint8) for shape in ((8, 8, 3), (300, 3000, 3))
    )
    upscaled = rng.integers(0, 256, (150, 200, 3), dtype=np.uint8)
    paths = {}
    for name, pixels in (("small", small), ("wide", wide), ("upscaled", upscaled)):
        paths[name] = str(tmp_path / f"{name}.png")
        Image.fromarray(pixels).save(paths[name])

    def mapper(max_pixels):
        opts = list(tiny_opts) + ["MODEL.CLIPTRASE.MAX_PIXELS", str(max_pixels)]
        return SemSegTestMapper(load_config(PAPER_224, opts))

    with pytest.raises(InputError, match="wide.png: .*MAX_PIXELS"):
        mapper(224 * 2239)({"file_name": paths["wide"]})  # 224 x 2240 resized frame
    assert mapper(224 * 2240)({"file_name": paths["wide"]})["image"].shape == (3, 224, 224)
    model = _model(tiny_opts, MAX_PIXELS=224 * 2239)
    with pytest.raises(InputError, match="MAX_PIXELS"):
        model([{"image": torch.from_numpy(wide.transpose(2, 0, 1).copy())}])
    record = mapper(50_000_000)({"file_name": paths["small"]})
    assert record["image"].shape == (3, 224, 224) and (record["height"], record["width"]) == (8, 8)
    with pytest.raises(InputError, match="small.png.*8x8 pixels is smaller than one 16x16"):
        model([record])
    record = mapper(50_000_000)({"file_name": paths["upscaled"]})
    whole = torch.from_numpy(upscaled.transpose(2, 0, 1).copy())
    assert torch.equal(model([record])[0]["sem_seg"], model([{"image": whole}])[0]["sem_seg"])


def test_paper_size_336(tiny_opts, photo):
    model = _model(tiny_opts, PAPER_SIZE=336, DBSCAN_EPS=1.1, DBSCAN_MIN_SAMPLES=7)
    assert model([{"image": photo}])[0]["sem_seg"].shape == (4, 336, 336)


def test_standard_protocol_is_the_average_of_its_windows(tiny_opts, photo):
    """A 224 x 336 image at shorter side 224: two 224 windows (columns 0 and 112), each predicted
    from CLIP-normalized pixels, their scores averaged where they overlap."""
    model = _model(
        tiny_opts,
        STANDARD,
        STANDARD_SHORT_SIDE=224,
        WINDOW_SIZE=224,
        WINDOW_STRIDE=112,
        REFINE="none",
    )
    image = torch.from_numpy(
        np.asarray(Image.fromarray(photo.permute(1, 2, 0).numpy()).resize((336, 224))).copy()
    )
    image = image.permute(2, 0, 1).contiguous()
    output = model([{"image": image}])[0]["sem_seg"]
    pixels = (image.float() / 255 - torch.tensor(CLIP_MEAN).view(3, 1, 1)) / torch.tensor(
        CLIP_STD
    ).view(3, 1, 1)
    with torch.no_grad():
        windows = model._predict(
            torch.stack([pixels[:, :, :224], pixels[:, :, 112:]]),
            model.vocabulary,
            soft_scores=False,
        ).scores
    total = torch.zeros(4, 224, 336)
    count = torch.zeros(1, 224, 336)
    for window, left in zip(windows, (0, 112)):
        total[:, :, left : left + 224] += window
        count[:, :, left : left + 224] += 1
    assert count.min() == 1 and count.max() == 2
    torch.testing.assert_close(output, total / count, rtol=1e-5, atol=1e-5)
    assert (
        output.amax(dim=(1, 2)) - output.amin(dim=(1, 2))
    ).min() > 1.0  # not between constant maps


def test_standard_protocol_predicts_at_the_requested_size(tiny_opts, photo):
    model = _model(tiny_opts, STANDARD, STANDARD_SHORT_SIDE=224, WINDOW_SIZE=224, WINDOW_STRIDE=112)
    output = model([{"image": photo, "height": 200, "width": 300}])[0]["sem_seg"]
    assert output.shape == (4, 200, 300)
    assert model([{"image": photo}])[0]["sem_seg"].shape == (4, 400, 600)


def test_window_settings_change_the_windows(tiny_opts, photo):
    model = _model(tiny_opts, STANDARD, STANDARD_SHORT_SIDE=224, WINDOW_BATCH=1)
    seen = []
    original = model._predict
    model._predict = lambda images, *args, **kwargs: (
        seen.append(images.shape) or original(images, *args, **kwargs)
    )
    model([{"image": photo}])
    assert [s[0] for s in seen] == [1, 1] and all(
        s[-2:] == (224, 224) for s in seen
    )  # 224 x 336 -> 2 windows
    seen.clear()
    model.window_size, model.window_stride, model.window_batch = 160, 160, 8
    model([{"image": photo}])
    assert [s[0] for s in seen] == [6] and seen[0][-2:] == (
        160,
        160,
    )  # 2 x 3 windows of 160 (last shifted)


def test_bgr_input_format_is_flipped(tiny_opts, photo):
    rgb = _model(tiny_opts)
    bgr = _model(tiny_opts + ["INPUT.FORMAT", "BGR"])
    torch.testing.assert_close(
        rgb([{"image": photo}])[0]["sem_seg"], bgr([{"image": photo.flip(0)}])[0]["sem_seg"]
    )


def test_refinements_differ_and_mean_is_soft(tiny_opts):
    require_fixtures()
    image = torch.from_numpy(read_rgb(f"{FIXTURES}/images/astronaut.png").transpose(2, 0, 1).copy())
    outputs = {
        r: _model(tiny_opts, REFINE=r, VOCABULARY="pc59")([{"image": image}])[0]["sem_seg"]
        for r in ("vote", "mean", "none")
    }
    labels = {r: o.argmax(0) for r, o in outputs.items()}
    assert not torch.equal(labels["vote"], labels["none"])
    assert not torch.equal(outputs["mean"], outputs["none"])
    assert outputs["mean"].unique().numel() > 2  # soft scores, not one-hot


def test_dbscan_and_region_settings_reach_the_clustering(tiny_opts, monkeypatch):
    require_fixtures()
    import cliptrase_d2.method.pipeline as pipeline

    calls = []
    real_cluster, real_region = pipeline.cluster_patches, pipeline.region_map
    monkeypatch.setattr(
        pipeline,
        "cluster_patches",
        lambda a, eps, m: calls.append(("dbscan", eps, m)) or real_cluster(a, eps, m),
    )
    monkeypatch.setattr(
        pipeline,
        "region_map",
        lambda a, ids, g, s, med, up: (
            calls.append(("region", med, up)) or real_region(a, ids, g, s, med, up)
        ),
    )
    image = torch.from_numpy(read_rgb(f"{FIXTURES}/images/astronaut.png").transpose(2, 0, 1).copy())
    _model(tiny_opts, DBSCAN_EPS=0.4, DBSCAN_MIN_SAMPLES=5, MEDIAN_SIZE=5, REGION_UPSAMPLE=2)(
        [{"image": image}]
    )
    assert calls == [("dbscan", 0.4, 5), ("region", 5, 2)]


def test_logit_scale_image_weighting_and_templates(tiny_opts):
    require_fixtures()
    assert _model(tiny_opts).logit_scale == pytest.approx(100.0, rel=1e-6)
    assert _model(tiny_opts, LOGIT_SCALE=40.0).logit_scale == 40.0
    assert _model(tiny_opts, HEAD="clip").head.name == "clip"
    assert len(_model(tiny_opts, TEMPLATES="vild14").templates) == 14
    image = torch.from_numpy(read_rgb(f"{FIXTURES}/images/chelsea.png").transpose(2, 0, 1).copy())
    plain = _model(tiny_opts, REFINE="none")
    weighted = _model(tiny_opts, REFINE="none", IMAGE_LOGIT_WEIGHTING=True)
    a, b = plain([{"image": image}])[0]["sem_seg"], weighted([{"image": image}])[0]["sem_seg"]
    crop = _clip_tensor(weighted.frame(_hwc(image)))
    with torch.no_grad():  # the image-level logits, from the [CLS] token of the same forward
        features = weighted.head.features(weighted.clip_model.visual, crop)
        text = weighted.text_embeddings(weighted.vocabulary)
        cls_logits = (weighted.logit_scale * features.cls_tokens @ text.t())[0]
    torch.testing.assert_close(b, a * cls_logits[:, None, None], rtol=1e-4, atol=1e-4)
    assert not torch.allclose(a, b, rtol=1e-2)


def test_background_words_config(tiny_opts):
    require_fixtures()
    model = build_model(
        load_config(
            PAPER_224,
            list(tiny_opts)
            + [
                "MODEL.CLIPTRASE.VOCABULARY",
                "cat, grass",
                "MODEL.CLIPTRASE.BACKGROUND_WORDS",
                "['sky', 'wall']",
            ],
        )
    )
    assert model.vocabulary.class_names == ["cat", "grass", "background"]
    assert model.text_embeddings(model.vocabulary).shape[0] == 4


def test_bf16_precision_reaches_the_model_and_mostly_agrees(tiny_opts):
    require_fixtures()
    image = torch.from_numpy(read_rgb(f"{FIXTURES}/images/astronaut.png").transpose(2, 0, 1).copy())
    fp32_model = _model(tiny_opts, REFINE="none", VOCABULARY="voc20")
    bf16_model = _model(tiny_opts, REFINE="none", VOCABULARY="voc20", PRECISION="bf16")
    assert bf16_model.clip_model.visual.conv1.weight.dtype == torch.bfloat16
    assert fp32_model.clip_model.visual.conv1.weight.dtype == torch.float32
    fp32 = fp32_model([{"image": image}])[0]["sem_seg"]
    bf16 = bf16_model([{"image": image}])[0]["sem_seg"]
    assert not torch.equal(fp32, bf16)
    labels = fp32.argmax(dim=0)
    assert labels.unique().numel() >= 5  # agreement is measured where it can fail
    assert (labels == bf16.argmax(dim=0)).float().mean() > 0.95


def test_training_is_refused(tiny_opts, photo):
    model = _model(tiny_opts).train()
    with pytest.raises(RuntimeError, match="training-free"):
        model([{"image": photo}])


def test_device_falls_back_to_cpu_with_one_log_line(tiny_opts, project_log):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available: nothing falls back")
    opts = [o for o in tiny_opts]
    opts[opts.index("MODEL.DEVICE") + 1] = "cuda"
    with project_log.at_level(logging.INFO, logger="cliptrase_d2"):
        cfg = load_config(PAPER_224, opts)
    assert cfg.MODEL.DEVICE == "cpu"
    assert sum("CUDA is not available" in r.getMessage() for r in project_log.records) == 1


def test_unknown_config_key_names_it_and_suggests(tiny_opts):
    with pytest.raises(
        KeyError, match="MODEL.CLIPTRASE.DBSCAN_EPSILON.*MODEL.CLIPTRASE.DBSCAN_EPS"
    ):
        load_config(PAPER_224, ["MODEL.CLIPTRASE.DBSCAN_EPSILON", "0.5"])


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("REFINE", "median", "unknown refinement"),
        ("PROTOCOL", "fancy", "unknown protocol"),
        ("HEAD", "segformer", "unknown head 'segformer'.*cliptrase"),
        ("DBSCAN_EPS", "-1.0", "eps > 0"),
        ("PAPER_SIZE", "8", "PAPER_SIZE must be at least 16 \\(one CLIP patch\\), got 8"),
        ("STANDARD_SHORT_SIDE", "0", "STANDARD_SHORT_SIDE must be at least 16"),
        ("WINDOW_BATCH", "0", "WINDOW_BATCH must be at least 1, got 0"),
        ("WINDOW_STRIDE", "-112", "WINDOW_STRIDE must be at least 1"),
        ("REGION_UPSAMPLE", "0", "REGION_UPSAMPLE"),
        ("MEDIAN_SIZE", "0", "MEDIAN_SIZE"),
    ],
)
def test_bad_settings_are_named(tiny_opts, key, value, message):
    with pytest.raises(ValueError, match=message):
        _model(tiny_opts, **{key: value})


def test_a_stride_over_the_window_is_named_when_the_model_is_built(tiny_opts):
    """Before, the model was built and every image ended in the method's ValueError, which names
    no setting."""
    with pytest.raises(ValueError, match="WINDOW_STRIDE 500 is larger than WINDOW_SIZE 224.*224"):
        _model(tiny_opts, STANDARD, WINDOW_STRIDE=500)


def test_each_record_brings_its_vocabulary_and_image_too_small(tiny_opts):
    model = _model(tiny_opts, REFINE="none")
    image = torch.zeros(3, 64, 64, dtype=torch.uint8)
    assert model([{"image": image, "vocabulary": "voc20"}])[0]["sem_seg"].shape[0] == 20
    assert model([{"image": image}])[0]["sem_seg"].shape[0] == 4  # MODEL.CLIPTRASE.VOCABULARY
    with pytest.raises(ValueError, match="tiny.png.*8x12 pixels is smaller than one 16x16"):
        model([{"image": torch.zeros(3, 8, 12, dtype=torch.uint8), "file_name": "tiny.png"}])


def test_forward_reads_no_vocabulary_file(tiny_opts, tmp_path):
    """A record's vocabulary is names, a key or a Vocabulary: a file is resolved before the
    forward (the API does), never read in it."""
    from cliptrase_d2.api import Segmenter
    from cliptrase_d2.errors import InputError

    names = tmp_path / "names.txt"
    names.write_text("cat\ndog\n")
    model = _model(tiny_opts, REFINE="none")
    image = torch.zeros(3, 64, 64, dtype=torch.uint8)
    with pytest.raises(InputError, match="names.txt' is a file: resolve it before"):
        model([{"image": image, "vocabulary": str(names)}])
    assert Segmenter(model).segment(image.permute(1, 2, 0).numpy(), str(names)).class_names == [
        "cat",
        "dog",
    ]


@pytest.mark.parametrize("config", [PAPER_224, STANDARD])
def test_a_batch_may_mix_vocabularies(tiny_opts, photo, config):
    """Each image of a batch gets its own vocabulary's classes, exactly as when it runs alone."""
    model = _model(tiny_opts, config, STANDARD_SHORT_SIDE=224)
    other = torch.from_numpy(read_rgb(f"{FIXTURES}/images/chelsea.png").transpose(2, 0, 1).copy())
    records = [
        {"image": photo},
        {"image": other, "vocabulary": "cat, grass, wall"},
        {"image": other},
        {"image": photo, "vocabulary": "voc20"},
    ]
    outputs = model(records)
    assert [o["sem_seg"].shape[0] for o in outputs] == [4, 3, 4, 20]
    for record, output in zip(records, outputs):
        alone = model([record])[0]["sem_seg"]
        assert torch.equal(alone, output["sem_seg"])


def test_records_of_a_dataset_use_its_vocabulary(tiny_opts, photo):
    """Without MODEL.CLIPTRASE.VOCABULARY a record's ``dataset_name`` picks the vocabulary from the
    dataset's metadata; with it, a dataset whose class count differs is a named error."""
    require_fixtures()
    model = build_model(
        load_config(PAPER_224, list(tiny_opts) + ["MODEL.CLIPTRASE.REFINE", "none"])
    ).eval()
    assert model.vocabulary is None
    out = model(
        [
            {"image": photo, "dataset_name": "cliptrase_fixtures_pc59"},
            {"image": photo, "dataset_name": "cliptrase_fixtures_voc21"},
        ]
    )
    assert [o["sem_seg"].shape[0] for o in out] == [59, 21]
    with pytest.raises(ValueError, match="no vocabulary for this input"):
        model([{"image": photo}])
    with pytest.raises(KeyError, match="'no_such_dataset' is not registered"):
        model([{"image": photo, "dataset_name": "no_such_dataset"}])
    with pytest.raises(
        ValueError,
        match="VOCABULARY has 4 output classes but dataset 'cliptrase_fixtures_pc59' has 59",
    ):
        _model(tiny_opts)([{"image": photo, "dataset_name": "cliptrase_fixtures_pc59"}])


def test_text_embeddings_are_kept_per_vocabulary(tiny_opts, monkeypatch):
    """The same vocabulary again (an evaluation's next batch, the next API call) is not
    re-encoded; the cache holds the last ``cached_vocabularies`` vocabularies."""
    from cliptrase_d2.modeling import meta_arch
    from cliptrase_d2.vocabulary import resolve_vocabulary

    model = _model(tiny_opts, REFINE="none", TEXT_CACHE_DIR="none")
    encoded = []
    encode = meta_arch.text_embeddings
    monkeypatch.setattr(
        meta_arch,
        "text_embeddings",
        lambda m, t, names, templates: encoded.append(names) or encode(m, t, names, templates),
    )
    voc20 = resolve_vocabulary("voc20")
    embeddings = model.text_embeddings(voc20)
    assert model.text_embeddings(resolve_vocabulary("VOC20")) is embeddings and len(encoded) == 1
    with_sky = model.text_embeddings(resolve_vocabulary("voc20", ["sky"]))
    assert with_sky.shape[0] == 21 and len(encoded) == 2
    for index in range(model.cached_vocabularies):
        model.text_embeddings(resolve_vocabulary(f"cat, dog{index}"))
    assert model._text_embeddings.cache_info().currsize == model.cached_vocabularies
    assert (
        model.text_embeddings(voc20) is not embeddings
        and len(encoded) == 3 + model.cached_vocabularies
    )


def test_dbscan_defaults_scale_with_the_patch_grid(tiny_opts):
    from cliptrase_d2.method.pipeline import dbscan_for_grid

    assert dbscan_for_grid(14) == (0.7, 3) and dbscan_for_grid(21) == (
        1.1,
        7,
    )  # the paper's two settings
    assert dbscan_for_grid(16) == (pytest.approx(0.8143, abs=1e-4), 4)  # ViT-L/14 at 224
    assert dbscan_for_grid(7) == (
        pytest.approx(0.3),
        2,
    )  # ViT-B/32 at 224: min_samples floored at 2
    standard = _model(tiny_opts, STANDARD)  # automatic: 224 windows of 16-pixel patches
    assert (standard.refinement.dbscan_eps, standard.refinement.dbscan_min_samples) == (0.7, 3)
    paper = _model(tiny_opts, PAPER_SIZE=336, DBSCAN_EPS=0.0, DBSCAN_MIN_SAMPLES=0)
    assert (paper.refinement.dbscan_eps, paper.refinement.dbscan_min_samples) == (1.1, 7)


def test_other_patch_sizes_work(tmp_path, tiny_tokenizer):
    """A backbone with 14-pixel patches (as ViT-L/14): grid, positional table and windows follow."""
    import json

    import open_clip

    from cliptrase_d2.modeling.meta_arch import CLIPtrase
    from cliptrase_d2.vocabulary import template_set

    config = json.load(open(f"{FIXTURES}/tiny_clip.json"))
    config["vision_cfg"]["patch_size"] = 14
    path = tmp_path / "tiny_patch14.json"
    path.write_text(json.dumps(config))
    open_clip.add_model_config(str(path))
    clip = open_clip.create_model("tiny_patch14").eval()
    for protocol in ("paper", "standard"):
        model = CLIPtrase(
            clip_model=clip,
            tokenizer=tiny_tokenizer,
            vocabulary="cat, dog, grass",
            templates=template_set("vild14"),
            protocol=protocol,
            standard_short_side=230,
            window_size=224,
            window_stride=112,
        ).eval()
        image = torch.randint(0, 255, (3, 230, 300), dtype=torch.uint8)
        output = model([{"image": image}])[0]["sem_seg"]
        assert output.shape == ((3, 224, 224) if protocol == "paper" else (3, 230, 300))
        assert torch.isfinite(output).all()


def test_out_of_memory_splits_the_batch_and_names_the_fix(caplog):
    """A batch that does not fit runs in halves with the same per-image results; one image that
    does not fit is an OutOfMemoryError that says what to change (never a CPU fallback)."""
    from cliptrase_d2.method.pipeline import Prediction
    from cliptrase_d2.method.pipeline import predict_within_memory

    calls = []

    def predict_batch(images):  # fits two images at a time
        calls.append(len(images))
        if len(images) > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return Prediction(images[:, 0].long(), images * 2)

    images = torch.arange(5 * 3 * 4 * 4, dtype=torch.float32).reshape(5, 3, 4, 4)
    with caplog.at_level(logging.WARNING, logger="cliptrase_d2"):
        result = predict_within_memory(predict_batch, images)
    assert calls == [5, 3, 2, 1, 2]
    assert torch.equal(result.labels, images[:, 0].long()) and torch.equal(
        result.scores, images * 2
    )
    # one warning for the batch, naming the parts it ran as (3 was split again: not a second line)
    assert [r.getMessage() for r in caplog.records] == [
        "out of memory on a batch of 5 images: ran it as 2 + 1 + 2"
    ]

    def never_fits(images):
        raise torch.cuda.OutOfMemoryError("out of memory")

    with pytest.raises(torch.cuda.OutOfMemoryError, match="one 4x4 window.*PRECISION fp16"):
        predict_within_memory(never_fits, images[:1], "window")


def _fixture_images(*names):
    require_fixtures()
    return [
        torch.from_numpy(read_rgb(f"{FIXTURES}/images/{name}.png").transpose(2, 0, 1).copy())
        for name in names
    ]


@pytest.mark.parametrize("refine", ["mean", "vote", "pamr"])
def test_standard_windows_of_a_batch_cross_images_and_each_image_gets_its_own(tiny_opts, refine):
    """At short side 224 the photos give 2 + 3 + 1 + 2 windows (400x600, 300x451, 512x512,
    375x500): with WINDOW_BATCH 3 the backbone sees batches of 3, 3 and 2 windows spanning the
    images, and every image gets exactly the output it gets alone, at its own size."""
    model = _model(tiny_opts, STANDARD, STANDARD_SHORT_SIDE=224, WINDOW_BATCH=3, REFINE=refine)
    images = _fixture_images("coffee", "chelsea", "astronaut", "vocsample")
    records = [{"image": image} for image in images]
    records[1].update(height=200, width=300)  # a requested output size of its own
    seen = []
    original = model._predict
    model._predict = lambda windows, *args, **kwargs: (
        seen.append(len(windows)) or original(windows, *args, **kwargs)
    )
    with torch.no_grad():
        outputs = [o["sem_seg"] for o in model(records)]
        assert seen == [3, 3, 2]
        alone = [model([record])[0]["sem_seg"] for record in records]
        assert seen[3:] == [2, 3, 1, 2]
        labels = model([{"image": im, "scores": "none"} for im in images])
        labels_alone = [model([{"image": im, "scores": "none"}])[0] for im in images]
    assert [tuple(o.shape[1:]) for o in outputs] == [(400, 600), (200, 300), (512, 512), (375, 500)]
    for output, expected in zip(outputs, alone):
        assert torch.equal(output, expected)
    for prediction, expected, output in zip(labels, labels_alone, outputs):
        assert "sem_seg" not in prediction
        assert torch.equal(prediction["labels"], expected["labels"])
    assert torch.equal(labels[0]["labels"], outputs[0].argmax(dim=0))
    assert len({tuple(torch.unique(o.argmax(dim=0)).tolist()) for o in outputs}) >= 2


def test_out_of_memory_splits_window_batches_that_span_images(tiny_opts, caplog):
    """Seven windows of three images (2 + 3 + 2) in one WINDOW_BATCH, on a device that fits two:
    run as 2 + 2 + 2 + 1 (halves of halves), the same outputs as unsplit, one warning for the
    batch."""
    from cliptrase_d2.method.pipeline import logger as meta_arch_logger

    model = _model(tiny_opts, STANDARD, STANDARD_SHORT_SIDE=224, WINDOW_BATCH=8)
    records = [{"image": im} for im in _fixture_images("coffee", "chelsea", "vocsample")]
    with torch.no_grad():
        unsplit = [o["sem_seg"] for o in model(records)]
    seen = []
    original = model._predict

    def fits_two(windows, *args, **kwargs):
        seen.append(len(windows))
        if len(windows) > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return original(windows, *args, **kwargs)

    model._predict = fits_two
    with caplog.at_level(logging.WARNING, logger=meta_arch_logger.name), torch.no_grad():
        split = [o["sem_seg"] for o in model(records)]
    assert seen == [7, 4, 2, 2, 3, 2, 1]
    for a, b in zip(split, unsplit):
        assert torch.equal(a, b)
    warnings = [r.getMessage() for r in caplog.records if "out of memory" in r.getMessage()]
    assert warnings == ["out of memory on a batch of 7 windows: ran it as 2 + 2 + 2 + 1"]


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("VOCABULARY", "voc22", r"'voc22' is not a benchmark key: did you mean 'voc21'"),
        ("TEMPLATES", "imagenet81", r"'imagenet81' \(MODEL\.CLIPTRASE\.TEMPLATES\)"),
    ],
)
def test_vocabulary_and_templates_are_refused_before_clip_loads(key, value, message, tmp_path):
    """A mistyped vocabulary or template set is named without waiting for CLIP: the weights file
    here does not exist, and the error is still the vocabulary's or the templates'."""
    opts = ["MODEL.WEIGHTS", str(tmp_path / "never_read.pt"), f"MODEL.CLIPTRASE.{key}", value]
    with pytest.raises(InputError, match=message) as caught:
        build_model(load_config(PAPER_224, opts))
    assert "never_read.pt" not in str(caught.value)
