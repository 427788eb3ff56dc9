"""The prepare scripts on small inputs in the official layouts: PASCAL Context from the Detail
annotations and from the .mat files (label values at the edges, the count of differing pixels,
missing files as warnings), COCO-Object derived from existing COCO-Stuff171 maps, the summary
and its official validation counts, and the folders SAN, CAT-Seg and the CLIPtrase authors'
code use, read by the registered datasets."""

import json
import logging
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from detectron2.data import DatasetCatalog
from PIL import Image
from pycocotools import mask as mask_utils

from cliptrase_d2.vocabulary import load_vocabularies
from test_datasets import (  # noqa: F401  (root: a pytest fixture used by name)
    labels_of,
    make_voc2012,
    prepare,
    root,
    write_image,
    write_palette_png,
)

PC459 = load_vocabularies()["benchmarks"]["pc459"]["classes"]
PC59 = load_vocabularies()["benchmarks"]["pc59"]["classes"]
IDS = ("2008_000002", "2008_000003")


def detail_id(name):
    """1-based PC459 id: the category ids of trainval_merged.json and the LabelMap values."""
    return PC459.index(name) + 1


def segment(image_id, category_id, mask):
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {
        "image_id": image_id,
        "category_id": category_id,
        "segmentation": {"size": rle["size"], "counts": rle["counts"].decode("ascii")},
    }


def make_pascal_context(voc, with_mat=True, with_json=True, missing_mat=()):
    """Two 4 x 6 val images. .mat LabelMap per row: aeroplane, table, accordion (not in PC59),
    wool (PC459's last class), unlabelled, wood (PC59's last class). The Detail annotations agree,
    except that 'wood' covers only rows 0-1 and a later 'person' segment overwrites (3, 1)."""
    label_map = np.array(
        [
            [
                detail_id("aeroplane"),
                detail_id("table"),
                detail_id("accordion"),
                459,
                0,
                detail_id("wood"),
            ]
        ]
        * 4,
        dtype=np.uint16,
    )
    (voc / "ImageSets/Main").mkdir(parents=True)
    (voc / "ImageSets/Main/val.txt").write_text("".join(f"{i}\n" for i in IDS))
    (voc / "trainval").mkdir(parents=True)
    images, segments = [], []
    for number, image_id in enumerate(IDS):
        write_image(voc / f"JPEGImages/{image_id}.jpg", 4, 6)
        if with_mat and image_id not in missing_mat:
            scipy.io.savemat(str(voc / f"trainval/{image_id}.mat"), {"LabelMap": label_map})
        images.append(
            {
                "file_name": f"{image_id}.jpg",
                "image_id": number,
                "height": 4,
                "width": 6,
                "phase": "val",
            }
        )
        column = np.zeros((4, 6), dtype=bool)
        for col, name in enumerate(("aeroplane", "table", "accordion")):
            mask = column.copy()
            mask[:, col] = True
            segments.append(segment(number, detail_id(name), mask))
        wood = column.copy()
        wood[:2, 5] = True
        person = column.copy()
        person[3, 1] = True
        segments += [
            segment(number, detail_id("wood"), wood),
            segment(number, detail_id("person"), person),
        ]
    images.append(
        {"file_name": "2008_000004.jpg", "image_id": 9, "height": 4, "width": 6, "phase": "train"}
    )
    if with_json:
        (voc / "trainval_merged.json").write_text(
            json.dumps({"images": images, "annos_segmentation": segments})
        )


def test_pascal_context_from_the_detail_annotations_by_default(root, caplog):
    voc = root / "VOCdevkit/VOC2010"
    make_pascal_context(voc)
    main = prepare("prepare_pascal_context").main
    with caplog.at_level(logging.INFO, logger="prepare"):
        assert main(["--root", str(root)]) == 2 * 3 + 1  # three maps per image, the id list

    out = voc / "annotations_detectron2"
    aeroplane, diningtable, person, wood = (
        PC59.index(n) for n in ("aeroplane", "diningtable", "person", "wood")
    )
    assert (aeroplane, wood) == (0, 58)
    pc59 = labels_of(out / "pc59_val/2008_000002.png")
    np.testing.assert_array_equal(pc59[0], [0, diningtable, 255, 255, 255, 58])
    np.testing.assert_array_equal(
        pc59[3], [0, person, 255, 255, 255, 255]
    )  # later segment wins; no wood
    np.testing.assert_array_equal(
        labels_of(out / "pc60_val/2008_000002.png"), np.where(pc59 == 255, 59, pc59)
    )
    pc459 = labels_of(out / "pc459_val/2008_000002.tif")  # always from the .mat files
    np.testing.assert_array_equal(
        pc459[0], [1, PC459.index("table"), 0, 458, 65535, PC459.index("wood")]
    )
    # per image: (2, 5) and (3, 5) wood only in the .mat file, (3, 1) person instead of table
    assert (
        "PC59 from trainval_merged.json and from the .mat files: 6 of 48 pixels differ"
        in caplog.text
    )
    assert "in 2 images" in caplog.text
    assert "2 validation images, the official split has 5104" in caplog.text
    assert (voc / "pascalcontext_val.txt").read_text() == "2008_000002\n2008_000003\n"
    assert not (out / "pc59_val/2008_000004.png").exists()  # a train image of the annotations
    for name in ("cliptrase_pc59_val", "cliptrase_pc60_val", "cliptrase_pc459_val"):
        assert [r["image_id"] for r in DatasetCatalog.get(name)] == list(IDS)
    assert main(["--root", str(root)]) == 0


def uncompressed_rle(mask):
    """COCO's uncompressed RLE: run lengths over the column-major pixels, starting with zeros."""
    pixels = np.concatenate([[0], mask.flatten(order="F").astype(np.int64), [2]])
    changes = np.flatnonzero(pixels[1:] != pixels[:-1])
    return {"size": list(mask.shape), "counts": np.diff(np.concatenate([[0], changes])).tolist()}


def test_pascal_context_with_the_real_archives_irregularities(root, caplog):
    """VOC2010's val.txt lists an image the Detail annotations lack; one val image has no
    segments; segments come as compressed RLE, uncompressed RLE and polygons; the classes at
    both ends of the ranges (PC459 1 and 459, PC59 0 and 58) are there."""
    voc = root / "VOCdevkit/VOC2010"
    make_pascal_context(voc)
    data = json.loads((voc / "trainval_merged.json").read_text())
    lacking, empty, shapes = "2008_000007", "2008_000009", "2010_006078"
    (voc / "ImageSets/Main/val.txt").write_text(
        "".join(f"{i}\n" for i in (*IDS, lacking, empty, shapes))
    )
    label_map = scipy.io.loadmat(str(voc / f"trainval/{IDS[0]}.mat"))["LabelMap"]
    for number, image_id in ((20, empty), (21, shapes), (22, lacking)):
        write_image(voc / f"JPEGImages/{image_id}.jpg", 4, 6)
        scipy.io.savemat(str(voc / f"trainval/{image_id}.mat"), {"LabelMap": label_map})
        if image_id != lacking:
            data["images"].append(
                {
                    "file_name": f"{image_id}.jpg",
                    "image_id": number,
                    "height": 4,
                    "width": 6,
                    "phase": "val",
                }
            )
    left = np.zeros((4, 6), dtype=bool)
    left[:, :2] = True
    polygon = {
        "image_id": 21,
        "category_id": detail_id("wood"),
        "segmentation": [[0, 0, 2, 0, 2, 4, 0, 4]],
    }
    rle = {
        "image_id": 21,
        "category_id": detail_id("wool"),
        "segmentation": uncompressed_rle(~left),
    }
    data["annos_segmentation"] += [polygon, rle]
    (voc / "trainval_merged.json").write_text(json.dumps(data))
    main = prepare("prepare_pascal_context").main
    with caplog.at_level(logging.INFO, logger="prepare"):
        assert main(["--root", str(root)]) == 4 * 3 + 1
    assert f"lists 1 images that are not PASCAL Context val images ({lacking})" in caplog.text
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "4 validation images, the official split has 5104" in warnings[0]
    val_ids = sorted((*IDS, empty, shapes))
    assert (voc / "pascalcontext_val.txt").read_text().split() == val_ids
    out = voc / "annotations_detectron2"
    np.testing.assert_array_equal(labels_of(out / f"pc59_val/{empty}.png"), np.full((4, 6), 255))
    np.testing.assert_array_equal(labels_of(out / f"pc60_val/{empty}.png"), np.full((4, 6), 59))
    wood = PC59.index("wood")
    pc59 = labels_of(out / f"pc59_val/{shapes}.png")
    assert (pc59[:, 0] == wood).all() and (pc59[:, 3:] == 255).all()  # wool: not a PC59 class
    assert (
        not (out / f"pc59_val/{lacking}.png").exists()
        and not (out / f"pc459_val/{lacking}.tif").exists()
    )
    for name in ("cliptrase_pc59_val", "cliptrase_pc60_val", "cliptrase_pc459_val"):
        assert [r["image_id"] for r in DatasetCatalog.get(name)] == val_ids
    assert "4 images, the official split has 5104" in caplog.text


def test_an_empty_from_pc59_folder_is_named(root, tmp_path, monkeypatch):
    make_pascal_context(root / "VOCdevkit/VOC2010", with_json=False)
    (tmp_path / "label").mkdir()
    message = _exit_message(
        "prepare_pascal_context", monkeypatch, "--root", root, "--from-pc59", tmp_path / "label"
    )
    assert message == f"error: no PC59 maps (*.png) in {tmp_path / 'label'} (--from-pc59)"


def test_a_segment_that_is_neither_rle_nor_polygons_is_named(root, monkeypatch):
    voc = root / "VOCdevkit/VOC2010"
    make_pascal_context(voc)
    data = json.loads((voc / "trainval_merged.json").read_text())
    data["annos_segmentation"][0]["segmentation"] = "mask.png"
    (voc / "trainval_merged.json").write_text(json.dumps(data))
    message = _exit_message("prepare_pascal_context", monkeypatch, "--root", root)
    assert message == (
        f"error: {voc / 'trainval_merged.json'}: a segment of image {IDS[0]} has a "
        "'segmentation' that is neither RLE nor polygons (mask.png); is it PASCAL in Detail's "
        "file?"
    )


def test_a_segment_of_another_size_than_its_image_is_named(root, monkeypatch):
    voc = root / "VOCdevkit/VOC2010"
    make_pascal_context(voc)
    data = json.loads((voc / "trainval_merged.json").read_text())
    assert data["annos_segmentation"][0]["image_id"] == 0  # IDS[0], 4 x 6
    data["annos_segmentation"][0]["segmentation"] = segment(0, 1, np.ones((5, 6)))["segmentation"]
    (voc / "trainval_merged.json").write_text(json.dumps(data))
    message = _exit_message("prepare_pascal_context", monkeypatch, "--root", root)
    assert message == (
        f"error: {voc / 'trainval_merged.json'}: a segment of image {IDS[0]} is 6 x 5, the "
        "image 6 x 4; is it PASCAL in Detail's file?"
    )


def test_the_repository_s_class_tables_agree_with_vocabularies_json():
    """PC59's classes are PC459's (diningtable = table) in PC459's order, as datasets/README.md
    says; ade847_ids.json gives one distinct ADE object id per ADE847 class."""
    ids_459 = list(prepare("prepare_pascal_context").pc459_to_pc59())  # in PC59 order
    assert len(ids_459) == len(PC59) and ids_459 == sorted(ids_459)
    ade_ids = json.loads(prepare("prepare_ade20k_847").IDS_FILE.read_text())["ade_ids"]
    ade847 = load_vocabularies()["benchmarks"]["ade847"]["classes"]
    assert len(ade_ids) == len(set(ade_ids)) == len(ade847)


def test_catseg_s_pascal_context_folders_are_used_as_they_are(root, project_log):
    """CAT-Seg's scripts write pc59_val and pc459_val for the ids of its pascalcontext_val.txt
    (the Detail val images) beside VOC2010's val.txt, which lists one more."""
    voc = root / "VOCdevkit/VOC2010"
    (voc / "ImageSets/Main").mkdir(parents=True)
    (voc / "ImageSets/Main/val.txt").write_text("2008_000002\n2008_000007\n2010_006078\n")
    (voc / "pascalcontext_val.txt").write_text("2008_000002\n2010_006078\n")
    for image_id in ("2008_000002", "2008_000007", "2010_006078", "2008_000008"):
        write_image(voc / f"JPEGImages/{image_id}.jpg", 2, 3)
    for image_id in ("2008_000002", "2010_006078"):
        write_palette_png(
            voc / f"annotations_detectron2/pc59_val/{image_id}.png", [[0, 58, 255]] * 2
        )
    (voc / "annotations_detectron2/pc459_val").mkdir(parents=True)
    for image_id in ("2008_000002", "2010_006078", "2008_000007"):  # the last: an older 5,105 run
        Image.fromarray(np.array([[0, 458, 65535]] * 2, dtype=np.uint16)).save(
            voc / f"annotations_detectron2/pc459_val/{image_id}.tif"
        )
    with project_log.at_level(logging.INFO):
        for name in ("cliptrase_pc59_val", "cliptrase_pc459_val"):
            assert [r["image_id"] for r in DatasetCatalog.get(name)] == [
                "2008_000002",
                "2010_006078",
            ]
    assert "1 label maps outside the split's list" in project_log.text


def test_pascal_context_from_the_mat_files_by_option(root):
    voc = root / "VOCdevkit/VOC2010"
    make_pascal_context(voc, with_json=False)
    assert prepare("prepare_pascal_context").main(["--root", str(root), "--labels", "mat"]) == 6
    diningtable = PC59.index("diningtable")
    out = voc / "annotations_detectron2"
    np.testing.assert_array_equal(
        labels_of(out / "pc59_val/2008_000003.png")[3], [0, diningtable, 255, 255, 255, 58]
    )
    np.testing.assert_array_equal(
        labels_of(out / "pc60_val/2008_000003.png")[3], [0, diningtable, 59, 59, 59, 58]
    )


def test_pascal_context_missing_files_are_warnings(root, caplog):
    """One missing val .mat does not stop the run; a missing trainval_merged.json skips
    PC59/PC60."""
    voc = root / "VOCdevkit/VOC2010"
    make_pascal_context(voc, with_json=False, missing_mat=("2008_000002",))
    with caplog.at_level(logging.WARNING, logger="prepare"):
        assert prepare("prepare_pascal_context").main(["--root", str(root)]) == 1
    out = voc / "annotations_detectron2"
    assert (out / "pc459_val/2008_000003.tif").is_file() and not (
        out / "pc459_val/2008_000002.tif"
    ).exists()
    assert not (out / "pc59_val").exists()
    assert "trainval_merged.json not found" in caplog.text and "--labels mat" in caplog.text
    assert f"PASCAL Context label map not found: {voc / 'trainval/2008_000002.mat'}" in caplog.text
    assert "1 input files were missing" in caplog.text
    assert f"so the 2 ids of {voc / 'ImageSets/Main/val.txt'} are used" in caplog.text
    assert "CAT-Seg's pascalcontext_val.txt" in caplog.text
    assert not (voc / "pascalcontext_val.txt").exists()  # val.txt is not the published split
    assert f"{out / 'pc459_val'} holds 1 label maps for 2 validation images" in caplog.text


def test_pascal_context_pc60_from_existing_pc59_maps(root, tmp_path_factory):
    """SAN's pcontext/val/label (PC59 from the Detail annotations) gives PC60 without the json."""
    voc = root / "VOCdevkit/VOC2010"
    make_pascal_context(voc, with_mat=False, with_json=False)
    # VOC2010's val.txt lists an image that has no Detail annotations, so no SAN map
    (voc / "ImageSets/Main/val.txt").write_text("".join(f"{i}\n" for i in (*IDS, "2008_000007")))
    write_image(voc / "JPEGImages/2008_000007.jpg", 4, 6)
    san = tmp_path_factory.mktemp("san") / "pcontext/val/label"
    for image_id in IDS:
        write_palette_png(san / f"{image_id}.png", [[0, 58, 255, 17]] * 2)
    argv = ["--root", str(root), "--from-pc59", str(san)]
    assert prepare("prepare_pascal_context").main(argv) == 4 + 1  # PC59, PC60 maps, id list
    out = voc / "annotations_detectron2"
    np.testing.assert_array_equal(labels_of(out / "pc59_val/2008_000002.png")[0], [0, 58, 255, 17])
    np.testing.assert_array_equal(labels_of(out / "pc60_val/2008_000002.png")[0], [0, 58, 59, 17])
    for name in ("cliptrase_pc59_val", "cliptrase_pc60_val"):  # loadable: the 2 SAN images
        assert [r["image_id"] for r in DatasetCatalog.get(name)] == list(IDS)


def test_a_wrong_labels_txt_is_a_message_not_a_traceback(root, monkeypatch):
    voc = root / "VOCdevkit/VOC2010"
    make_pascal_context(voc)
    (voc / "labels.txt").write_text("1: accordion\n2: zebra\n")
    script = prepare("prepare_pascal_context")
    monkeypatch.setattr("sys.argv", ["prepare_pascal_context.py", "--root", str(root)])
    with pytest.raises(SystemExit) as error:
        script.run(script.main)
    assert str(error.value.code).startswith(
        f"error: {voc / 'labels.txt'} does not list the 459 classes"
    )


def test_coco_object_derived_from_existing_stuff171_maps(root, tmp_path_factory):
    """CAT-Seg's coco-stuff/annotations_detectron2 (the same 171-class maps) as input."""
    write_image(root / "coco/val2017/000000000139.jpg", 1, 5)
    catseg = tmp_path_factory.mktemp("catseg") / "coco-stuff/annotations_detectron2/val2017"
    write_palette_png(catseg / "000000000139.png", [[0, 79, 80, 170, 255]])
    main = prepare("prepare_coco_stuff").main
    assert main(["--root", str(root), "--stuff171", str(catseg)]) == 3
    coco = root / "coco"
    np.testing.assert_array_equal(
        labels_of(coco / "stuffthingmaps_detectron2/val2017/000000000139.png")[0],
        [0, 79, 80, 170, 255],
    )
    np.testing.assert_array_equal(
        labels_of(coco / "objectmaps_detectron2/val2017/000000000139.png")[0], [0, 79, 80, 80, 80]
    )
    np.testing.assert_array_equal(
        labels_of(coco / "objectmaps_paper_detectron2/val2017/000000000139.png")[0],
        [0, 79, 80, 255, 80],
    )
    # SAN's / the authors' coco/ has the 171-class maps but not the raw stuffthingmaps
    for folder in ("objectmaps_detectron2", "objectmaps_paper_detectron2"):
        (coco / folder / "val2017/000000000139.png").unlink()
    assert main(["--root", str(root)]) == 2
    np.testing.assert_array_equal(
        labels_of(coco / "objectmaps_detectron2/val2017/000000000139.png")[0], [0, 79, 80, 80, 80]
    )


def test_voc_from_san_s_voc2012_folder(root):
    """SAN's VOC2012/: JPEGImages, SegmentationClassAug (grayscale) and val.txt at its top."""
    san = root / "VOC2012"
    write_image(san / "JPEGImages/2007_000033.jpg", 1, 4)
    write_image(san / "JPEGImages/2008_000001.jpg", 1, 4)  # a train image
    (san / "SegmentationClassAug").mkdir(parents=True)
    Image.fromarray(np.array([[0, 20, 255, 1]], dtype=np.uint8), mode="L").save(
        san / "SegmentationClassAug/2007_000033.png"
    )
    (san / "val.txt").write_text("2007_000033\n")
    assert prepare("prepare_voc").main(["--root", str(root), "--voc2012", str(san)]) == 4
    voc = root / "VOCdevkit/VOC2012"
    np.testing.assert_array_equal(
        labels_of(voc / "annotations_detectron2_bg/val/2007_000033.png")[0], [20, 19, 255, 0]
    )
    assert [r["image_id"] for r in DatasetCatalog.get("cliptrase_voc21_val")] == ["2007_000033"]


def test_a_voc_image_missing_from_the_root_is_a_warning_and_its_maps_are_not_written(root, caplog):
    """val.txt lists 2007_000042, whose label map is there but its photo is not. Before: in the
    root, no warning and its maps written, so loading the dataset failed on a map without image."""
    make_voc2012(voc := root / "VOCdevkit/VOC2012")
    (voc / "JPEGImages/2007_000042.jpg").unlink()
    with caplog.at_level(logging.INFO, logger="prepare"):
        assert prepare("prepare_voc").main(["--root", str(root)]) == 2
    assert f"VOC2012 image not found: {voc / 'JPEGImages/2007_000042.jpg'}" in caplog.text
    for name in ("cliptrase_voc20_val", "cliptrase_voc21_val"):
        assert [r["image_id"] for r in DatasetCatalog.get(name)] == ["2007_000033"]


def test_cityscapes_edges_and_summary(root, caplog):
    cityscapes = root / "cityscapes"
    write_image(
        cityscapes / "leftImg8bit/val/lindau/lindau_000000_000019_leftImg8bit.png", 1, 5, "PNG"
    )
    write_image(
        cityscapes / "leftImg8bit/val/lindau/lindau_000001_000019_leftImg8bit.png", 1, 5, "PNG"
    )
    write_palette_png(
        cityscapes / "gtFine/val/lindau/lindau_000000_000019_gtFine_labelIds.png",
        [[0, 7, 33, 34, 255]],
    )
    with caplog.at_level(logging.INFO, logger="prepare"):
        assert prepare("prepare_cityscapes").main(["--root", str(root)]) == 1
    target = cityscapes / "gtFine/val/lindau/lindau_000000_000019_gtFine_labelTrainIds.png"
    np.testing.assert_array_equal(labels_of(target)[0], [255, 0, 18, 255, 255])
    assert "classes seen in the maps written now: 2 of 19" in caplog.text
    assert "Cityscapes labelIds map not found" in caplog.text
    assert "2 validation images, the official split has 500" in caplog.text


def test_the_official_counts_raise_no_warning(root, caplog, monkeypatch):
    common = prepare("prepare_common")
    monkeypatch.setitem(common.SPLITS["ade150"], "images", 1)
    source = root / "ADEChallengeData2016"
    write_image(source / "images/validation/ADE_val_00000001.jpg", 1, 3)
    write_palette_png(source / "annotations/validation/ADE_val_00000001.png", [[0, 1, 150]])
    with caplog.at_level(logging.INFO, logger="prepare"):
        assert prepare("prepare_ade20k_150").main(["--root", str(root)]) == 1
    np.testing.assert_array_equal(
        labels_of(source / "annotations_detectron2/validation/ADE_val_00000001.png")[0],
        [255, 0, 149],
    )
    assert (
        "warning" not in caplog.text
        and "1 label maps; classes seen in the maps written now: 2 of 150" in caplog.text
    )


# ---------------------------------------------------------------- folders prepared for other
# projects


def test_san_and_authors_pascal_context_folders_are_read(root):
    for folder, suffix in (("pcontext", ".png"), ("pcontext_full", ".tif")):
        write_image(root / folder / "train/image/2008_000008.jpg", 2, 3)  # SAN's train split
        (root / folder / "train/label").mkdir(parents=True)
        write_image(root / folder / "val/image/2008_000002.jpg", 2, 3)
        write_image(root / folder / "val/image/2008_000003.jpg", 2, 3)  # no label map: not listed
        (root / folder / "val/label").mkdir(parents=True)
        (root / folder / "val/label" / f"2008_000002{suffix}").write_bytes(b"")
    for name, folder, suffix in (
        ("cliptrase_pc59_val", "pcontext", ".png"),
        ("cliptrase_pc459_val", "pcontext_full", ".tif"),
    ):
        (record,) = DatasetCatalog.get(name)
        assert record["file_name"] == str(root / folder / "val/image/2008_000002.jpg")
        assert record["sem_seg_file_name"] == str(
            root / folder / "val/label" / f"2008_000002{suffix}"
        )
    with pytest.raises(FileNotFoundError) as error:  # no other project has PC60 maps
        DatasetCatalog.get("cliptrase_pc60_val")
    assert "pcontext" not in str(error.value) and "prepare_pascal_context.py" in str(error.value)


@pytest.mark.parametrize(
    "image_dir", ["VOC2012/images_detectron2/val", "VOC2012/JPEGImages"], ids=["authors", "san"]
)
def test_authors_and_san_voc_folders_are_read(root, image_dir):
    # SAN's VOC script always makes these (empty image folders among them)
    for folder in (
        "images_detectron2/train",
        "images_detectron2/val",
        "annotations_detectron2/train_base",
    ):
        (root / "VOC2012" / folder).mkdir(parents=True)
    write_image(root / "VOC2012/JPEGImages/2007_000032.jpg", 2, 3)  # a train image
    write_image(root / image_dir / "2007_000033.jpg", 2, 3)
    write_palette_png(
        root / "VOC2012/annotations_detectron2/val/2007_000033.png", [[0, 255, 19]] * 2
    )
    (record,) = DatasetCatalog.get("cliptrase_voc20_val")
    assert (
        record["file_name"] == str(root / image_dir / "2007_000033.jpg") and record["height"] == 2
    )


def test_catseg_coco_stuff_folder_is_read_and_ours_comes_first(root):
    write_image(root / "coco-stuff/images/val2017/000000000139.jpg", 2, 3)
    write_palette_png(
        root / "coco-stuff/annotations_detectron2/val2017/000000000139.png", [[0, 1, 2]] * 2
    )
    (record,) = DatasetCatalog.get("cliptrase_coco_stuff171_val")
    assert record["sem_seg_file_name"].startswith(str(root / "coco-stuff"))
    write_image(root / "coco/val2017/000000000139.jpg", 2, 3)
    write_palette_png(
        root / "coco/stuffthingmaps_detectron2/val2017/000000000139.png", [[0, 1, 2]] * 2
    )
    for stray in ("val2017_base", "val2017_novel", "train2017"):  # SimSeg's script makes these
        (root / "coco/stuffthingmaps_detectron2" / stray).mkdir()
    write_palette_png(root / "coco/stuffthingmaps_detectron2/val2017_base/000000000139.png", [[0]])
    (record,) = DatasetCatalog.get("cliptrase_coco_stuff171_val")
    assert record["sem_seg_file_name"] == str(
        root / "coco/stuffthingmaps_detectron2/val2017/000000000139.png"
    )


def test_an_alternative_label_map_without_image_is_named(root):
    (root / "pcontext/val/image").mkdir(parents=True)
    write_palette_png(root / "pcontext/val/label/2008_000002.png", [[0]])
    with pytest.raises(
        FileNotFoundError, match="2008_000002.png has no image; expected .*2008_000002.jpg"
    ):
        DatasetCatalog.get("cliptrase_pc59_val")


# ---------------------------------------------------------------- bad paths: one line each


def test_a_label_folder_holding_none_of_the_maps_is_an_error(root, monkeypatch):
    """--stuffthingmaps naming the archive's top folder (its maps are in val2017/ below): every
    map was a warning and the run ended done, with nothing written."""
    write_image(root / "coco/val2017/000000000139.jpg", 1, 5)
    write_image(root / "coco/val2017/000000000285.jpg", 1, 5)
    top = root / "stuffthingmaps_trainval2017"
    write_palette_png(top / "val2017/000000000139.png", [[0, 1, 2, 3, 4]])
    message = _exit_message(
        "prepare_coco_stuff", monkeypatch, "--root", root, "--stuffthingmaps", top
    )
    assert message.startswith(
        f"error: none of the 2 COCO-Stuff maps is in {top} (e.g. 000000000139.png): give the "
        "folder that holds them"
    )
    assert not (root / "coco/stuffthingmaps_detectron2").exists()


def _exit_message(script_name, monkeypatch, *argv):
    script = prepare(script_name)
    monkeypatch.setattr("sys.argv", [f"{script_name}.py", *map(str, argv)])
    with pytest.raises(SystemExit) as error:
        script.run(script.main)
    message = str(error.value.code)
    assert message.startswith("error: ") and "Traceback" not in message
    return message


@pytest.mark.parametrize(
    "script_name, option, what",
    [
        ("prepare_voc", "--voc2012", "VOC2012 folder"),
        ("prepare_pascal_context", "--voc2010", "VOC2010 folder"),
        ("prepare_coco_stuff", "--val2017", "COCO val2017 images"),
        ("prepare_ade20k_150", "--ade", "ADE20K-150 val images"),
        ("prepare_cityscapes", "--cityscapes", "Cityscapes val images"),
    ],
)
def test_a_file_where_a_folder_goes_is_named(
    root, tmp_path, monkeypatch, script_name, option, what
):
    a_file = tmp_path / "archive.tar"
    a_file.write_bytes(b"not extracted")
    message = _exit_message(script_name, monkeypatch, option, a_file, "--root", root)
    assert what in message and str(a_file) in message


@pytest.mark.parametrize(
    "script_name, option",
    [
        ("prepare_voc", "--voc2012"),
        ("prepare_ade20k_847", "--ade-full"),
        ("prepare_sample", "--deb"),
    ],
)
def test_a_missing_input_is_named(root, tmp_path, monkeypatch, script_name, option):
    missing = tmp_path / "no_such_download"
    message = _exit_message(script_name, monkeypatch, option, missing, "--root", root)
    assert str(missing) in message and "not found" in message


@pytest.mark.parametrize("below", [False, True])
def test_a_dataset_root_that_is_a_file_is_named(tmp_path, monkeypatch, below):
    a_file = tmp_path / "datasets"
    a_file.write_text("")
    output_root = a_file / "sub" if below else a_file
    message = _exit_message("prepare_voc", monkeypatch, "--root", output_root)
    assert f"dataset root (--root or $DETECTRON2_DATASETS) {output_root}" in message
    assert f"{a_file} is a file, not a folder" in message


def test_an_unwritable_dataset_root_is_named(tmp_path, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(  # as root, chmod would not stop the writes: deny them here
        os, "access", lambda path, mode: Path(path) != locked and real_access(path, mode)
    )
    message = _exit_message("prepare_voc", monkeypatch, "--root", locked / "datasets")
    assert f"{locked / 'datasets'} is not writable ({locked} denies writing)" in message


def test_a_write_refused_midway_is_one_line(root, monkeypatch):
    voc = root / "VOCdevkit/VOC2012"
    make_voc2012(voc)
    script = prepare("prepare_voc")

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(voc / "annotations_detectron2"))

    monkeypatch.setattr(script.Summary, "save", refuse)
    message = _exit_message("prepare_voc", monkeypatch, "--root", root)
    assert message == (
        f"error: Permission denied: {voc / 'annotations_detectron2'} (give a path you can read, "
        "and an output root you can write)"
    )


def test_a_corrupt_index_or_archive_is_one_line(root, tmp_path, monkeypatch):
    ade = tmp_path / "ADE20K_2021_17_01"
    ade.mkdir()
    (ade / "index_ade20k.pkl").write_bytes(b"\x80\x04garbage")
    message = _exit_message("prepare_ade20k_847", monkeypatch, "--ade-full", ade, "--root", root)
    assert message.startswith("error: ")
    deb = tmp_path / "labelme-examples_1.0_all.deb"
    deb.write_bytes(b"not a deb")
    monkeypatch.setattr("shutil.which", lambda name: None)  # the pure-Python .deb reader
    message = _exit_message("prepare_sample", monkeypatch, "--deb", deb, "--root", root)
    assert message == f"error: {deb} is not a .deb package (no ar header)"


@pytest.mark.parametrize(
    "script_name, spoil, what",
    [
        ("prepare_pascal_context", ("trainval_merged.json", b"not json {"), "trainval_merged"),
        ("prepare_pascal_context", ("trainval_merged.json", b"{}"), "no entry 'images'"),
        ("prepare_pascal_context", ("trainval/2008_000003.mat", b"not a mat"), "Context label"),
        ("prepare_pascal_context", ("trainval/2008_000003.mat", None), "no entry 'LabelMap'"),
        ("prepare_pascal_context", ("labels.txt", b"1: accordion\n\xff\xfe"), "labels.txt ('utf-8"),
        ("prepare_voc", ("SegmentationClass/2007_000042.png", lambda b: b[:60]), "VOC2012 label"),
        ("prepare_voc", ("ImageSets/Segmentation/val.txt", b"\xff\xfe\x00"), "list of image ids"),
        ("prepare_voc", ("ImageSets/Segmentation/val.txt", b"\n"), "lists no image ids"),
        ("prepare_ade20k_847", ("index_ade20k.pkl", pickle.dumps([1])), "the ADE20K index"),
        ("prepare_ade20k_847", ("index_ade20k.pkl", b"\x80\x04garbage"), "the ADE20K index"),
    ],
)
def test_an_input_file_that_is_not_what_it_should_be_is_named(
    root, monkeypatch, script_name, spoil, what
):
    """A JSON that is not JSON or lacks its entries, a .mat that is not one or has no LabelMap, a
    truncated label PNG, a split list that is not text, an index that is no ADE20K index: one line
    naming the file and where it comes from (a traceback, or the parser's message without the
    file, before)."""
    folder = {"prepare_pascal_context": root / "VOCdevkit/VOC2010"}.get(script_name)
    if folder is not None:
        make_pascal_context(folder)
    elif script_name == "prepare_voc":
        make_voc2012(folder := root / "VOCdevkit/VOC2012")
    else:
        (folder := root / "ADE20K_2021_17_01").mkdir()
    name, content = spoil
    if content is None:
        scipy.io.savemat(str(folder / name), {"Other": np.zeros((4, 6))})
    else:
        path = folder / name
        path.write_bytes(content(path.read_bytes()) if callable(content) else content)
    message = _exit_message(script_name, monkeypatch, "--root", root)
    assert message.startswith(f"error: {folder / name} ")
    assert what in message and "replace it with the file from " in message


@pytest.mark.parametrize(
    "script_name, label_file, values, argv, what",
    [  # a colour VOC map converted to grayscale: person (192, 128, 128) became 147
        (
            "prepare_voc",
            "VOCdevkit/VOC2012/SegmentationClass/2007_000042.png",
            [0, 255, 147],
            (),
            "VOC2012 label map",
        ),
        (
            "prepare_ade20k_150",
            "ADEChallengeData2016/annotations/validation/ADE_val_00000001.png",
            [0, 150, 151],
            (),
            "ADE20K-150 annotation",
        ),
        # COCO-Stuff's raw maps (category id - 1: wood is 181) given as 171-class ones
        (
            "prepare_coco_stuff",
            "raw/000000000139.png",
            [0, 170, 181],
            ("--stuff171", "raw"),
            "COCO-Stuff map",
        ),
        # mmseg's SegmentationClassContext (0 background, 1..59) given as PC59 maps
        (
            "prepare_pascal_context",
            "mmseg/2008_000002.png",
            [0, 58, 59],
            ("--from-pc59", "mmseg"),
            "a PC59 map",
        ),
    ],
)
def test_a_label_map_with_values_its_format_lacks_is_named(
    root, monkeypatch, script_name, label_file, values, argv, what
):
    """Before: the values outside the input format's range became void (or, for --stuff171 and
    --from-pc59, were written as class ids) and the run ended 'done'."""
    if script_name == "prepare_voc":
        make_voc2012(root / "VOCdevkit/VOC2012")
    elif script_name == "prepare_pascal_context":
        make_pascal_context(root / "VOCdevkit/VOC2010", with_mat=False, with_json=False)
    else:
        image = {
            "prepare_ade20k_150": "ADEChallengeData2016/images/validation/ADE_val_00000001.jpg",
            "prepare_coco_stuff": "coco/val2017/000000000139.jpg",
        }[script_name]
        write_image(root / image, 1, 3)
    write_palette_png(root / label_file, [values])
    argv = [str(root / a) if a in ("raw", "mmseg") else a for a in argv]
    message = _exit_message(script_name, monkeypatch, "--root", root, *argv)
    assert message.startswith(f"error: {root / label_file} cannot be read as {what} ")
    assert f"(it holds [{values[2]}], values such a map does not hold)" in message
    outputs = [p for p in root.rglob(f"{Path(label_file).stem}*") if "detectron2" in str(p)]
    assert not outputs


def test_labelme_files_that_are_no_images_are_named(root, tmp_path, monkeypatch):
    labelme = tmp_path / "data_dataset_voc"
    for image_id in prepare("prepare_sample").LABELME_IDS:
        write_image(labelme / f"JPEGImages/{image_id}.jpg", 4, 4)
        write_palette_png(labelme / f"SegmentationClassPNG/{image_id}.png", [[0] * 4] * 4)
    (labelme / "SegmentationClassPNG/2011_000003.png").write_text("not a png")
    message = _exit_message("prepare_sample", monkeypatch, "--labelme-dir", labelme, "--root", root)
    assert message == (
        f"error: SegmentationClassPNG/2011_000003.png of {labelme} or its photo is not a readable "
        "image (truncated, or another kind of file); give the labelme-examples package's files"
    )


def test_a_split_list_with_a_byte_order_mark_lists_its_first_id(root):
    """A val.txt saved by a Windows editor: its first id was read as '\\ufeff2007_000033', and
    that image was left out as missing."""
    make_voc2012(voc := root / "VOCdevkit/VOC2012")
    split = voc / "ImageSets/Segmentation/val.txt"
    split.write_bytes(b"\xef\xbb\xbf" + split.read_bytes())
    assert prepare("prepare_voc").main(["--root", str(root)]) == 4


@pytest.mark.parametrize(
    "option, given, what",
    [
        ("--detail-json", "no_such.json", "PASCAL in Detail annotations (--detail-json) not found"),
        ("--detail-json", "VOC2010", "PASCAL in Detail annotations (--detail-json) "),
        ("--context", "trainval.tar.gz", "PASCAL Context label folder (--context) "),
    ],
)
def test_a_given_pascal_context_input_that_is_not_there_is_named(
    root, tmp_path, monkeypatch, option, given, what
):
    """Before: a warning, and the run went on without it (a --detail-json with a typo: PC59 and
    PC60 not written, the 5,105 ids of val.txt instead of the published split; exit status 0)."""
    make_pascal_context(voc := tmp_path / "VOC2010")
    (tmp_path / "trainval.tar.gz").write_bytes(b"not extracted")
    argv = ("--voc2010", voc, option, tmp_path / given, "--root", root)
    message = _exit_message("prepare_pascal_context", monkeypatch, *argv)
    assert message.startswith(f"error: {what}") and str(tmp_path / given) in message
    assert not (root / "VOCdevkit/VOC2010/annotations_detectron2").exists()


def test_a_tilde_the_shell_left_is_the_home_folder(root, tmp_path, monkeypatch):
    """prepare_voc.py --voc2012 "~/VOC2012" --root=~/datasets: the input was 'not found' and the
    output went into a new folder named '~' in the working folder."""
    make_voc2012(tmp_path / "VOC2012")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(root)
    assert prepare("prepare_voc").main(["--voc2012", "~/VOC2012", "--root=~/datasets"]) > 0
    assert (tmp_path / "datasets/VOCdevkit/VOC2012/annotations_detectron2/val").is_dir()
    monkeypatch.setenv("DETECTRON2_DATASETS", "~/from_env")  # quoted: was a folder named '~'
    assert prepare("prepare_voc").main(["--voc2012", "~/VOC2012"]) > 0
    assert (tmp_path / "from_env/VOCdevkit/VOC2012/annotations_detectron2/val").is_dir()
    assert not (root / "~").exists()
