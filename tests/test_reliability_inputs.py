"""Bad inputs met inside a run get one named error (or a bounded, warned-about run), never a
traceback, a crash that poisons later runs or a silently wrong result (issue 16, part B)."""

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import REPO
from cliptrase_d2.data.dataset_mapper import SemSegTestMapper
from cliptrase_d2.errors import ConfigError, InputError, MissingFileError, UserError


class _Records(torch.utils.data.Dataset):
    def __init__(self, paths):
        self.paths, self.mapper = paths, SemSegTestMapper(image_format="RGB")

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, index):
        return self.mapper({"file_name": self.paths[index]})


@pytest.mark.parametrize(
    "content, error, words",
    [
        (b"not an image", InputError, "cannot read image"),
        (None, MissingFileError, "image file"),
    ],
)
def test_unreadable_dataset_image_in_a_loader_worker_is_one_line(tmp_path, content, error, words):
    path = tmp_path / "broken.jpg"
    if content is not None:
        path.write_bytes(content)
    loader = torch.utils.data.DataLoader(
        _Records([str(path)]), num_workers=1, collate_fn=lambda batch: batch
    )
    with pytest.raises(error) as caught:
        list(loader)
    message = str(caught.value)
    assert isinstance(caught.value, UserError)
    assert message.startswith(words) and str(path) in message
    assert "\n" not in message and "Traceback" not in message


def test_readable_dataset_image_maps_to_its_pixels(tmp_path):
    pixels = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    Image.fromarray(pixels).save(tmp_path / "ok.png")
    record = SemSegTestMapper(image_format="RGB")({"file_name": str(tmp_path / "ok.png")})
    assert (record["height"], record["width"]) == (2, 3)
    assert torch.equal(record["image"], torch.from_numpy(pixels).permute(2, 0, 1))


def test_user_error_message_outside_a_worker_is_unchanged():
    assert str(InputError("Caught nothing: plain text")) == "Caught nothing: plain text"


def test_a_user_error_ends_a_command_with_one_line_and_a_bug_keeps_its_traceback():
    from cliptrase_d2.errors import exit_on_user_error

    def main(error):
        raise error

    assert exit_on_user_error(lambda a, b: a + b, 2, 3) == 5
    with pytest.raises(SystemExit) as caught:
        exit_on_user_error(main, ConfigError("--port must be at least 1, got 0"))
    assert caught.value.code == "error: --port must be at least 1, got 0"
    with pytest.raises(ZeroDivisionError):
        exit_on_user_error(main, ZeroDivisionError("a bug"))


# ---------------------------------------------------------------- text-embedding cache


def _tiny_model(tiny_opts, config="paper/Base-paper-224.yaml", **overrides):
    from detectron2.modeling import build_model

    from cliptrase_d2.config import load_config

    opts = list(tiny_opts)
    for key, value in overrides.items():
        opts += [f"MODEL.CLIPTRASE.{key}", str(value)]
    return build_model(load_config(f"{REPO}/configs/{config}", opts)).eval()


@pytest.mark.parametrize("poison", ["nan", "wrong-width"])
def test_model_recomputes_a_bad_cached_embedding_and_later_runs_work(tiny_opts, tmp_path, poison):
    from cliptrase_d2.vocabulary import resolve_vocabulary

    vocabulary = resolve_vocabulary("cup, table, wall")
    reference = _tiny_model(tiny_opts, TEXT_CACHE_DIR="none").text_embeddings(vocabulary)
    width = reference.shape[1]
    model = _tiny_model(tiny_opts, TEXT_CACHE_DIR=tmp_path)
    path = model.text_cache.path(vocabulary.text_rows, model.templates)
    bad = torch.full_like(reference, float("nan"))
    if poison == "wrong-width":
        bad = torch.nn.functional.normalize(torch.randn(reference.shape[0], width + 3), dim=1)
    torch.save({"embeddings": bad, "names": list(vocabulary.text_rows)}, path)

    torch.testing.assert_close(model.text_embeddings(vocabulary), reference)
    stored = torch.load(path, weights_only=True)["embeddings"]
    torch.testing.assert_close(stored.float(), reference)  # the entry was rewritten
    later = _tiny_model(tiny_opts, TEXT_CACHE_DIR=tmp_path)  # a later run reads it, no crash
    torch.testing.assert_close(later.text_embeddings(vocabulary), reference)


# ---------------------------------------------------------------- bounded work


def _refuses_before_any_work(model, monkeypatch, image):
    def no_work(*args, **kwargs):
        raise AssertionError("the image reached the model")

    monkeypatch.setattr(model.clip_model, "forward", no_work)
    monkeypatch.setattr(type(model.frame), "__call__", no_work)
    with pytest.raises(InputError) as caught:
        model([{"image": image, "file_name": "tall.png"}])
    return str(caught.value)


def test_extreme_aspect_ratio_is_refused_before_any_work_paper(tiny_opts, monkeypatch):
    model = _tiny_model(tiny_opts, VOCABULARY="cup, table", MAX_PIXELS=1_000_000)
    image = torch.zeros(3, 16, 20000, dtype=torch.uint8)
    message = _refuses_before_any_work(model, monkeypatch, image)
    # shorter side to 224: 224 x int(224 * 20000 / 16) = 224 x 280000
    assert message.startswith("tall.png: the paper protocol's resized frame")
    assert "224x280000 = 62720000 pixels" in message
    assert "MODEL.CLIPTRASE.MAX_PIXELS=1000000" in message


def test_too_many_windows_are_refused_before_any_work_standard(tiny_opts, monkeypatch):
    model = _tiny_model(
        tiny_opts, "standard/Base-standard.yaml", VOCABULARY="cup, table", WINDOW_STRIDE=1
    )
    image = torch.zeros(3, 16, 20000, dtype=torch.uint8)
    message = _refuses_before_any_work(model, monkeypatch, image)
    # keep-ratio frame: factor 2048 / 20000 -> 2 x 2048; windows of 224 every pixel: 1825
    assert "would run 1825 sliding windows" in message
    assert "MODEL.CLIPTRASE.MAX_WINDOWS=1024" in message and "WINDOW_STRIDE" in message


def test_standard_output_over_max_pixels_is_refused(tiny_opts, monkeypatch):
    model = _tiny_model(
        tiny_opts, "standard/Base-standard.yaml", VOCABULARY="cup, table", MAX_PIXELS=1_000_000
    )
    image = torch.zeros(3, 2000, 3000, dtype=torch.uint8)  # resized frame 336 x 504: fine
    message = _refuses_before_any_work(model, monkeypatch, image)
    assert "standard protocol's output frame" in message and "2000x3000 = 6000000" in message


def test_images_within_the_limits_run_and_zero_means_no_limit(tiny_opts):
    image = torch.zeros(3, 16, 20000, dtype=torch.uint8)
    default = _tiny_model(tiny_opts, "standard/Base-standard.yaml", VOCABULARY="cup, table")
    assert (default.frame.max_pixels, default.frame.max_windows) == (50_000_000, 1024)
    assert default([{"image": image}])[0]["sem_seg"].shape == (2, 16, 20000)
    unlimited = _tiny_model(tiny_opts, VOCABULARY="cup, table", MAX_PIXELS=0)
    unlimited.frame.check(16, 2_000_000, "huge.png")  # no limit: nothing raised


@pytest.mark.parametrize("key", ["MAX_PIXELS", "MAX_WINDOWS"])
def test_negative_limits_are_named(tiny_opts, key):
    with pytest.raises(ConfigError, match=f"MODEL.CLIPTRASE.{key} must be at least 0, got -1"):
        _tiny_model(tiny_opts, **{key: -1})


# ---------------------------------------------------------------- the API's arguments


@pytest.fixture(scope="module")
def segmenter(tiny_opts):
    from cliptrase_d2.api import Segmenter

    return Segmenter.from_config(f"{REPO}/configs/paper/Base-paper-224.yaml", tiny_opts)


@pytest.mark.parametrize(
    "vocabulary, background, message",
    [
        (["cat", None], None, r"vocabulary item 1 is None \(NoneType\), not a string"),
        ([1, 2], None, r"vocabulary item 0 is 1 \(int\), not a string: give class names"),
        ("cat, dog", [b"sky"], r"background item 0 is b'sky' \(bytes\), not a string"),
        ("cat, dog", 3, r"background must be a word or a list of words, e.g. \['sky'\], got int"),
    ],
)
def test_api_arguments_of_another_type_are_a_type_error_before_any_work(
    segmenter, monkeypatch, tmp_path, vocabulary, background, message
):
    def no_work(*args, **kwargs):
        raise AssertionError("the image was read")

    monkeypatch.setattr("cliptrase_d2.api.load_image", no_work)
    with pytest.raises(TypeError, match=message):
        segmenter.segment(str(tmp_path / "any.png"), vocabulary, background=background)


def test_api_string_background_is_one_word(segmenter):
    image = np.zeros((32, 48, 3), dtype=np.uint8)
    result = segmenter.segment(image, "cat, dog", background="sky")
    assert result.class_names == ["cat", "dog", "background"]
    # one text row "sky", not the three background words 's', 'k', 'y'
    assert segmenter.resolve_vocabulary("cat, dog", "sky").text_rows == ("cat", "dog", "sky")


def test_api_refuses_an_image_over_the_decode_limit_from_its_header(segmenter, tmp_path):
    import struct
    import zlib

    path = tmp_path / "huge.png"
    Image.new("L", (1, 1)).save(path)
    data = bytearray(path.read_bytes())
    data[16:24] = struct.pack(">II", 20000, 20000)  # the IHDR's width and height
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))
    with pytest.raises(InputError, match=r"huge\.png is too large to decode.*MAX_IMAGE_PIXELS"):
        segmenter.segment(str(path), "cat, dog")
