"""The Python API: any image form in, labels, soft scores and names out; batches."""

import os

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import FIXTURES, REPO, require_fixtures
from cliptrase_d2.api import Segmenter, load_image


@pytest.fixture(scope="module")
def segmenter(tiny_opts):
    return Segmenter.from_config(
        os.path.join(REPO, "configs", "paper", "Base-paper-224.yaml"), tiny_opts
    )


def test_path_pil_and_array_give_the_same_result(segmenter):
    path = os.path.join(FIXTURES, "images", "astronaut.png")
    results = [
        segmenter.segment(x, "person, rocket, flag, sky")
        for x in (path, Image.open(path), np.asarray(Image.open(path).convert("RGB")))
    ]
    for other in results[1:]:
        np.testing.assert_array_equal(results[0].labels, other.labels)
    result = results[0]
    assert result.class_names == ["person", "rocket", "flag", "sky"]
    assert result.labels.shape == (224, 224) and result.image.shape == (224, 224, 3)
    assert result.scores.shape == (4, 224, 224) and result.scores.unique().numel() > 4  # soft
    assert sum(result.pixel_shares().values()) == pytest.approx(1.0)


def test_batch_equals_single_images(segmenter):
    require_fixtures()
    paths = [os.path.join(FIXTURES, "images", n) for n in ("chelsea.png", "coffee.png")]
    batch = segmenter.segment(paths, "voc21")
    for path, result in zip(paths, batch):
        alone = segmenter.segment(path, "voc21")
        np.testing.assert_array_equal(alone.labels, result.labels)
        torch.testing.assert_close(alone.scores, result.scores)


def test_background_words_add_one_class(segmenter):
    require_fixtures()
    result = segmenter.segment(
        os.path.join(FIXTURES, "images", "coffee.png"), "cup, saucer", background=["table", "wall"]
    )
    assert result.class_names == ["cup", "saucer", "background"]
    assert result.labels.max() <= 2


def test_bad_images(segmenter, tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        load_image(np.zeros((10, 10, 3), dtype=np.float32))
    with pytest.raises(TypeError, match="cannot segment a int"):
        load_image(3)
    small = tmp_path / "small.png"
    Image.new("RGB", (10, 40)).save(small)
    with pytest.raises(ValueError, match="small.png.*smaller than one 16x16"):
        segmenter.segment(str(small), "cat")


def test_exif_orientation_and_path_objects(tmp_path):
    """A rotated JPEG gives the same pixels as a path, a pathlib.Path and an opened PIL image."""
    require_fixtures()
    image = Image.open(os.path.join(FIXTURES, "images", "chelsea.png")).convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    path = tmp_path / "rotated.jpg"
    image.save(path, exif=exif.tobytes(), quality=95)
    by_path = load_image(str(path))
    assert by_path.shape == (image.width, image.height, 3)  # turned upright
    np.testing.assert_array_equal(load_image(path), by_path)
    with Image.open(path) as opened:
        np.testing.assert_array_equal(load_image(opened), by_path)


def test_background_words_keep_the_vocabularys_own(segmenter):
    require_fixtures()
    path = os.path.join(FIXTURES, "images", "coffee.png")
    own = segmenter.resolve_vocabulary("voc21").background
    extended = segmenter.resolve_vocabulary("voc21", background=["tablecloth"])
    assert extended.background == own + ("tablecloth",) and len(extended.classes) == 20
    result = segmenter.segment(path, "voc21", background=["tablecloth"])
    assert result.class_names == extended.class_names and result.class_names[-1] == "background"


def test_the_vocabulary_belongs_to_one_call(segmenter):
    """Nothing of one call's vocabulary stays in the model: a later call without one is an error
    (the config names none), not the previous caller's classes."""
    require_fixtures()
    path = os.path.join(FIXTURES, "images", "coffee.png")
    first = segmenter.segment(path, "cup, saucer, table")
    assert first.class_names == ["cup", "saucer", "table"]
    assert segmenter.model.vocabulary is None
    with pytest.raises(
        ValueError, match="no vocabulary for this input.*segment\\(image, vocabulary\\)"
    ):
        segmenter.segment(path)
    assert segmenter.segment(path, "voc20").class_names[:2] == ["aeroplane", "bicycle"]


def test_a_config_vocabulary_is_the_default(tiny_opts):
    require_fixtures()
    config = os.path.join(REPO, "configs", "paper", "Base-paper-224.yaml")
    segmenter = Segmenter.from_config(
        config, [*tiny_opts, "MODEL.CLIPTRASE.VOCABULARY", "cat, grass"]
    )
    path = os.path.join(FIXTURES, "images", "chelsea.png")
    assert segmenter.segment(path).class_names == ["cat", "grass"]
    assert segmenter.segment(path, "dog, sky").class_names == ["dog", "sky"]  # a call's own wins


@pytest.mark.parametrize("protocol", ["paper", "standard"])
def test_labels_without_scores_are_the_same(tiny_opts, protocol, monkeypatch):
    require_fixtures()
    from cliptrase_d2.method import refinement

    config = os.path.join(
        REPO, "configs", protocol, f"Base-{protocol}{'-224' if protocol == 'paper' else ''}.yaml"
    )
    segmenter = Segmenter.from_config(
        config, [*tiny_opts, "MODEL.CLIPTRASE.STANDARD_SHORT_SIDE", "224"]
    )
    path = os.path.join(FIXTURES, "images", "vocsample.png")
    full = segmenter.segment(path, "voc20")
    monkeypatch.setattr(refinement, "RESIZE_CHUNK_BYTES", 1)  # groups of 8 class maps: 8 + 12
    resized_groups = []
    resize_maps = refinement.resize_maps
    monkeypatch.setattr(
        refinement,
        "resize_maps",
        lambda maps, size: resized_groups.append(len(maps)) or resize_maps(maps, size),
    )
    light = segmenter.segment(path, "voc20", scores=False)
    assert light.scores is None and full.scores is not None
    assert resized_groups == ([8, 12] if protocol == "standard" else [])
    np.testing.assert_array_equal(light.labels, full.labels)
    assert np.unique(full.labels).size >= 2
    assert light.labels.shape == ((224, 224) if protocol == "paper" else load_image(path).shape[:2])


def test_batch_size_caps_the_images_per_model_call(tiny_opts):
    """segment(batch_size=N): at most N images per model call (None: the config's
    TEST.IMS_PER_BATCH), the same labels and scores as one image at a time, bit for bit."""
    require_fixtures()
    segmenter = Segmenter.from_config(
        os.path.join(REPO, "configs", "standard", "Base-standard.yaml"),
        [*tiny_opts, "MODEL.CLIPTRASE.STANDARD_SHORT_SIDE", "224", "TEST.IMS_PER_BATCH", "3"],
    )
    assert segmenter.batch_size == 3
    paths = [
        os.path.join(FIXTURES, "images", f"{n}.png") for n in ("chelsea", "coffee", "vocsample")
    ]
    calls = []
    forward = segmenter.model.forward
    segmenter.model.forward = lambda records: calls.append(len(records)) or forward(records)
    batched = segmenter.segment(paths, "voc20", batch_size=2)
    assert calls == [2, 1]
    whole = segmenter.segment(paths, "voc20")
    assert calls[2:] == [3]
    for path, result, other in zip(paths, batched, whole):
        alone = segmenter.segment(path, "voc20")
        assert result.labels.shape == load_image(path).shape[:2]
        np.testing.assert_array_equal(result.labels, alone.labels)
        np.testing.assert_array_equal(other.labels, alone.labels)
        assert torch.equal(result.scores, alone.scores) and torch.equal(other.scores, alone.scores)
    segmenter.batch_size = 1  # TEST.IMS_PER_BATCH 1: one image per call
    calls.clear()
    segmenter.segment(paths, "voc20")
    assert calls == [1, 1, 1]
    for bad in (0, -1, 1.5):
        with pytest.raises(ValueError, match=f"batch_size must be .* at least 1, got {bad}"):
            segmenter.segment(paths, "voc20", batch_size=bad)


def test_a_truncated_or_closed_pil_image_is_an_error_naming_it(tmp_path):
    path = tmp_path / "cut.png"
    Image.new("RGB", (32, 32), (200, 10, 10)).save(path)
    path.write_bytes(path.read_bytes()[:-30])  # the header reads, the pixels do not
    with pytest.raises(ValueError, match=r"PIL image .*cut.png: image file is truncated\. Give"):
        load_image(Image.open(path))
    closed = Image.open(os.path.join(FIXTURES, "images", "coffee.png"))
    closed.close()
    with pytest.raises(ValueError, match=r"PIL image .*coffee.png: .*closed.*not closed yet"):
        load_image(closed)


def test_an_image_the_model_refuses_is_named_by_its_file_or_place(segmenter, tmp_path):
    small = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(ValueError, match="^image 1 of the list: an image of 8x8 pixels"):
        segmenter.segment([np.zeros((64, 64, 3), np.uint8), small], "cat, dog")
    path = tmp_path / "small.png"
    Image.fromarray(small).save(path)
    with pytest.raises(ValueError, match=f"^{path}: an image of 8x8 pixels"):
        segmenter.segment(Image.open(path), "cat, dog")


@pytest.mark.parametrize("config", ["paper/Base-paper-224.yaml", "standard/Base-standard.yaml"])
def test_result_image_and_labels_are_those_of_the_whole_image_call(tiny_opts, config):
    # the API frames an image once, as the loader's mapper does, and returns that frame as
    # result.image (it cropped a second time for it before): the same pixels and labels as
    # before, when the model was given the whole image and result.image was model.frame(image)
    segmenter = Segmenter.from_config(os.path.join(REPO, "configs", config), tiny_opts)
    image = np.asarray(Image.open(os.path.join(FIXTURES, "images", "chelsea.png")).convert("RGB"))
    image = np.ascontiguousarray(image[:137, :301])
    result = segmenter.segment(image, "cat, sky", scores=False)
    whole = {"image": torch.from_numpy(image.transpose(2, 0, 1).copy()), "scores": "none"}
    with torch.no_grad():
        labels = segmenter.model([{**whole, "vocabulary": "cat, sky"}])[0]["labels"]
    np.testing.assert_array_equal(result.labels, labels.numpy())
    frame = segmenter.model.frame
    np.testing.assert_array_equal(result.image, frame(image) if "paper" in config else image)


def test_saved_labels_take_the_evaluations_png_type(tmp_path):
    from cliptrase_d2.api import SegmentationResult
    from cliptrase_d2.errors import InputError

    def saved(num_classes):
        labels = np.array([[0, num_classes - 1]], dtype=np.int64)
        result = SegmentationResult(labels, None, [f"c{i}" for i in range(num_classes)], None)
        result.save_labels(str(tmp_path / "labels.png"))
        return np.asarray(Image.open(tmp_path / "labels.png"))

    assert saved(255).dtype == np.uint8 and saved(256).dtype == np.uint16
    np.testing.assert_array_equal(saved(65535), [[0, 65534]])
    with pytest.raises(InputError, match="65537 classes do not fit in a 16-bit PNG"):
        saved(65537)  # refused as evaluation refuses it, not label 65536 written as 0
