"""The peers' common protocol and their published settings, rule by rule against hand computations:
keep-ratio resize, window positions and padding, the order of merging names, thresholds, PAMR,
multi-name vocabularies and the published configs."""

import glob
import math
import os

import numpy as np
import pytest
import torch

from conftest import REPO
from cliptrase_d2.engine.trainer import load_config
from cliptrase_d2.method.pamr import pamr, pamr_weights
from cliptrase_d2.method.preprocess import keep_ratio_size, resize_linear_uint8
from cliptrase_d2.method.sliding import sliding_windows, window_boxes, window_padding
from cliptrase_d2.method.thresholds import (
    area_threshold,
    check_threshold,
    class_probabilities,
    label_order,
    merge_names,
    probability_threshold,
    threshold_scores,
)
from cliptrase_d2.vocabulary import Vocabulary, peer_vocabulary_keys, resolve_vocabulary

BENCHMARKS = [
    "ade150",
    "cityscapes19",
    "coco_object80",
    "coco_stuff171",
    "pc59",
    "pc60",
    "voc20",
    "voc21",
]


# ---------------------------------------------------------------- resize


@pytest.mark.parametrize(
    "size, short, expected",
    [
        (
            (448, 454),
            336,
            (336, 341),
        ),  # factor 0.75: 454 * 0.75 = 340.5 rounds up (Python's round: 340)
        ((200, 1300), 336, (315, 2048)),  # the 2048 cap: factor 2048 / 1300, 200 * 1.5754 = 315.08
        ((400, 600), 224, (224, 336)),
        ((375, 500), 336, (336, 448)),
        ((333, 500), 336, (336, 505)),  # 500 * 336 / 333 = 504.50 -> 505
        ((1024, 2048), 560, (560, 1120)),
    ],
)
def test_keep_ratio_size(size, short, expected):
    assert keep_ratio_size(*size, short) == expected


def test_panorama_has_36_windows():
    boxes = window_boxes(315, 2048, 224, 112)
    tops = sorted({b[0] for b in boxes})
    lefts = sorted({b[1] for b in boxes})
    assert tops == [0, 315 - 224]  # 2 rows: the second shifted inward to end at the border
    assert lefts == [112 * i for i in range(17)] + [2048 - 224]  # 18 columns, the last at 1824
    assert len(boxes) == 36 and all(b[2] - b[0] == 224 and b[3] - b[1] == 224 for b in boxes)
    assert (
        window_boxes(336, 2184, 224, 112).__len__() == 38
    )  # what the unrounded, uncapped resize gave


def test_opencv_linear_on_uint8_by_hand():
    """1 x 2 -> 1 x 4: half-pixel centres at source x = -0.25, 0.25, 0.75, 1.25 (clamped)."""
    image = np.array([[[0, 0, 0], [100, 200, 40]]], dtype=np.uint8)
    out = resize_linear_uint8(image, (1, 4))
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out[0, :, 0], [0, 25, 75, 100])
    np.testing.assert_array_equal(out[0, :, 1], [0, 50, 150, 200])
    photo = np.random.default_rng(0).integers(0, 256, (448, 454, 3), dtype=np.uint8)
    assert resize_linear_uint8(photo, keep_ratio_size(448, 454, 336)).shape == (336, 341, 3)
    assert resize_linear_uint8(photo, (448, 454)) is photo
    with pytest.raises(ValueError, match="uint8"):
        resize_linear_uint8(photo.astype(np.float32), (10, 10))


# ---------------------------------------------------------------- windows and padding


@pytest.mark.parametrize(
    "padding, expected", [("end", (0, 6, 0, 11)), ("even", (3, 3, 5, 6)), ("none", (0, 0, 0, 0))]
)
def test_window_padding_by_hand(padding, expected):
    assert window_padding(197, 250, 16, padding) == expected  # 197 + 11 = 208, 250 + 6 = 256


@pytest.mark.parametrize("padding", ["end", "even", "none"])
def test_padding_is_cut_from_the_window_scores(padding):
    """Scores equal to the pixels they come from: after cutting, the average is the image."""
    image = torch.arange(3 * 40 * 50, dtype=torch.float32).view(3, 40, 50)
    seen = []

    def predict(batch):
        seen.append(tuple(batch.shape[-2:]))
        return batch[:, :1].clone()

    out = next(
        sliding_windows(
            [image], predict, window=24, stride=12, batch_size=4, multiple=16, padding=padding
        )
    )
    torch.testing.assert_close(out, image[:1])
    assert set(seen) == ({(24, 24)} if padding == "none" else {(32, 32)})
    whole = next(
        sliding_windows(
            [image], predict, window=0, stride=12, batch_size=4, multiple=16, padding=padding
        )
    )
    torch.testing.assert_close(whole, image[:1])
    assert seen[-1] == ((40, 50) if padding == "none" else (48, 64))


# ---------------------------------------------------------------- merging names


def test_names_merge_after_averaging_not_before():
    """Class 0 has names a, b; rows a, b, background word w. Two windows on one pixel:
    window 1 (a, b, w) = (4, 0, 3), window 2 = (0, 4, 3). Max after averaging: class 2, bg 3 ->
    background; averaging the per-window maxima (4 and 4) would give class 0."""
    windows = torch.tensor([[4.0, 0.0, 3.0], [0.0, 4.0, 3.0]])[:, :, None, None]
    averaged = windows.mean(dim=0)  # (3, 1, 1)
    merged = merge_names(averaged, (0, 0, 1), num_classes=1)
    assert merged[:, 0, 0].tolist() == [2.0, 3.0] and merged.argmax(dim=0).item() == 1
    before = merge_names(windows[0], (0, 0, 1), 1) / 2 + merge_names(windows[1], (0, 0, 1), 1) / 2
    assert before.argmax(dim=0).item() == 0


def test_one_name_per_class_keeps_the_rows_without_a_copy():
    rows = torch.rand(3, 4, 5, generator=torch.Generator().manual_seed(0))
    merged = merge_names(rows, (0, 1, 2), num_classes=3)
    assert merged is rows  # Cityscapes at 1024 x 2048: 160 MB not copied
    assert torch.equal(merge_names(rows.clone(), (0, 1, 2), num_classes=2)[:2], rows[:2])
    two_names = merge_names(rows, (0, 0, 1), num_classes=2)
    assert two_names is not rows and torch.equal(two_names[0], rows[:2].amax(dim=0))


def test_background_wins_exact_ties_like_the_peers_class_0():
    rows = torch.tensor([[1.0, 2.0], [5.0, 2.0], [5.0, 1.0]])[
        :, None, :
    ]  # class a, class b, word w
    merged = merge_names(rows, (0, 1, 2), num_classes=2)
    assert merged.argmax(dim=0).flatten().tolist() == [2, 0]  # pixel 0: b ties w -> background
    order = label_order((0, 1, 2), 2)
    assert order.tolist() == [2, 0, 1]
    labels = torch.tensor((0, 1, 2))[order][rows[order].argmax(dim=0)]
    assert torch.equal(labels, merged.argmax(dim=0))


# ---------------------------------------------------------------- thresholds


def test_class_probabilities_are_the_max_over_names_of_one_softmax():
    rows = torch.tensor([1.0, 2.0, 0.5])[:, None, None]  # class 0: rows 0 and 1; background: row 2
    probabilities = class_probabilities(rows, (0, 0, 1), num_classes=1)
    total = math.exp(1) + math.exp(2) + math.exp(0.5)
    assert probabilities[:, 0, 0].tolist() == pytest.approx(
        [math.exp(2) / total, math.exp(0.5) / total]
    )


def test_probability_threshold_by_hand():
    probabilities = torch.tensor([[0.45, 0.30], [0.35, 0.30], [0.20, 0.40]])[
        :, None, :
    ]  # (3, 1, 2)
    labels = probability_threshold(probabilities, 0.41).argmax(dim=0).flatten().tolist()
    assert labels == [0, 2]  # 0.45 >= 0.41 kept; 0.40 < 0.41 -> background (2)
    assert probability_threshold(probabilities, 0.5).argmax(dim=0).flatten().tolist() == [2, 2]
    assert torch.equal(probability_threshold(probabilities, 0.2), probabilities)


def test_area_threshold_by_hand():
    """10 pixels: class 0 wins 6, class 1 wins 1, background 3. With 0.2 the 7 non-background
    pixels allow classes above 1.4 pixels: class 1 (1 pixel) is dropped, its pixel goes to the
    next best (background here), class 0 kept."""
    probabilities = torch.zeros(3, 1, 10)
    probabilities[0, 0, :6] = 0.7
    probabilities[2, 0, :6] = 0.3
    probabilities[1, 0, 6] = 0.6
    probabilities[2, 0, 6] = 0.4
    probabilities[2, 0, 7:] = 0.9
    out = area_threshold(probabilities, 0.2)
    assert out.argmax(dim=0).flatten().tolist() == [0] * 6 + [2] * 4
    assert out[1].abs().sum() == 0 and torch.equal(out[0], probabilities[0])
    assert (
        area_threshold(probabilities, 1 / 7 - 1e-6).argmax(dim=0).flatten().tolist()[6] == 1
    )  # 1 > 7 * (1/7 - e)


def test_thresholds_need_a_background_and_a_fraction():
    with pytest.raises(ValueError, match="no background words"):
        threshold_scores(torch.zeros(2, 1, 1), (0, 1), num_classes=2, prob_thd=0.1)
    for bad in (-0.1, 1.5):
        with pytest.raises(
            ValueError, match=r"MODEL.CLIPTRASE.PROB_THD must be a fraction in \[0, 1\]"
        ):
            check_threshold(bad, "MODEL.CLIPTRASE.PROB_THD")


# ---------------------------------------------------------------- PAMR


def test_pamr_weights_by_hand():
    """A 1 x 2 image (0 | 1 in every channel), dilation 1. Pixel 0 sees, border replicated, 5
    neighbours of value 0 and 3 of value 1; with itself: 6 zeros and 3 ones, unbiased std 0.5.
    Affinity 0 to the zeros, -1 / 0.05 = -20 to the ones; softmax over the 8 neighbours."""
    image = torch.tensor([0.0, 1.0]).view(1, 1, 1, 2).expand(1, 3, 1, 2)
    weights = pamr_weights(image, dilations=(1,))[0, 0, :, 0, 0]  # (8,)
    far = math.exp(-1 / (1e-8 + 0.1 * 0.5))
    near, other = 1 / (5 + 3 * far), far / (5 + 3 * far)
    # neighbours of (0, 0) in the order (-1,-1), (-1,0), (-1,1), (0,-1), (0,1), (1,-1), (1,0), (1,1)
    expected = [near, near, other, near, other, near, near, other]
    assert weights.tolist() == pytest.approx(expected, rel=1e-5)


def test_pamr_propagates_from_the_neighbours_only():
    """Flat 3 x 3 image: every neighbour weighs 1/8. One step on a map that is 1 at the centre:
    each border pixel has exactly one neighbour (clamped) at the centre -> 1/8; the centre 0."""
    image = torch.zeros(1, 3, 3, 3)
    maps = torch.zeros(1, 1, 3, 3)
    maps[0, 0, 1, 1] = 1.0
    out = pamr(image, maps, steps=1, dilations=(1,))[0, 0]
    expected = torch.full((3, 3), 1 / 8)
    expected[1, 1] = 0.0
    torch.testing.assert_close(out, expected)


def test_pamr_is_linear_and_keeps_constant_maps():
    generator = torch.Generator().manual_seed(0)
    image = torch.randn(1, 3, 20, 30, generator=generator)
    maps = torch.randn(1, 4, 20, 30, generator=generator)
    torch.testing.assert_close(pamr(image, 40 * maps), 40 * pamr(image, maps), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(
        pamr(image, torch.full((1, 2, 20, 30), 3.0)), torch.full((1, 2, 20, 30), 3.0)
    )
    with pytest.raises(ValueError, match="one size"):
        pamr(image, maps[..., :10])


# ---------------------------------------------------------------- vocabularies


def test_multi_name_classes_keep_the_two_argument_form():
    plain = Vocabulary(("sky", "dog"), ("wall",))
    assert plain.text_rows == ("sky", "dog", "wall") and plain.row_classes == (0, 1, 2)
    multi = Vocabulary(("person", "dog"), ("wall",), (("man", "woman"), ()))
    assert multi.text_rows == ("person", "man", "woman", "dog", "wall")
    assert multi.row_classes == (0, 0, 0, 1, 2) and multi.class_names == [
        "person",
        "dog",
        "background",
    ]


def test_vocabulary_file_with_several_names_per_line(tmp_path):
    path = tmp_path / "classes.txt"
    path.write_text("person, person in shirt, body\ndog\n", encoding="utf-8")
    vocabulary = resolve_vocabulary(str(path))
    assert vocabulary.classes == ("person", "dog") and vocabulary.extra_names == (
        ("person in shirt", "body"),
        (),
    )
    path.write_text("dog\n\nperson, , body\n", encoding="utf-8")
    with pytest.raises(ValueError, match=rf"{path}, line 3: empty name in 'person, , body'"):
        resolve_vocabulary(str(path))


def test_peer_vocabularies_are_the_peers_lists():
    assert peer_vocabulary_keys() == sorted(
        f"{p}/{b}"
        for p in ("clearclip", "naclip", "sclip", "scclip", "pearl", "proxyclip")
        for b in BENCHMARKS
    )
    sclip = resolve_vocabulary("sclip/voc21")
    assert (
        sclip.num_classes == 21
        and len(sclip.background) == 26
        and "background" not in sclip.background
    )
    assert sclip.extra_names[14] == (
        "person in shirt",
        "person in jeans",
        "person in dress",
        "person in sweater",
        "person in skirt",
        "person in jacket",
    )
    assert sclip.classes[19] == "television monitor" and sclip.classes[3] == "ship"
    clear = resolve_vocabulary("clearclip/voc21")
    assert (
        clear.background == ("background",)
        and not clear.has_multiple_names
        and clear.classes[19] == "tvmonitor"
    )
    coco = resolve_vocabulary(
        "naclip/coco_object80"
    )  # 'bed' is a class and a background word, as published
    assert coco.num_classes == 81 and "bed" in coco.classes and "bed" in coco.background
    for key in peer_vocabulary_keys():
        assert (
            resolve_vocabulary(key).num_classes == resolve_vocabulary(key.split("/")[1]).num_classes
        )
    with pytest.raises(ValueError, match="no published vocabulary 'sclip/ade847'"):
        resolve_vocabulary("sclip/ade847")


# ---------------------------------------------------------------- published configs

EXPECTED = {  # (short side, window, stride, padding, refine, logit scale, prob_thd, area_thd)
    ("sclip", "voc21"): (336, 224, 112, "none", "none", 65.0, 0.1, 0.1),
    ("sclip", "pc60"): (336, 224, 112, "none", "none", 50.0, 0.1, 0.0),
    ("sclip", "coco_object80"): (336, 224, 112, "none", "none", 50.0, 0.1, 0.0),
    ("sclip", "coco_stuff171"): (448, 224, 112, "none", "none", 40.0, 0.0, 0.0),
    ("sclip", "cityscapes19"): (560, 224, 112, "none", "none", 40.0, 0.0, 0.0),
    ("naclip", "voc21"): (336, 0, 112, "none", "pamr", 40.0, 0.1, 0.0),
    ("naclip", "voc20"): (336, 0, 112, "none", "pamr", 40.0, 0.0, 0.0),
    ("naclip", "coco_stuff171"): (336, 224, 112, "none", "pamr", 40.0, 0.0, 0.0),
    ("naclip", "cityscapes19"): (560, 224, 112, "none", "pamr", 40.0, 0.0, 0.0),
    ("clearclip", "voc21"): (448, 448, 224, "even", "none", 50.0, 0.5, 0.0),
    ("clearclip", "pc60"): (448, 448, 224, "even", "none", 50.0, 0.15, 0.0),
    ("clearclip", "coco_object80"): (448, 448, 224, "even", "none", 50.0, 0.4, 0.0),
    ("clearclip", "cityscapes19"): (448, 224, 224, "even", "none", 50.0, 0.0, 0.0),
    ("clearclip", "ade150"): (448, 448, 224, "even", "none", 50.0, 0.0, 0.0),
}


def test_every_published_config_is_the_peers_setting():
    files = sorted(glob.glob(os.path.join(REPO, "configs", "*", "published", "*.yaml")))
    names = {(f.split(os.sep)[-3], os.path.basename(f)[:-5]) for f in files if "Base-" not in f}
    peers = ("clearclip", "naclip", "sclip", "scclip", "pearl", "proxyclip")
    assert names == {(p, b) for p in peers for b in BENCHMARKS}
    for head, benchmark in names:
        c = load_config(
            os.path.join(REPO, "configs", head, "published", f"{benchmark}.yaml")
        ).MODEL.CLIPTRASE
        assert (c.HEAD, c.PUBLISHED, c.VOCABULARY) == (
            head,
            f"{head}/{benchmark}",
            f"{head}/{benchmark}",
        )
        assert (
            c.PROTOCOL == "standard"
            and c.STANDARD_LONG_SIDE == 2048
            and c.TEMPLATES == "imagenet80"
        )
        if (head, benchmark) in EXPECTED:
            assert (
                c.STANDARD_SHORT_SIDE,
                c.WINDOW_SIZE,
                c.WINDOW_STRIDE,
                c.WINDOW_PADDING,
                c.REFINE,
                c.LOGIT_SCALE,
                c.PROB_THD,
                c.AREA_THD,
            ) == EXPECTED[head, benchmark]


def test_bad_published_settings_name_the_key(tiny_opts):
    from detectron2.modeling import build_model

    config = os.path.join(REPO, "configs", "sclip", "published", "voc21.yaml")
    for opts, message in (
        (
            ["MODEL.CLIPTRASE.PUBLISHED", "sclip/ade847"],
            "MODEL.CLIPTRASE.PUBLISHED 'sclip/ade847': head 'sclip' has no published setting",
        ),
        (["MODEL.CLIPTRASE.HEAD", "maskclip"], "head 'maskclip' has no published setting"),
        (
            ["MODEL.CLIPTRASE.PROB_THD", "1.5"],
            r"MODEL.CLIPTRASE.PROB_THD must be a fraction in \[0, 1\]",
        ),
        (
            ["MODEL.CLIPTRASE.AREA_THD", "-0.1"],
            r"MODEL.CLIPTRASE.AREA_THD must be a fraction in \[0, 1\]",
        ),
    ):
        with pytest.raises(ValueError, match=message):
            build_model(load_config(config, [*tiny_opts, *opts]))


# ---------------------------------------------------------------- through the model


@pytest.fixture(scope="module")
def photo():
    from conftest import FIXTURES, require_fixtures
    from cliptrase_d2.data.image_io import read_rgb

    require_fixtures()
    return torch.from_numpy(
        read_rgb(f"{FIXTURES}/images/coffee.png").transpose(2, 0, 1).copy()
    )  # (3, 400, 600)


def _standard_model(tiny_opts, **overrides):
    from detectron2.modeling import build_model

    opts = [
        *tiny_opts,
        "MODEL.CLIPTRASE.VOCABULARY",
        "cup, table, wall",
        "MODEL.CLIPTRASE.STANDARD_SHORT_SIDE",
        "200",
        "MODEL.CLIPTRASE.REFINE",
        "none",
    ]
    for key, value in overrides.items():
        opts += [f"MODEL.CLIPTRASE.{key}", str(value)]
    return build_model(
        load_config(os.path.join(REPO, "configs", "standard", "Base-standard.yaml"), opts)
    ).eval()


def test_standard_protocol_in_the_peers_order(tiny_opts, photo):
    """400 x 600 -> 200 x 300 (OpenCV linear on uint8); 200 x 224 windows at columns 0 and 76,
    unpadded; the scores of every name averaged, resized to 400 x 600, then the maximum over each
    class's names (background words last)."""
    from cliptrase_d2.method.preprocess import CLIP_MEAN, CLIP_STD
    from cliptrase_d2.method.refinement import resize_maps

    model = _standard_model(tiny_opts, WINDOW_PADDING="none")
    vocabulary = Vocabulary(("cup", "table"), ("wall", "floor"), (("mug",), ()))
    output = model([{"image": photo, "vocabulary": vocabulary}])[0]["sem_seg"]
    assert output.shape == (3, 400, 600)
    pixels = resize_linear_uint8(photo.permute(1, 2, 0).numpy(), (200, 300))
    frame = (
        torch.from_numpy(pixels).permute(2, 0, 1).float() / 255
        - torch.tensor(CLIP_MEAN).view(3, 1, 1)
    ) / torch.tensor(CLIP_STD).view(3, 1, 1)
    with torch.no_grad():
        rows = model._predict(
            torch.stack([frame[:, :, :224], frame[:, :, 76:]]),
            vocabulary,
            soft_scores=False,
            num_classes=5,
        ).scores  # (2, 5 rows, 200, 224)
    total = torch.zeros(5, 200, 300)
    total[:, :, :224] += rows[0]
    total[:, :, 76:] += rows[1]
    total[:, :, 76:224] /= 2
    expected = merge_names(resize_maps(total, (400, 600)), (0, 0, 1, 2, 2), num_classes=2)
    torch.testing.assert_close(output, expected, rtol=1e-5, atol=1e-4)
    light = model([{"image": photo, "vocabulary": vocabulary, "scores": "none"}])[0]["labels"]
    assert (light == expected.argmax(dim=0)).float().mean() > 0.999


def test_thresholds_and_pamr_through_the_model(tiny_opts, photo):
    plain = _standard_model(tiny_opts, BACKGROUND_WORDS="['floor']")
    rows = plain([{"image": photo, "scores": "soft"}])[0]["sem_seg"]
    everything = _standard_model(tiny_opts, BACKGROUND_WORDS="['floor']", PROB_THD=1.0)
    assert (
        everything([{"image": photo}])[0]["sem_seg"].argmax(dim=0) == 3
    ).all()  # no probability reaches 1
    refined = _standard_model(tiny_opts, BACKGROUND_WORDS="['floor']", REFINE="pamr", PAMR_STEPS=2)
    output = refined([{"image": photo}])[0]["sem_seg"]
    assert not torch.allclose(output, rows)
    with pytest.raises(ValueError, match="no background words"):
        _standard_model(tiny_opts, PROB_THD=0.1)([{"image": photo}])


def test_published_config_brings_its_vocabulary(tiny_opts):
    from cliptrase_d2.api import Segmenter

    segmenter = Segmenter.from_config(
        os.path.join(REPO, "configs", "naclip", "published", "voc21.yaml"), tiny_opts
    )
    assert segmenter.model.vocabulary == resolve_vocabulary("naclip/voc21")
    model = segmenter.model
    assert (model.window_size, model.steps.pamr_steps, model.steps.prob_thd) == (
        0,
        10,
        0.1,
    )
    assert segmenter.model.refinement.refine == "none" and segmenter.model.logit_scale == 40.0
