"""Tests of cliptrase_d2.data.datasets and datasets/prepare_*.py: every benchmark registered with
its
metadata, lazy loading with errors that name the missing file and the script that creates it, and
each prepare script on tiny synthetic inputs (label values, idempotence, missing inputs)."""

import dataclasses
import importlib
import io
import json
import os
import pickle
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import cliptrase_d2  # noqa: F401  (detectron2 0.6 shims, before detectron2)
import cliptrase_d2.data  # noqa: F401  (registers the datasets)
from detectron2.data import DatasetCatalog, MetadataCatalog

from cliptrase_d2.data.datasets import (
    BENCHMARK_DATASETS,
    BENCHMARK_SPLITS,
    SAMPLE_SPLITS,
    register_benchmark_datasets,
    register_sample_datasets,
    register_split,
    require_registered,
)
from cliptrase_d2.vocabulary import load_vocabularies
from conftest import require_fixtures, skip_outside_ci

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(os.environ.get("CLIPTRASE_FIXTURES", REPO.parent / "shared" / "fixtures"))
sys.path.insert(0, str(REPO / "datasets"))  # the prepare scripts import prepare_common from there

EXPECTED_NAMES = {
    "voc20": "cliptrase_voc20_val",
    "voc21": "cliptrase_voc21_val",
    "pc59": "cliptrase_pc59_val",
    "pc60": "cliptrase_pc60_val",
    "pc459": "cliptrase_pc459_val",
    "coco_stuff171": "cliptrase_coco_stuff171_val",
    "coco_object80": "cliptrase_coco_object80_val",
    "ade150": "cliptrase_ade150_val",
    "ade847": "cliptrase_ade847_val",
    "cityscapes19": "cliptrase_cityscapes19_val",
}
PREPARE_SCRIPT = {
    "cliptrase_voc20_val": "prepare_voc.py",
    "cliptrase_voc21_val": "prepare_voc.py",
    "cliptrase_pc59_val": "prepare_pascal_context.py",
    "cliptrase_pc60_val": "prepare_pascal_context.py",
    "cliptrase_pc459_val": "prepare_pascal_context.py",
    "cliptrase_coco_stuff171_val": "prepare_coco_stuff.py",
    "cliptrase_coco_object80_val": "prepare_coco_stuff.py",
    "cliptrase_coco_object80_paper_val": "prepare_coco_stuff.py",
    "cliptrase_ade150_val": "prepare_ade20k_150.py",
    "cliptrase_ade847_val": "prepare_ade20k_847.py",
    "cliptrase_cityscapes19_val": "prepare_cityscapes.py",
    "cliptrase_sample_voc21": "prepare_sample.py",
    "cliptrase_sample_voc20": "prepare_sample.py",
}
VOID_AS_BACKGROUND = {"voc21", "pc60", "coco_object80"}  # docs/method.md section 9, paper protocol


def prepare(script):
    return importlib.import_module(script)


@pytest.fixture
def root(tmp_path, monkeypatch):
    """An empty dataset root: $DETECTRON2_DATASETS points at it and the datasets are registered
    under it."""
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    register_benchmark_datasets()
    register_sample_datasets()
    yield tmp_path
    monkeypatch.undo()
    register_benchmark_datasets()
    register_sample_datasets()


def mtimes(folder: Path):
    return {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


def labels_of(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path), dtype=np.int64)


def write_image(path: Path, height: int, width: int, suffix_format: str = "JPEG") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(
        path, format=suffix_format
    )


def write_palette_png(path: Path, labels) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(np.asarray(labels, dtype=np.uint8), mode="P")
    image.putpalette([v for i in range(256) for v in (i, 255 - i, (7 * i) % 256)])
    image.save(path)


def assert_idempotent(main, argv, folder: Path) -> None:
    before = mtimes(folder)
    assert main(argv) == 0
    assert mtimes(folder) == before


# ---------------------------------------------------------------- registration and metadata


def test_benchmark_names():
    assert BENCHMARK_DATASETS == EXPECTED_NAMES


@pytest.mark.parametrize("vocabulary", sorted(EXPECTED_NAMES))
def test_every_benchmark_is_registered_with_its_metadata(vocabulary):
    name = EXPECTED_NAMES[vocabulary]
    assert name in DatasetCatalog.list()
    meta = MetadataCatalog.get(name)
    benchmark = load_vocabularies()["benchmarks"][vocabulary]
    background = benchmark.get("background", [])
    expected_classes = [c.strip() for c in benchmark["classes"]] + (
        ["background"] if background else []
    )
    assert meta.stuff_classes == expected_classes  # ADE150's published 'bed ' reported as 'bed'
    assert all(c == c.strip() for c in meta.stuff_classes)
    assert len(meta.stuff_classes) == len(benchmark["classes"]) + (1 if background else 0)
    assert meta.background_words == background
    assert meta.vocabulary == vocabulary
    assert meta.evaluator_type == "sem_seg"
    assert meta.ignore_label == (65535 if len(expected_classes) > 255 else 255)
    assert meta.paper_void_as_background is (vocabulary in VOID_AS_BACKGROUND)
    root = os.getenv("DETECTRON2_DATASETS", "datasets")
    assert meta.image_root.startswith(root) and meta.sem_seg_root.startswith(root)


def test_paper_coco_object_variant_bakes_void_into_its_labels():
    meta = MetadataCatalog.get("cliptrase_coco_object80_paper_val")
    standard = MetadataCatalog.get("cliptrase_coco_object80_val")
    assert meta.stuff_classes == standard.stuff_classes and len(meta.stuff_classes) == 81
    assert meta.vocabulary == "coco_object80"
    assert (
        meta.paper_void_as_background is False
    )  # void is already background (80) in its label maps
    assert meta.sem_seg_root != standard.sem_seg_root and meta.image_root == standard.image_root


def test_sample_and_fixture_datasets_are_registered():
    voc21, voc20 = (
        MetadataCatalog.get("cliptrase_sample_voc21"),
        MetadataCatalog.get("cliptrase_sample_voc20"),
    )
    assert len(voc21.stuff_classes) == 21 and voc21.paper_void_as_background is True
    assert len(voc20.stuff_classes) == 20 and voc20.paper_void_as_background is False
    assert voc21.image_root == voc20.image_root and voc21.sem_seg_root != voc20.sem_seg_root
    fixtures = {
        n: MetadataCatalog.get(f"cliptrase_fixtures_{n}") for n in ("voc21", "voc20", "pc59")
    }
    assert [len(m.stuff_classes) for m in fixtures.values()] == [21, 20, 59]
    assert fixtures["voc21"].paper_void_as_background is True


def test_require_registered(root):
    assert require_registered("cliptrase_voc21_val").vocabulary == "voc21"
    with pytest.raises(KeyError) as error:
        require_registered("cliptrase_voc22_val")
    ours = sorted(
        set(EXPECTED_NAMES.values())
        | set(PREPARE_SCRIPT)
        | {f"cliptrase_fixtures_{n}" for n in ("voc21", "voc20", "pc59")}
    )
    assert "cliptrase_voc22_val" in str(error.value)
    assert ", ".join(ours) in str(error.value)
    # a dataset registered with register_split and removed since is not listed
    register_split(dataclasses.replace(BENCHMARK_SPLITS[0], name="cliptrase_gone"), str(root))
    DatasetCatalog.remove("cliptrase_gone")
    with pytest.raises(KeyError) as error:
        require_registered("cliptrase_voc22_val")
    assert ", ".join(ours) in str(error.value) and "cliptrase_gone" not in str(error.value)


# ---------------------------------------------------------------- lazy loading


@pytest.mark.parametrize("split", BENCHMARK_SPLITS + SAMPLE_SPLITS, ids=lambda s: s.name)
def test_loading_a_missing_dataset_names_the_folder_and_its_prepare_script(root, split):
    with pytest.raises(FileNotFoundError) as error:
        DatasetCatalog.get(split.name)
    message = str(error.value)
    assert str(root / split.image_dir) in message
    assert f"datasets/{PREPARE_SCRIPT[split.name]}" in message and "datasets/README.md" in message


def test_missing_ground_truth_names_the_image_and_the_expected_file(root):
    image = root / "ADEChallengeData2016/images/validation/ADE_val_00000001.jpg"
    write_image(image, 8, 12)
    (root / "ADEChallengeData2016/annotations_detectron2/validation").mkdir(parents=True)
    with pytest.raises(FileNotFoundError) as error:
        DatasetCatalog.get("cliptrase_ade150_val")
    expected = root / "ADEChallengeData2016/annotations_detectron2/validation/ADE_val_00000001.png"
    assert str(image) in str(error.value) and str(expected) in str(error.value)


def test_an_image_listed_in_the_split_file_but_missing_is_named(root):
    voc = root / "VOCdevkit/VOC2012"
    (voc / "JPEGImages").mkdir(parents=True)
    (voc / "annotations_detectron2/val").mkdir(parents=True)
    (voc / "ImageSets/Segmentation").mkdir(parents=True)
    (voc / "ImageSets/Segmentation/val.txt").write_text("2007_000033\n")
    write_palette_png(voc / "annotations_detectron2/val/2007_000033.png", [[0, 1]])
    with pytest.raises(FileNotFoundError, match="2007_000033.jpg"):
        DatasetCatalog.get("cliptrase_voc20_val")


def test_fixture_datasets_load_the_reference_photos():
    require_fixtures()  # a skip only outside CI
    assert (FIXTURES / "gt").is_dir(), f"{FIXTURES} has no gt/ folder"
    records = DatasetCatalog.get("cliptrase_fixtures_voc21")
    assert [r["image_id"] for r in records] == ["astronaut", "chelsea", "coffee", "vocsample"]
    for record in records:
        with Image.open(record["file_name"]) as image:
            assert image.size == (record["width"], record["height"])
        assert Path(record["sem_seg_file_name"]).parent.name == "gt"


# ---------------------------------------------------------------- prepare scripts


def make_voc2012(folder: Path) -> None:
    write_image(folder / "JPEGImages/2007_000033.jpg", 6, 5)
    write_image(folder / "JPEGImages/2007_000042.jpg", 4, 4)
    write_image(folder / "JPEGImages/2008_000001.jpg", 4, 4)  # a train image: not in the val split
    write_palette_png(folder / "SegmentationClass/2007_000033.png", [[0, 15, 255, 1, 20]] * 6)
    write_palette_png(folder / "SegmentationClass/2007_000042.png", [[0, 0, 255, 255]] * 4)
    (folder / "ImageSets/Segmentation").mkdir(parents=True)
    (folder / "ImageSets/Segmentation/val.txt").write_text("2007_000033\n2007_000042\n")


@pytest.mark.parametrize("in_place", [True, False], ids=["in-root", "elsewhere"])
def test_prepare_voc(root, tmp_path_factory, in_place):
    source = (
        root / "VOCdevkit/VOC2012" if in_place else tmp_path_factory.mktemp("download") / "VOC2012"
    )
    make_voc2012(source)
    main = prepare("prepare_voc").main
    argv = ["--root", str(root)] + ([] if in_place else ["--voc2012", str(source)])
    assert main(argv) > 0
    voc = root / "VOCdevkit/VOC2012"
    np.testing.assert_array_equal(
        labels_of(voc / "annotations_detectron2_bg/val/2007_000033.png")[0], [20, 14, 255, 0, 19]
    )
    np.testing.assert_array_equal(
        labels_of(voc / "annotations_detectron2/val/2007_000033.png")[0], [255, 14, 255, 0, 19]
    )
    assert set(np.unique(labels_of(voc / "annotations_detectron2/val/2007_000042.png"))) == {255}

    for name in ("cliptrase_voc20_val", "cliptrase_voc21_val"):
        records = DatasetCatalog.get(name)
        assert [r["image_id"] for r in records] == ["2007_000033", "2007_000042"]
        assert (records[0]["height"], records[0]["width"]) == (6, 5)
        assert all(
            Path(r["file_name"]).is_file() and Path(r["sem_seg_file_name"]).is_file()
            for r in records
        )
    assert not (voc / "JPEGImages/2008_000001.jpg").exists() or in_place
    assert_idempotent(main, argv, root)


def test_prepare_voc_names_a_missing_input(tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        prepare("prepare_voc").main(["--root", str(tmp_path)])
    assert str(tmp_path / "VOCdevkit/VOC2012") in str(error.value)
    assert "VOCtrainval_11-May-2012.tar" in str(error.value)


def test_prepare_pascal_context_checks_labels_txt(root):
    voc = root / "VOCdevkit/VOC2010"
    for folder in ("JPEGImages", "ImageSets/Main", "trainval"):
        (voc / folder).mkdir(parents=True)
    (voc / "ImageSets/Main/val.txt").write_text("")
    (voc / "labels.txt").write_text("1: accordion\n2: zebra\n")
    with pytest.raises(ValueError, match="labels.txt"):
        prepare("prepare_pascal_context").main(["--root", str(root)])


def test_prepare_pascal_context_names_the_missing_context_labels(root):
    voc = root / "VOCdevkit/VOC2010"
    (voc / "JPEGImages").mkdir(parents=True)
    (voc / "ImageSets/Main").mkdir(parents=True)
    (voc / "ImageSets/Main/val.txt").write_text("2008_000002\n")
    with pytest.raises(FileNotFoundError) as error:
        prepare("prepare_pascal_context").main(["--root", str(root)])
    assert str(voc / "trainval") in str(error.value) and "trainval.tar.gz" in str(error.value)


def test_prepare_coco_stuff(root):
    coco = root / "coco"
    classes = load_vocabularies()["benchmarks"]["coco_stuff171"]["classes"]
    assert (classes[11], classes[80], classes[81], classes[170]) == (
        "stop sign",
        "banner",
        "blanket",
        "wood",
    )
    # stuffthingmaps hold COCO category id - 1: person 0, stop sign (13) 12, unused id 91 -> 90,
    # banner (92) 91, blanket (93) 92, wood (182) 181, unlabelled 255.
    write_image(coco / "val2017/000000000139.jpg", 2, 7)
    write_palette_png(
        coco / "stuffthingmaps/val2017/000000000139.png", [[0, 12, 90, 91, 92, 181, 255]] * 2
    )
    main = prepare("prepare_coco_stuff").main
    assert main(["--root", str(root)]) > 0
    np.testing.assert_array_equal(
        labels_of(coco / "stuffthingmaps_detectron2/val2017/000000000139.png")[0],
        [0, 11, 255, 80, 81, 170, 255],
    )
    # the peers' COCO-Object: stuff and unlabelled pixels are background (80), nothing is void
    np.testing.assert_array_equal(
        labels_of(coco / "objectmaps_detectron2/val2017/000000000139.png")[0],
        [0, 11, 80, 80, 80, 80, 80],
    )
    np.testing.assert_array_equal(
        labels_of(coco / "objectmaps_paper_detectron2/val2017/000000000139.png")[0],
        [0, 11, 80, 80, 255, 255, 80],
    )
    for name in (
        "cliptrase_coco_stuff171_val",
        "cliptrase_coco_object80_val",
        "cliptrase_coco_object80_paper_val",
    ):
        assert [r["image_id"] for r in DatasetCatalog.get(name)] == ["000000000139"]
    assert_idempotent(main, ["--root", str(root)], root)


def test_prepare_coco_stuff_names_missing_maps(root):
    write_image(root / "coco/val2017/000000000139.jpg", 2, 2)
    with pytest.raises(FileNotFoundError, match="stuffthingmaps_trainval2017.zip"):
        prepare("prepare_coco_stuff").main(["--root", str(root)])


def test_prepare_ade20k_150(root, tmp_path_factory):
    source = tmp_path_factory.mktemp("download") / "ADEChallengeData2016"
    write_image(source / "images/validation/ADE_val_00000001.jpg", 2, 4)
    write_palette_png(source / "annotations/validation/ADE_val_00000001.png", [[0, 1, 37, 150]] * 2)
    main = prepare("prepare_ade20k_150").main
    argv = ["--root", str(root), "--ade", str(source)]
    assert main(argv) > 0
    ade = root / "ADEChallengeData2016"
    np.testing.assert_array_equal(
        labels_of(ade / "annotations_detectron2/validation/ADE_val_00000001.png")[0],
        [255, 0, 36, 149],
    )
    assert [r["image_id"] for r in DatasetCatalog.get("cliptrase_ade150_val")] == [
        "ADE_val_00000001"
    ]
    assert_idempotent(main, argv, root)
    with pytest.raises(FileNotFoundError, match="ADEChallengeData2016.zip"):
        main(["--root", str(root), "--ade", str(source.parent / "missing")])


@pytest.mark.parametrize(
    "script, folders, pattern",
    [
        (
            "prepare_ade20k_150",
            [
                "ADEChallengeData2016/images/validation",
                "ADEChallengeData2016/annotations/validation",
            ],
            "*.jpg",
        ),
        ("prepare_coco_stuff", ["coco/val2017", "coco/stuffthingmaps/val2017"], "*.jpg"),
        (
            "prepare_cityscapes",
            ["cityscapes/leftImg8bit/val", "cityscapes/gtFine/val"],
            "*/*_leftImg8bit.png",
        ),
    ],
)
def test_prepare_names_an_image_folder_without_images(root, script, folders, pattern):
    for folder in folders:
        (root / folder).mkdir(parents=True)
    with pytest.raises(
        FileNotFoundError, match=re.escape(f"no {pattern} images in {root / folders[0]}")
    ):
        prepare(script).main(["--root", str(root)])
    assert not any(path.is_file() for path in root.rglob("*"))  # nothing written


def encode_ade_classes(class_ids: np.ndarray) -> np.ndarray:
    """An ADE20K _seg.png (R // 10 * 256 + G is the class, B the instance)."""
    rgb = np.zeros(class_ids.shape + (3,), dtype=np.uint8)
    rgb[..., 0] = class_ids // 256 * 10
    rgb[..., 1] = class_ids % 256
    rgb[..., 2] = 1
    return rgb


def test_prepare_ade20k_847(root):
    ade = root / "ADE20K_2021_17_01"
    classes = load_vocabularies()["benchmarks"]["ade847"]["classes"]
    ade_ids = json.loads((REPO / "datasets/ade847_ids.json").read_text())["ade_ids"]
    objectnames = [f"object {i}" for i in range(max(ade_ids) + 5)]
    for name, ade_id in zip(classes, ade_ids):
        objectnames[ade_id - 1] = name  # a _seg.png value is a 1-based index into objectnames
    folder = "ADE20K_2021_17_01/images/ADE/validation/urban/street"
    index = {
        "folder": [folder, folder, "ADE20K_2021_17_01/images/ADE/training/urban/street"],
        "filename": ["ADE_val_00000001.jpg", "ADE_val_00000002.jpg", "ADE_train_00000001.jpg"],
        "objectnames": objectnames,
    }
    ade.mkdir(parents=True)
    with open(ade / "index_ade20k.pkl", "wb") as f:
        pickle.dump(index, f)
    images = ade / "images/ADE/validation/urban/street"
    unused = next(i for i in range(1, 3000) if i not in ade_ids)
    # wall, the last class, an object outside ADE847, unlabelled, class 299
    small = np.array([[ade_ids[0], ade_ids[846], unused, 0, ade_ids[299]]] * 4)
    write_image(images / "ADE_val_00000001.jpg", 4, 5)
    Image.fromarray(encode_ade_classes(small)).save(images / "ADE_val_00000001_seg.png")
    large = np.full((600, 1000), ade_ids[7])
    large[:, 500:] = ade_ids[300]
    write_image(images / "ADE_val_00000002.jpg", 600, 1000)
    Image.fromarray(encode_ade_classes(large)).save(images / "ADE_val_00000002_seg.png")
    main = prepare("prepare_ade20k_847").main
    assert main(["--root", str(root)]) > 0

    labels = ade / "annotations_detectron2/validation"
    np.testing.assert_array_equal(
        labels_of(labels / "ADE_val_00000001.tif")[0], [0, 846, 65535, 65535, 299]
    )
    resized = labels_of(labels / "ADE_val_00000002.tif")
    assert resized.shape == (512, 853) and set(np.unique(resized)) == {7, 300}
    assert Image.open(ade / "images_detectron2/validation/ADE_val_00000002.jpg").size == (853, 512)
    # small enough: not resized, but decoded and saved again as MaskFormer's script does
    small_out = ade / "images_detectron2/validation/ADE_val_00000001.jpg"
    with Image.open(images / "ADE_val_00000001.jpg") as original:
        buffer = io.BytesIO()
        Image.fromarray(np.asarray(original)).save(buffer, format="JPEG")
    assert small_out.read_bytes() == buffer.getvalue()
    assert not (ade / "images_detectron2/validation/ADE_train_00000001.jpg").exists()
    assert [r["image_id"] for r in DatasetCatalog.get("cliptrase_ade847_val")] == [
        "ADE_val_00000001",
        "ADE_val_00000002",
    ]
    assert_idempotent(main, ["--root", str(root)], root)


def test_prepare_ade20k_847_rejects_another_release(root):
    """Classes are mapped by id; an index whose objectnames name those ids differently stops the
    script."""
    ade = root / "ADE20K_2021_17_01"
    ade.mkdir(parents=True)
    ade_ids = json.loads((REPO / "datasets/ade847_ids.json").read_text())["ade_ids"]
    objectnames = ["wall"] * max(ade_ids)
    with open(ade / "index_ade20k.pkl", "wb") as f:
        pickle.dump({"folder": [], "filename": [], "objectnames": objectnames}, f)
    with pytest.raises(ValueError, match="846 ADE847 classes are named differently") as error:
        prepare("prepare_ade20k_847").main(["--root", str(root)])
    assert "class 1 'building, edifice': id 312 is 'wall'" in str(error.value)


def test_prepare_cityscapes(root):
    cityscapes = root / "cityscapes"
    write_image(
        cityscapes / "leftImg8bit/val/frankfurt/frankfurt_000000_000294_leftImg8bit.png",
        2,
        5,
        "PNG",
    )
    write_palette_png(
        cityscapes / "gtFine/val/frankfurt/frankfurt_000000_000294_gtFine_labelIds.png",
        [[7, 26, 33, 0, 1]] * 2,
    )
    for other in ("color.png", "instanceIds.png", "polygons.json"):  # the archive's other files
        (cityscapes / f"gtFine/val/frankfurt/frankfurt_000000_000294_gtFine_{other}").write_bytes(
            b""
        )
    main = prepare("prepare_cityscapes").main
    assert main(["--root", str(root)]) > 0
    target = cityscapes / "gtFine/val/frankfurt/frankfurt_000000_000294_gtFine_labelTrainIds.png"
    np.testing.assert_array_equal(labels_of(target)[0], [0, 13, 18, 255, 255])
    (record,) = DatasetCatalog.get("cliptrase_cityscapes19_val")
    assert record["sem_seg_file_name"] == str(target) and (record["height"], record["width"]) == (
        2,
        5,
    )
    assert_idempotent(main, ["--root", str(root)], root)
    with pytest.raises(FileNotFoundError, match="gtFine_trainvaltest.zip"):
        main(["--root", str(root / "elsewhere")])


def test_prepare_writes_atomically(tmp_path, monkeypatch):
    """An interrupted write leaves no file under the final name, so the next run redoes it."""
    common = prepare("prepare_common")

    def fail(temporary):
        temporary.write_bytes(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        common.write_atomic(tmp_path / "a.png", fail)
    assert list(tmp_path.iterdir()) == []
    assert common.write_atomic(tmp_path / "a.png", lambda t: t.write_bytes(b"done")) is True
    assert common.write_atomic(tmp_path / "a.png", lambda t: t.write_bytes(b"again")) is False
    assert (tmp_path / "a.png").read_bytes() == b"done"


# ---------------------------------------------------------------- the VOC sample


def test_prepare_sample(root, monkeypatch):
    sample = prepare("prepare_sample")
    if not sample.INSTALLED.is_dir() and shutil.which("apt-get") is None:
        skip_outside_ci(
            "apt-get is not available to download labelme-examples (and the package is not "
            "installed)"
        )
    try:
        assert sample.main(["--root", str(root)]) > 0
    except (
        FileNotFoundError
    ) as error:  # no network / apt lists: the script's own message says what to do
        skip_outside_ci(f"prepare_sample.py could not obtain labelme-examples: {error}")

    folder = root / "cliptrase_sample_voc21"
    ids = ["2011_000003", "2011_000006", "2011_000025", "vocsample"]
    for name, allowed in (
        ("cliptrase_sample_voc21", set(range(21)) | {255}),
        ("cliptrase_sample_voc20", set(range(20)) | {255}),
    ):
        records = DatasetCatalog.get(name)
        assert [r["image_id"] for r in records] == ids
        for record in records:
            labels = labels_of(Path(record["sem_seg_file_name"]))
            assert labels.shape == (record["height"], record["width"])
            assert set(np.unique(labels)) <= allowed and len(np.unique(labels)) >= 3
    voc21 = labels_of(folder / "annotations/2011_000003.png")
    voc20 = labels_of(folder / "annotations_voc20/2011_000003.png")
    assert 20 in voc21 and 14 in voc21  # background and person
    np.testing.assert_array_equal(voc20, np.where(voc21 == 20, 255, voc21))
    if (
        FIXTURES / "gt/vocsample.png"
    ).is_file():  # the fixtures' VOC photo, in the authors' label layout
        np.testing.assert_array_equal(
            labels_of(folder / "annotations_voc20/vocsample.png"),
            labels_of(FIXTURES / "gt/vocsample.png"),
        )
    assert_idempotent(sample.main, ["--root", str(root)], folder)

    # The same files from a given .deb read with Python's own ar/tar handling (no dpkg-deb).
    deb_folder = root / "deb"
    deb_folder.mkdir()
    deb = sample.download_deb(deb_folder)
    monkeypatch.setattr(sample.shutil, "which", lambda name: None)
    other = root / "other"
    assert sample.main(["--root", str(other), "--deb", str(deb)]) > 0
    for path in folder.rglob("*"):
        if path.is_file():
            assert (
                other / "cliptrase_sample_voc21" / path.relative_to(folder)
            ).read_bytes() == path.read_bytes()
