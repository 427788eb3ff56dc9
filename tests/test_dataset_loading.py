"""The one dataset loader (cliptrase_d2.data.datasets.load_split) on untidy folders: one record per
label map, a label map with two images or none refused with the names, files that are no images
(a text file named .jpg, a symlink loop) a one-line error, what is passed over counted in one log
line, a split whose count differs from the official one reported with the ids; the README's
"your own dataset" lines; and the check command."""

import logging
import os
import re

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_sem_seg
from PIL import Image

from cliptrase_d2.data.datasets import OFFICIAL_SPLITS, check
from cliptrase_d2.errors import InputError, MissingFileError
from cliptrase_d2.evaluation import StandardSemSegEvaluator
from cliptrase_d2.vocabulary import vocabulary_of_dataset
from test_datasets import (  # noqa: F401  (root: a pytest fixture used by name)
    REPO,
    root,
    write_image,
    write_palette_png,
)

ADE_IMAGES = "ADEChallengeData2016/images/validation"
ADE_MAPS = "ADEChallengeData2016/annotations_detectron2/validation"
SAMPLE_IMAGES, SAMPLE_MAPS = "cliptrase_sample_voc21/images", "cliptrase_sample_voc21/annotations"


def test_one_record_per_label_map_and_what_is_passed_over_in_one_line(root, project_log):
    write_image(root / ADE_IMAGES / "ADE_val_00000001.jpg", 2, 3)
    write_image(root / ADE_IMAGES / "ADE_val_00000002.jpg", 2, 3)  # no label map
    write_image(root / ADE_IMAGES / "ADE_val_00000003.JPG", 2, 3)  # not .jpg
    write_image(root / ADE_IMAGES / "._ADE_val_00000001.jpg", 2, 3)  # macOS resource fork
    write_palette_png(root / ADE_MAPS / "ADE_val_00000001.png", [[0, 149, 255]] * 2)
    (root / ADE_MAPS / "README.txt").write_text("made by hand")
    with project_log.at_level(logging.INFO):
        (record,) = DatasetCatalog.get("cliptrase_ade150_val")
    assert record["file_name"] == str(root / ADE_IMAGES / "ADE_val_00000001.jpg")
    assert (record["height"], record["width"], record["image_id"]) == (2, 3, "ADE_val_00000001")
    (line,) = [r.getMessage() for r in project_log.records if "passed over" in r.getMessage()]
    assert line.startswith(f"Loaded 1 images of cliptrase_ade150_val from {root / ADE_IMAGES}")
    assert "1 other images" in line
    assert "3 other files (._ADE_val_00000001.jpg, ADE_val_00000003.JPG, README.txt)" in line


def test_a_label_map_with_two_images_is_refused_with_both_names(root):
    write_image(root / SAMPLE_IMAGES / "photo.jpg", 2, 2)
    write_image(root / SAMPLE_IMAGES / "photo.png", 2, 2, "PNG")
    write_palette_png(root / SAMPLE_MAPS / "photo.png", [[0, 20]] * 2)
    with pytest.raises(InputError) as error:
        DatasetCatalog.get("cliptrase_sample_voc21")
    assert str(error.value) == (
        f"Dataset 'cliptrase_sample_voc21': label map {root / SAMPLE_MAPS / 'photo.png'} has two "
        f"images, {root / SAMPLE_IMAGES / 'photo.jpg'} and {root / SAMPLE_IMAGES / 'photo.png'}: "
        "keep one of them"
    )


def test_an_image_is_never_paired_with_another_image_s_label_map(root):
    """Detectron2's load_sem_seg pairs the sorted lists when their lengths agree: c.jpg would
    get b.png. Here b.png is a label map without its image."""
    for stem in ("a", "c"):
        write_image(root / ADE_IMAGES / f"{stem}.jpg", 2, 2)
    for stem in ("a", "b"):
        write_palette_png(root / ADE_MAPS / f"{stem}.png", [[0, 1]] * 2)
    with pytest.raises(
        MissingFileError,
        match=re.escape(
            f"{root / ADE_MAPS / 'b.png'} has no image; expected {root / ADE_IMAGES / 'b.jpg'}"
        ),
    ):
        DatasetCatalog.get("cliptrase_ade150_val")


@pytest.mark.parametrize("kind", ["text", "symlink loop"])
def test_a_file_that_is_no_image_is_one_line(root, kind):
    image = root / ADE_IMAGES / "ADE_val_00000001.jpg"
    image.parent.mkdir(parents=True)
    if kind == "text":
        image.write_text("not an image")
    else:
        os.symlink(image.name, image)
    write_palette_png(root / ADE_MAPS / "ADE_val_00000001.png", [[0]])
    with pytest.raises(InputError) as error:
        DatasetCatalog.get("cliptrase_ade150_val")
    message = str(error.value)
    assert message.startswith(
        f"Dataset 'cliptrase_ade150_val': {image} cannot be read as an image ("
    )
    assert message.endswith("); replace or remove it") and "\n" not in message


def test_a_split_with_another_count_is_reported_with_the_ids(root, project_log):
    voc = root / "VOCdevkit/VOC2012"
    (voc / "ImageSets/Segmentation").mkdir(parents=True)
    (voc / "ImageSets/Segmentation/val.txt").write_text("2007_000033\n2007_000042\n2011_003276\n")
    for image_id in ("2007_000033", "2007_000042", "2008_000001"):
        write_image(voc / f"JPEGImages/{image_id}.jpg", 2, 2)
    for image_id in ("2007_000033", "2011_003276", "2008_000001"):  # 2008_000001: not listed
        write_palette_png(voc / f"annotations_detectron2/val/{image_id}.png", [[0, 255]] * 2)
    write_image(voc / "JPEGImages/2011_003276.jpg", 2, 2)
    (voc / "annotations_detectron2/val/2007_000042.png").unlink(missing_ok=True)
    with project_log.at_level(logging.INFO):
        records = DatasetCatalog.get("cliptrase_voc20_val")
    assert [r["image_id"] for r in records] == ["2007_000033", "2011_003276"]
    text = project_log.text
    assert (
        f"1 ids listed in {voc / 'ImageSets/Segmentation/val.txt'} have no label map in "
        f"{voc / 'annotations_detectron2/val'} (2007_000042)" in text
    )
    assert "2 images, the official split has 1449" in text
    assert "1 label maps outside the split's list" in text


@pytest.mark.parametrize(
    "content, problem",
    [(b"", "lists no image ids"), (b"\xff\xfe\x00\x01", "cannot be read as text ('utf-8' codec")],
)
def test_a_split_list_that_is_empty_or_not_text_is_named(root, content, problem):
    """Before: an empty list ended in 'no label maps ... image X has none' (X had one), one that
    is not UTF-8 in a UnicodeDecodeError traceback."""
    voc = root / "VOCdevkit/VOC2012"
    write_image(voc / "JPEGImages/2007_000033.jpg", 2, 2)
    write_palette_png(voc / "annotations_detectron2/val/2007_000033.png", [[0, 255]] * 2)
    (voc / "ImageSets/Segmentation").mkdir(parents=True)
    (voc / "ImageSets/Segmentation/val.txt").write_bytes(content)
    with pytest.raises(InputError) as error:
        DatasetCatalog.get("cliptrase_voc20_val")
    assert str(error.value).startswith(
        f"Dataset 'cliptrase_voc20_val': {voc / 'ImageSets/Segmentation/val.txt'}, the list of the "
        f"images to evaluate, {problem}"
    )
    assert "restore it from the dataset's download or prepare script" in str(error.value)
    # a list saved with a byte-order mark (Windows editors) lists its first id too
    (voc / "ImageSets/Segmentation/val.txt").write_bytes(b"\xef\xbb\xbf2007_000033\n")
    assert [r["image_id"] for r in DatasetCatalog.get("cliptrase_voc20_val")] == ["2007_000033"]


def test_a_missing_sample_says_where_the_scripts_are(root):
    with pytest.raises(MissingFileError) as error:
        DatasetCatalog.get("cliptrase_sample_voc21")
    assert "`python datasets/prepare_sample.py`, a script of the cliptrase-d2 repository" in str(
        error.value
    )
    assert "the installed package does not carry datasets/" in str(error.value)


def test_the_readme_registers_a_folder_of_one_s_own(tmp_path, monkeypatch):
    readme = (REPO / "datasets/README.md").read_text()
    section = readme[readme.index("## Your own dataset") :]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    write_image(tmp_path / "my_dataset/images/street_01.jpg", 3, 4)
    write_palette_png(tmp_path / "my_dataset/labels/street_01.png", [[0, 1, 2, 255]] * 3)
    exec(code, {})
    (record,) = DatasetCatalog.get("my_dataset_val")
    assert record["sem_seg_file_name"] == os.path.join("my_dataset", "labels", "street_01.png")
    meta = MetadataCatalog.get("my_dataset_val")
    assert meta.stuff_classes == ["road", "car", "tree"] and meta.ignore_label == 255
    assert vocabulary_of_dataset("my_dataset_val").class_names == ["road", "car", "tree"]
    DatasetCatalog.remove("my_dataset_val")
    MetadataCatalog.remove("my_dataset_val")


def test_the_check_command(root, monkeypatch, caplog):
    monkeypatch.setitem(OFFICIAL_SPLITS["ade150"], "images", 2)
    for stem in ("ADE_val_00000001", "ADE_val_00002000"):
        write_image(root / ADE_IMAGES / f"{stem}.jpg", 4, 6)
    write_palette_png(root / ADE_MAPS / "ADE_val_00000001.png", [[0, 149, 255, 0, 0, 0]] * 4)
    last = root / ADE_MAPS / "ADE_val_00002000.png"

    def run():
        caplog.clear()
        with caplog.at_level(logging.INFO):
            rc = check.main(["--root", str(root)])
        return rc, "".join(
            f"{r.getMessage()}\n" for r in caplog.records if r.name == check.__name__
        )

    write_palette_png(last, [[0] * 6] * 3)  # one row short
    assert run() == (1, f"cliptrase_ade150_val: FAILED: {last} is 6x3, its image 6x4\n")
    write_palette_png(last, [[0, 150, 254, 255, 1, 2]] * 4)
    assert run()[1].endswith(f"FAILED: {last} holds [150, 254], not in 0..149 or 255\n")
    Image.fromarray(np.full((4, 6), 2.5, np.float32)).save(last, format="TIFF")  # mode F
    assert run()[1].endswith(
        f"FAILED: ground truth '{last}' is a float image (PIL mode F); a label map must be an "
        "integer single-channel image (8-bit, palette or 16-bit PNG): re-run the dataset's "
        "prepare script\n"
    )
    write_palette_png(last, [[0, 149, 255, 1, 2, 3]] * 4)
    assert run() == (
        0,
        "cliptrase_ade150_val: OK: 2 images (the official count), label maps of their images' "
        "sizes with values in 0..149 or 255\n",
    )
    monkeypatch.setitem(OFFICIAL_SPLITS["ade150"], "images", 2000)
    assert run()[1].endswith("cliptrase_ade150_val: FAILED: 2 images, official 2000\n")


def test_the_check_command_names_a_user_dataset_s_bad_metadata(tmp_path, caplog):
    """A dataset of one's own without ignore_label ended the check in Detectron2's raw
    AttributeError; it is now checked as the evaluators check it."""
    write_image(tmp_path / "a.jpg", 2, 2)
    write_palette_png(tmp_path / "a.png", [[0, 1]] * 2)
    record = {"file_name": str(tmp_path / "a.jpg"), "sem_seg_file_name": str(tmp_path / "a.png")}
    DatasetCatalog.register("my_unchecked", lambda: [dict(record, height=2, width=2)])
    MetadataCatalog.get("my_unchecked").set(stuff_classes=["road", "car"])
    try:
        with caplog.at_level(logging.INFO):
            assert check.main(["my_unchecked"]) == 1
        assert "my_unchecked: FAILED: Dataset 'my_unchecked': metadata ignore_label is " in (
            caplog.text
        )
        MetadataCatalog.get("my_unchecked").set(ignore_label=255)
        caplog.clear()
        with caplog.at_level(logging.INFO):
            assert check.main(["my_unchecked"]) == 0
        assert "my_unchecked: OK: 1 images" in caplog.text
    finally:
        DatasetCatalog.remove("my_unchecked")
        MetadataCatalog.remove("my_unchecked")


def test_the_check_command_reads_detectron2_load_sem_seg_records_as_the_evaluation(
    tmp_path, caplog
):
    """Records of Detectron2's load_sem_seg (Detectron2's own sem-seg datasets too) have no
    height/width: the evaluation's mapper takes the size from the image, and the check ended in
    KeyError 'height'. A record without a label map ended it in KeyError 'sem_seg_file_name'
    where the evaluators name it."""
    write_image(tmp_path / "images/a.jpg", 4, 6)
    write_palette_png(tmp_path / "labels/a.png", [[0, 1, 255, 0, 0, 0]] * 3)  # one row short
    records = load_sem_seg(str(tmp_path / "labels"), str(tmp_path / "images"))
    DatasetCatalog.register("my_d2_val", lambda: [dict(record) for record in records])
    MetadataCatalog.get("my_d2_val").set(stuff_classes=["road", "car"], ignore_label=255)
    try:
        with caplog.at_level(logging.INFO):
            assert check.main(["my_d2_val"]) == 1
        assert f"my_d2_val: FAILED: {records[0]['sem_seg_file_name']} is 6x3, its image 6x4" in (
            caplog.text
        )
        write_palette_png(tmp_path / "labels/a.png", [[0, 1, 255, 0, 0, 0]] * 4)
        caplog.clear()
        with caplog.at_level(logging.INFO):
            assert check.main(["my_d2_val"]) == 0
        assert "my_d2_val: OK: 1 images" in caplog.text
        del records[0]["sem_seg_file_name"]
        caplog.clear()
        with caplog.at_level(logging.INFO):
            assert check.main(["my_d2_val"]) == 1
        assert "a.jpg' has no 'sem_seg_file_name' (its ground-truth label map)" in caplog.text
    finally:
        DatasetCatalog.remove("my_d2_val")
        MetadataCatalog.remove("my_d2_val")


def test_a_label_map_too_large_to_decode_is_named_alike_by_the_check_and_the_evaluation(
    root, monkeypatch, caplog
):
    """Past Pillow's decompression-bomb limit, the evaluators stopped in Pillow's bare
    DecompressionBombError, which names no file; the check and the evaluators now read label maps
    through one function (open_label_map), which names it."""
    write_image(root / SAMPLE_IMAGES / "photo.jpg", 2, 2)
    write_palette_png(root / SAMPLE_MAPS / "photo.png", [[0, 20, 255, 0, 0, 0]] * 4)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10)  # refused at twice the limit: 24 > 20
    path = root / SAMPLE_MAPS / "photo.png"
    said = f"cannot read ground truth '{path}' of dataset 'cliptrase_sample_voc21': Image size"
    with caplog.at_level(logging.INFO):
        assert check.main(["cliptrase_sample_voc21"]) == 1
    assert f"cliptrase_sample_voc21: FAILED: {said}" in caplog.text
    evaluator = StandardSemSegEvaluator("cliptrase_sample_voc21", distributed=False)
    evaluator.reset()
    (record,) = DatasetCatalog.get("cliptrase_sample_voc21")
    with pytest.raises(InputError, match=re.escape(said)):
        evaluator.process([record], [{"sem_seg": torch.zeros(21, 2, 2)}])


def test_a_tilde_in_the_check_root_or_detectron2_datasets_is_the_home_folder(root, monkeypatch):
    """check --root "~/datasets" (quoted) looked for a folder named '~' in the working folder, and
    so did the registration for DETECTRON2_DATASETS="~/datasets"."""
    write_image(root / SAMPLE_IMAGES / "photo.jpg", 2, 2)
    write_palette_png(root / SAMPLE_MAPS / "photo.png", [[0, 20]] * 2)
    monkeypatch.setenv("HOME", str(root.parent))
    assert check.main(["--root", f"~/{root.name}", "cliptrase_sample_voc21"]) == 0
    monkeypatch.setenv("DETECTRON2_DATASETS", f"~/{root.name}")
    assert check.main(["cliptrase_sample_voc21"]) == 0
