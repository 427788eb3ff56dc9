"""Tests of cliptrase_d2.evaluation: the paper's metric against the authors' printed numbers,
both Detectron2 evaluators on tiny synthetic datasets, and the atomic result writing."""

import json
import logging
import math
import os
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import cliptrase_d2  # noqa: F401  (detectron2 0.6 shims, before detectron2)
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import SemSegEvaluator
from detectron2.evaluation import sem_seg_evaluation as d2_sem_seg_evaluation

from cliptrase_d2.evaluation import PaperSemSegEvaluator, StandardSemSegEvaluator, paper_metric
from conftest import skip_outside_ci
from cliptrase_d2 import atomic
from cliptrase_d2.atomic import atomic_write_json, atomic_write_png
from cliptrase_d2.errors import InputError
from cliptrase_d2.evaluation.paper_metric import unknown_label_ids
from cliptrase_d2.evaluation import sem_seg_evaluation

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(os.environ.get("CLIPTRASE_FIXTURES", REPO.parent / "shared" / "fixtures"))
MANIFEST = FIXTURES / "cases" / "manifest.json"


def _require_fixtures():
    skip_outside_ci(f"reference fixtures not found at {FIXTURES} (set CLIPTRASE_FIXTURES)")


def _manifest_runs():
    if not MANIFEST.is_file():
        return [None]
    return json.loads(MANIFEST.read_text())["runs"]


def _run_id(run):
    if run is None:
        return "fixtures-missing"
    return f"{run['dataset']}_{run['size']}_eps{run['eps']}_min{run['min_samples']}"


# ---------------------------------------------------------------- paper metric vs the authors


@pytest.mark.parametrize("run", _manifest_runs(), ids=_run_id)
def test_paper_metric_matches_authors_script(run, make_dataset):
    """Every run's printed metric, from its cases' pred/gt scored by the paper evaluator. The
    classes counted are the label set the script evaluated: C, plus the merged background class
    with background words."""
    if run is None:
        _require_fixtures()
    num_classes = run["num_classes"] + (1 if run["num_text_rows"] > run["num_classes"] else 0)
    cases = [np.load(MANIFEST.parent / case["file"]) for case in run["cases"]]
    name, records = make_dataset(
        [arrays["gt"] for arrays in cases], [f"c{i}" for i in range(num_classes)]
    )
    evaluator = PaperSemSegEvaluator(name, crop_size=run["size"], distributed=False)
    exact = _run(evaluator, records, [arrays["pred"] for arrays in cases], num_classes)["sem_seg"]

    printed = {key: float(np.round(exact[key], 2)) for key in run["metric"]}
    assert printed == run["metric"]
    for key, value in run["metric"].items():
        assert abs(exact[key] - value) <= 0.005 + 1e-9, key


def test_manifest_has_all_runs():
    if not MANIFEST.is_file():
        _require_fixtures()
    assert len(_manifest_runs()) == 10


# ---------------------------------------------------------------- paper metric by hand


def _hand_example():
    """Two 4x4 images, 3 classes, 255 = void."""
    gt1 = np.zeros((4, 4), np.int64)
    gt1[2:] = 1
    pred1 = np.zeros((4, 4), np.int64)
    gt2 = np.full((4, 4), 255, np.int64)
    gt2[:, 2:] = 2
    pred2 = np.ones((4, 4), np.int64)  # class 1 on the void half: not counted
    pred2[:, 2:] = 2
    return [(pred1, gt1), (pred2, gt2)]


def _hand_expected():
    # tp = (8, 0, 8), gt pixels = (8, 8, 8), predicted pixels = (16, 0, 8)
    iou = np.array([8 / (8 + 16 - 8 + 0.01), 0 / (8 + 0.01), 8 / (8 + 8 - 8 + 0.01)])
    acc = np.array([8 / 8.01, 0.0, 8 / 8.01])
    return {
        "mIoU": 100 * iou.mean(),
        "pAcc": 100 * 16 / 24,
        "mAcc": 100 * acc.mean(),
        "fwIoU": 100 * (iou / 3).sum(),
        "per_class_IoU": 100 * iou,
    }


# (ground truth, prediction) pixel counts of the hand example (its void half not counted)
HAND_CONFUSION = [[8, 0, 0], [8, 0, 0], [0, 0, 8]]


def test_paper_metric_by_hand():
    result = paper_metric(np.array(HAND_CONFUSION))
    expected = _hand_expected()
    for key in ("mIoU", "pAcc", "mAcc", "fwIoU"):
        assert result[key] == pytest.approx(expected[key], abs=1e-9), key
    np.testing.assert_allclose(result["per_class_IoU"], expected["per_class_IoU"])


def test_paper_metric_counts_only_gt_classes_in_miou_but_all_in_macc():
    confusion = np.zeros((4, 4), np.int64)
    confusion[0, 0] = confusion[0, 3] = 1  # class 3 predicted, never in the gt
    result = paper_metric(confusion)
    assert (~np.isnan(result["per_class_IoU"])).tolist() == [True, False, False, False]
    assert np.isnan(result["per_class_IoU"][1:]).all()
    assert result["mIoU"] == pytest.approx(100 * 1 / (2 + 1 - 1 + 0.01))
    assert result["mAcc"] == pytest.approx(100 * (1 / 2.01) / 4)


# ---------------------------------------------------------------- synthetic datasets


def _write_label_png(path, labels):
    labels = np.asarray(labels)
    dtype = np.uint16 if labels.max() > 255 else np.uint8
    Image.fromarray(labels.astype(dtype)).save(path)


@pytest.fixture
def make_dataset(tmp_path):
    """Register a dataset of GT PNGs written under tmp_path; unregistered afterwards."""
    names = []

    def make(gts, classes, ignore_label=255, **metadata):
        name = f"test_eval_{uuid.uuid4().hex[:8]}"
        records = []
        for index, gt in enumerate(gts):
            gt_path = tmp_path / f"{name}_gt_{index}.png"
            if gt is not None:
                _write_label_png(gt_path, gt)
            records.append(
                {
                    "file_name": str(tmp_path / f"img_{index}.jpg"),
                    "sem_seg_file_name": str(gt_path),
                    "image_id": f"img_{index}",
                }
            )
        DatasetCatalog.register(name, lambda: records)
        MetadataCatalog.get(name).set(
            stuff_classes=list(classes), ignore_label=ignore_label, **metadata
        )
        names.append(name)
        return name, records

    yield make
    for name in names:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def _scores(labels, num_classes):
    """(K, H, W) scores whose argmax is ``labels``."""
    labels = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    return torch.nn.functional.one_hot(labels, num_classes).permute(2, 0, 1).float()


def _run(evaluator, records, preds, num_classes):
    evaluator.reset()
    for record, pred in zip(records, preds):
        evaluator.process([dict(record)], [{"sem_seg": _scores(pred, num_classes)}])
    return evaluator.evaluate()


def test_paper_evaluator_by_hand(make_dataset, tmp_path, caplog):
    example = _hand_example()
    name, records = make_dataset([gt for _, gt in example], ["a", "b", "c"])
    evaluator = PaperSemSegEvaluator(
        name, crop_size=4, distributed=False, output_dir=str(tmp_path / "out")
    )
    with caplog.at_level(logging.INFO, logger="cliptrase_d2.evaluation"):
        results = _run(evaluator, records, [pred for pred, _ in example], 3)["sem_seg"]

    expected = _hand_expected()
    assert list(results)[:4] == ["mIoU", "fwIoU", "mAcc", "pAcc"]
    for key in ("mIoU", "pAcc", "mAcc", "fwIoU"):
        assert results[key] == pytest.approx(expected[key]), key
    for name_, iou in zip("abc", expected["per_class_IoU"]):
        assert results[f"IoU-{name_}"] == pytest.approx(iou)

    saved = json.loads((tmp_path / "out" / f"sem_seg_results_{name}.json").read_text())
    assert saved["protocol"] == "paper" and saved["crop_size"] == 4 and saved["num_images"] == 2
    assert saved["mIoU"] == pytest.approx(results["mIoU"])
    assert saved["per_class_IoU"]["b"] == pytest.approx(0.0)
    log = caplog.text
    assert "paper protocol" in log and "mIoU" in log and f"{results['mIoU']:.2f}" in log


def test_paper_evaluator_crops_ground_truth_like_the_image(make_dataset):
    # 40 x 60 GT, class 1 in the 15 leftmost columns. Shorter side to 32: 32 x 48 (nearest, so
    # columns 0..11 stay class 1); centre crop starts at column 8, leaving 4 columns of class 1.
    gt = np.zeros((40, 60), np.int64)
    gt[:, :15] = 1
    name, records = make_dataset([gt], ["a", "b"])
    expected_gt = np.zeros((32, 32), np.int64)
    expected_gt[:, :4] = 1

    evaluator = PaperSemSegEvaluator(name, crop_size=32, distributed=False)
    results = _run(evaluator, records, [expected_gt], 2)["sem_seg"]
    assert results["pAcc"] == pytest.approx(100.0)
    assert results["IoU-b"] == pytest.approx(100 * 128 / 128.01)

    shifted = np.roll(expected_gt, 2, axis=1)  # a prediction off by the crop offset is penalised
    assert _run(evaluator, records, [shifted], 2)["sem_seg"]["IoU-b"] < 60


def test_paper_evaluator_void_as_background(make_dataset):
    gt = np.full((4, 4), 255, np.int64)
    gt[:2] = 0
    pred = np.full((4, 4), 2, np.int64)
    pred[:2] = 0
    classes = ["cat", "dog", "background"]

    ignored_name, ignored_records = make_dataset([gt], classes)
    ignored = _run(
        PaperSemSegEvaluator(ignored_name, crop_size=4, distributed=False),
        ignored_records,
        [pred],
        3,
    )["sem_seg"]
    assert math.isnan(ignored["IoU-background"])  # void ignored: background never in the gt
    assert ignored["pAcc"] == pytest.approx(100.0)

    void_name, void_records = make_dataset([gt], classes, paper_void_as_background=True)
    counted = _run(
        PaperSemSegEvaluator(void_name, crop_size=4, distributed=False), void_records, [pred], 3
    )["sem_seg"]
    assert counted["IoU-background"] == pytest.approx(100 * 8 / 8.01)
    assert counted["pAcc"] == pytest.approx(100.0)
    assert counted["mIoU"] == pytest.approx(100 * 8 / 8.01)


def test_paper_evaluator_rejects_wrong_size_and_class_count(make_dataset):
    name, records = make_dataset([np.zeros((8, 8), np.int64)], ["a", "b"])
    evaluator = PaperSemSegEvaluator(name, crop_size=8, distributed=False)
    with pytest.raises(ValueError, match=r"img_0\.jpg.*6x6.*crop_size 8x8.*protocol"):
        evaluator.process([records[0]], [{"sem_seg": _scores(np.zeros((6, 6), np.int64), 2)}])
    with pytest.raises(ValueError, match="3 classes but the dataset has 2"):
        evaluator.process([records[0]], [{"sem_seg": _scores(np.zeros((8, 8), np.int64), 3)}])


def test_paper_evaluator_finds_ground_truth_without_sem_seg_file_name(make_dataset):
    """Detectron2's test-time DatasetMapper drops sem_seg_file_name; the catalog has it."""
    gt = np.ones((4, 4), np.int64)
    name, records = make_dataset([gt], ["a", "b"])
    evaluator = PaperSemSegEvaluator(name, crop_size=4, distributed=False)
    evaluator.process([{"file_name": records[0]["file_name"]}], [{"sem_seg": _scores(gt, 2)}])
    assert evaluator.evaluate()["sem_seg"]["mIoU"] == pytest.approx(100 * 16 / 16.01)


@pytest.mark.parametrize("evaluator_class", [PaperSemSegEvaluator, StandardSemSegEvaluator])
def test_missing_ground_truth_names_the_file(make_dataset, evaluator_class):
    name, records = make_dataset([None], ["a", "b"])
    kwargs = {"crop_size": 4} if evaluator_class is PaperSemSegEvaluator else {}
    evaluator = evaluator_class(name, distributed=False, **kwargs)
    with pytest.raises(FileNotFoundError, match=records[0]["sem_seg_file_name"]):
        evaluator.process([records[0]], [{"sem_seg": _scores(np.zeros((4, 4), np.int64), 2)}])


@pytest.mark.parametrize("evaluator_class", [PaperSemSegEvaluator, StandardSemSegEvaluator])
def test_unknown_dataset_lists_registered_names(make_dataset, evaluator_class):
    registered, _ = make_dataset([np.zeros((2, 2), np.int64)], ["a"])
    kwargs = {"crop_size": 4} if evaluator_class is PaperSemSegEvaluator else {}
    with pytest.raises(KeyError, match=f"no_such_dataset.*{registered}"):
        evaluator_class("no_such_dataset", **kwargs)


def test_save_predictions_needs_output_dir(make_dataset):
    name, _ = make_dataset([np.zeros((2, 2), np.int64)], ["a"])
    with pytest.raises(ValueError, match="output_dir"):
        PaperSemSegEvaluator(name, crop_size=2, save_predictions=True)


def test_paper_evaluator_saves_predictions(make_dataset, tmp_path):
    example = _hand_example()
    name, records = make_dataset([gt for _, gt in example], ["a", "b", "c"])
    del records[1]["image_id"]  # falls back to the file stem
    out = tmp_path / "out"
    evaluator = PaperSemSegEvaluator(
        name, crop_size=4, distributed=False, output_dir=str(out), save_predictions=True
    )
    _run(evaluator, records, [pred for pred, _ in example], 3)
    folder = out / "predictions" / name
    assert sorted(os.listdir(folder)) == ["img_0.png", "img_1.png"]
    for file, (pred, _) in zip(["img_0.png", "img_1.png"], example):
        with Image.open(folder / file) as image:
            assert image.mode == "L"
            np.testing.assert_array_equal(np.array(image), pred)


# ---------------------------------------------------------------- standard protocol


def test_standard_evaluator_equals_detectron2(make_dataset, tmp_path):
    rng = np.random.default_rng(1)
    shapes = [(5, 7), (6, 4), (9, 3)]
    gts = [rng.choice([0, 1, 2, 3, 255], shape) for shape in shapes]
    gts[0][0, 0] = 4  # class 4 appears once in the gt; class 5 never does
    preds = [rng.integers(0, 6, shape) for shape in shapes]
    name, records = make_dataset(gts, ["c0", "c1", "c2", "c3", "c4", "c5"])

    ours = _run(
        StandardSemSegEvaluator(name, distributed=False, output_dir=str(tmp_path / "out")),
        records,
        preds,
        6,
    )["sem_seg"]
    reference = _run(SemSegEvaluator(name, distributed=False), records, preds, 6)["sem_seg"]
    assert list(ours) == list(reference)
    for key, value in reference.items():
        if math.isnan(value):
            assert math.isnan(ours[key]), key
        else:
            assert ours[key] == pytest.approx(value, abs=1e-12), key

    saved = json.loads((tmp_path / "out" / f"sem_seg_results_{name}.json").read_text())
    assert saved["protocol"] == "standard" and saved["num_images"] == 3
    assert saved["mIoU"] == pytest.approx(reference["mIoU"])
    assert saved["pAcc"] == pytest.approx(reference["pACC"])
    assert saved["mAcc"] == pytest.approx(reference["mACC"])
    assert saved["per_class_IoU"]["c5"] is None  # NaN: not in the ground truth


LIBRARY_BOUNDARY_IOU = hasattr(SemSegEvaluator, "_mask_to_boundary")  # detectron2 after 0.6


@pytest.mark.skipif(not LIBRARY_BOUNDARY_IOU, reason="detectron2 0.6 computes no Boundary IoU")
def test_standard_evaluator_boundary_iou_by_hand(make_dataset, tmp_path):
    """8 x 8, class 1 a 4 x 4 square, predicted one column to the right. Boundaries (erosion by
    one pixel at this size): the squares' 12-pixel rings, which share 6 pixels (rows 2 and 5,
    columns 3-5); class 0's boundary is the rest of the image outside both rings."""
    gt = np.zeros((8, 8), np.int64)
    gt[2:6, 2:6] = 1
    pred = np.zeros((8, 8), np.int64)
    pred[2:6, 3:7] = 1
    name, records = make_dataset([gt], ["a", "b"])
    out = tmp_path / "out"
    results = _run(
        StandardSemSegEvaluator(name, distributed=False, output_dir=str(out)), records, [pred], 2
    )["sem_seg"]

    boundary = {"a": 100 * 46 / (52 + 52 - 46), "b": 100 * 6 / (12 + 12 - 6)}
    iou = {"a": 100 * 44 / (48 + 48 - 44), "b": 100 * 12 / (16 + 16 - 12)}
    for cls in "ab":
        assert math.isfinite(results[f"BoundaryIoU-{cls}"]), cls
        assert results[f"BoundaryIoU-{cls}"] == pytest.approx(boundary[cls]), cls
        assert results[f"IoU-{cls}"] == pytest.approx(iou[cls]), cls
        assert results[f"min(IoU, B-Iou)-{cls}"] == pytest.approx(min(iou[cls], boundary[cls]))
    saved = json.loads((out / f"sem_seg_results_{name}.json").read_text())
    assert saved["per_class_BoundaryIoU"] == pytest.approx(boundary)


@pytest.mark.skipif(LIBRARY_BOUNDARY_IOU, reason="detectron2 after 0.6 adds Boundary IoU")
def test_standard_evaluator_on_detectron2_0_6_has_no_boundary_iou(make_dataset, tmp_path):
    gt = np.zeros((8, 8), np.int64)
    gt[2:6, 2:6] = 1
    name, records = make_dataset([gt], ["a", "b"])
    out = tmp_path / "out"
    results = _run(
        StandardSemSegEvaluator(name, distributed=False, output_dir=str(out)), records, [gt], 2
    )["sem_seg"]
    assert list(results) == ["mIoU", "fwIoU", "IoU-a", "IoU-b", "mACC", "pACC", "ACC-a", "ACC-b"]
    assert results["mIoU"] == pytest.approx(100.0)
    saved = json.loads((out / f"sem_seg_results_{name}.json").read_text())
    assert "per_class_BoundaryIoU" not in saved


def test_standard_miou_follows_the_installed_detectron2(make_dataset):
    """Class c2 is predicted once and is in no ground truth. Detectron2 0.6 counts it as 0 in the
    mean; later versions (July 2022, with Boundary IoU) average over the ground truth's classes."""
    gt = np.array([[1, 1], [0, 0]])
    pred = np.array([[1, 1], [0, 2]])
    name, records = make_dataset([gt], ["c0", "c1", "c2"])
    results = _run(StandardSemSegEvaluator(name, distributed=False), records, [pred], 3)["sem_seg"]
    assert results["IoU-c0"] == pytest.approx(50.0) and results["IoU-c1"] == pytest.approx(100.0)
    assert math.isnan(results["IoU-c2"])
    assert results["mIoU"] == pytest.approx(150 / 2 if LIBRARY_BOUNDARY_IOU else 150 / 3)


def test_standard_evaluator_does_not_build_rle_predictions(make_dataset):
    name, records = make_dataset([np.zeros((3, 3), np.int64)], ["a", "b"])
    evaluator = StandardSemSegEvaluator(name, distributed=False)
    evaluator.reset()
    evaluator.process([records[0]], [{"sem_seg": _scores(np.ones((3, 3), np.int64), 2)}])
    assert evaluator._predictions == [] and evaluator._conf_matrix[1, 0] == 9


def test_standard_evaluator_reads_the_records_ground_truth(make_dataset, tmp_path):
    """A record's own sem_seg_file_name wins over the catalog's (and need not be in it)."""
    name, records = make_dataset([np.zeros((2, 2), np.int64)], ["a", "b"])
    _write_label_png(tmp_path / "other.png", np.ones((2, 2), np.int64))
    record = {
        "file_name": str(tmp_path / "not_in_catalog.jpg"),
        "sem_seg_file_name": str(tmp_path / "other.png"),
    }
    evaluator = StandardSemSegEvaluator(name, distributed=False)
    evaluator.reset()
    evaluator.process([record], [{"sem_seg": _scores(np.ones((2, 2), np.int64), 2)}])
    assert evaluator.evaluate()["sem_seg"]["IoU-b"] == pytest.approx(100.0)


def test_standard_evaluator_size_mismatch_names_the_file(make_dataset):
    name, records = make_dataset([np.zeros((5, 7), np.int64)], ["a", "b"])
    evaluator = StandardSemSegEvaluator(name, distributed=False)
    with pytest.raises(ValueError, match=rf"{records[0]['sem_seg_file_name']}' is 5x7.*6x7"):
        evaluator.process([records[0]], [{"sem_seg": _scores(np.zeros((6, 7), np.int64), 2)}])


def test_standard_evaluator_rejects_unknown_ground_truth_ids(make_dataset):
    gt = np.zeros((3, 3), np.int64)
    gt[0, 0] = 7
    name, records = make_dataset([gt], ["a", "b"])
    evaluator = StandardSemSegEvaluator(name, distributed=False)
    with pytest.raises(ValueError, match=r"holds ids \[7\]"):
        evaluator.process([records[0]], [{"sem_seg": _scores(np.zeros((3, 3), np.int64), 2)}])


def test_standard_evaluator_rejects_ignore_label_that_is_a_class(make_dataset):
    name, _ = make_dataset(
        [np.zeros((2, 2), np.int64)], [f"c{i}" for i in range(300)], ignore_label=255
    )
    with pytest.raises(ValueError, match="65535"):
        StandardSemSegEvaluator(name, distributed=False)


def test_standard_evaluator_300_classes_16_bit(make_dataset, tmp_path):
    classes = [f"c{i}" for i in range(300)]
    gt = np.array([[0, 255, 256, 299], [299, 65535, 1, 1]])
    pred = np.array([[0, 255, 256, 299], [299, 298, 1, 2]])
    name, records = make_dataset([gt], classes, ignore_label=65535)
    out = tmp_path / "out"
    evaluator = StandardSemSegEvaluator(
        name, distributed=False, output_dir=str(out), save_predictions=True
    )
    results = _run(evaluator, records, [pred], 300)["sem_seg"]
    for cls in (0, 255, 256, 299):
        assert results[f"IoU-c{cls}"] == pytest.approx(100.0), cls
    assert results["IoU-c1"] == pytest.approx(50.0)
    assert math.isnan(results["IoU-c7"])

    with Image.open(out / "predictions" / name / "img_0.png") as image:
        assert image.mode == "I;16"
        np.testing.assert_array_equal(np.array(image), pred)


# ---------------------------------------------------------------- distributed evaluation


def test_paper_evaluator_gathers_all_processes(make_dataset, monkeypatch):
    example = _hand_example()
    name, records = make_dataset([gt for _, gt in example], ["a", "b", "c"])
    single = _run(
        PaperSemSegEvaluator(name, crop_size=4, distributed=False),
        records,
        [pred for pred, _ in example],
        3,
    )

    # two "processes", each evaluating one image; gather hands rank 0 both states
    ranks = [PaperSemSegEvaluator(name, crop_size=4) for _ in range(2)]
    for evaluator, record, (pred, _) in zip(ranks, records, example):
        evaluator.process([record], [{"sem_seg": _scores(pred, 3)}])

    def all_gather(data):  # Detectron2's: every process's value of what this one passes
        name = next(key for e in ranks for key, value in vars(e).items() if value is data)
        return [getattr(evaluator, name) for evaluator in ranks]

    counts = [evaluator._num_images for evaluator in ranks]
    monkeypatch.setattr(sem_seg_evaluation.comm, "gather", lambda data, dst=0: counts)
    monkeypatch.setattr(d2_sem_seg_evaluation, "synchronize", lambda: None)
    monkeypatch.setattr(d2_sem_seg_evaluation, "all_gather", all_gather)
    assert ranks[0].evaluate() == single

    monkeypatch.setattr(d2_sem_seg_evaluation, "is_main_process", lambda: False)
    assert ranks[1].evaluate() is None


# ---------------------------------------------------------------- atomic writing


def test_atomic_write_png_round_trips_uint8_and_uint16(tmp_path):
    small = np.array([[0, 1], [254, 255]], np.uint8)
    large = np.array([[0, 255], [300, 65535]], np.uint16)
    atomic_write_png(tmp_path / "small.png", small)
    atomic_write_png(tmp_path / "nested" / "large.png", large)
    with Image.open(tmp_path / "small.png") as image:
        assert image.mode == "L"
        np.testing.assert_array_equal(np.array(image), small)
    with Image.open(tmp_path / "nested" / "large.png") as image:
        assert image.mode == "I;16"
        np.testing.assert_array_equal(np.array(image), large)
    with pytest.raises(TypeError, match="uint8 or uint16"):
        atomic_write_png(tmp_path / "bad.png", small.astype(np.int64))
    with pytest.raises(ValueError, match=r"must be \(H, W\), got shape \(2, 2, 3\)"):
        atomic_write_png(tmp_path / "rgb.png", np.stack([small] * 3, axis=-1))
    assert not (tmp_path / "rgb.png").exists()


def test_atomic_write_png_interrupted_leaves_no_file(tmp_path, monkeypatch):
    def save_half_then_fail(self, fp, format=None, **params):
        fp.write(b"\x89PNG\r\n\x1a\n partial")
        raise RuntimeError("interrupted")

    monkeypatch.setattr(atomic.Image.Image, "save", save_half_then_fail)
    with pytest.raises(RuntimeError, match="interrupted"):
        atomic_write_png(tmp_path / "pred.png", np.zeros((2, 2), np.uint8))
    assert os.listdir(tmp_path) == []


def test_atomic_write_json_interrupted_keeps_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "results.json"
    atomic_write_json(path, {"mIoU": 1.0, "per_class_IoU": {"a": float("nan")}})
    assert json.loads(path.read_text()) == {"mIoU": 1.0, "per_class_IoU": {"a": None}}

    def fail(fd):
        raise OSError("disk full")

    monkeypatch.setattr(atomic.os, "fsync", fail)  # after the bytes went out, before the rename
    with pytest.raises(OSError, match="disk full"):
        atomic_write_json(path, {"mIoU": 2.0})
    assert json.loads(path.read_text())["mIoU"] == 1.0
    assert os.listdir(tmp_path) == ["results.json"]


# ---------------------------------------------------------------- ground truth checked (both)


def _with_size(record, height, width):
    return dict(record, height=height, width=width)


@pytest.mark.parametrize("evaluator_class", [PaperSemSegEvaluator, StandardSemSegEvaluator])
def test_ground_truth_of_another_size_than_its_image_names_both(make_dataset, evaluator_class):
    name, records = make_dataset([np.zeros((5, 7), np.int64)], ["a", "b"])
    kwargs = {"crop_size": 4} if evaluator_class is PaperSemSegEvaluator else {}
    evaluator = evaluator_class(name, distributed=False, **kwargs)
    size = (4, 4) if evaluator_class is PaperSemSegEvaluator else (6, 7)
    pred = {"sem_seg": _scores(np.zeros(size, np.int64), 2)}
    gt_path = records[0]["sem_seg_file_name"]
    evaluator.reset()
    with pytest.raises(
        InputError, match=rf"'{gt_path}' is 5x7 but its image '.*img_0\.jpg' is 6x7"
    ):
        evaluator.process([_with_size(records[0], 6, 7)], [pred])
    assert evaluator._num_images == 0


@pytest.mark.parametrize("evaluator_class", [PaperSemSegEvaluator, StandardSemSegEvaluator])
@pytest.mark.parametrize("bad_id", [2, 7, 254])
def test_ground_truth_ids_outside_the_classes_are_rejected(make_dataset, evaluator_class, bad_id):
    gt = np.zeros((4, 4), np.int64)
    gt[0, 0], gt[3, 3] = bad_id, 255  # 255 is void (ignore_label): allowed
    name, records = make_dataset([gt], ["a", "b"])
    kwargs = {"crop_size": 4} if evaluator_class is PaperSemSegEvaluator else {}
    evaluator = evaluator_class(name, distributed=False, **kwargs)
    pred = {"sem_seg": _scores(np.zeros((4, 4), np.int64), 2)}
    match = rf"'{records[0]['sem_seg_file_name']}' holds ids \[{bad_id}\] outside \[0, 2\)"
    with pytest.raises(InputError, match=match):
        evaluator.process([_with_size(records[0], 4, 4)], [pred])


@pytest.mark.parametrize("evaluator_class", [PaperSemSegEvaluator, StandardSemSegEvaluator])
def test_float_ground_truth_is_refused_not_truncated(make_dataset, evaluator_class):
    """A float TIFF (PIL mode 'F') holding 2.5 was read as class 2 without a word."""
    name, records = make_dataset([None], ["a", "b", "c"])
    path = records[0]["sem_seg_file_name"]
    labels = np.array([[1.0, 2.5], [255.0, 0.0]], np.float32)
    Image.fromarray(labels).save(path, format="TIFF")
    kwargs = {"crop_size": 2} if evaluator_class is PaperSemSegEvaluator else {}
    evaluator = evaluator_class(name, distributed=False, **kwargs)
    pred = {"sem_seg": _scores(np.zeros((2, 2), np.int64), 3)}
    with pytest.raises(InputError) as error:
        evaluator.process([_with_size(records[0], 2, 2)], [pred])
    assert str(error.value) == (
        f"ground truth '{path}' is a float image (PIL mode F); a label map must be an integer "
        "single-channel image (8-bit, palette or 16-bit PNG): re-run the dataset's prepare script"
    )


def test_paper_evaluator_accepts_void_and_every_class(make_dataset):
    gt = np.array([[0, 1], [2, 255]], np.int64)
    name, records = make_dataset([gt], ["a", "b", "background"], paper_void_as_background=True)
    evaluator = PaperSemSegEvaluator(name, crop_size=2, distributed=False)
    pred = np.array([[0, 1], [2, 2]], np.int64)
    results = _run(evaluator, [_with_size(records[0], 2, 2)], [pred], 3)["sem_seg"]
    assert results["pAcc"] == pytest.approx(100.0)


def test_paper_metric_helper_lists_unknown_ids():
    gt = np.array([[-1, 0, 3], [255, 9, 1]])
    assert unknown_label_ids(gt, 3, 255).tolist() == [-1, 3, 9]
    assert unknown_label_ids(gt, 3, None).tolist() == [-1, 3, 9, 255]
    assert unknown_label_ids(np.array([0, 1, 2, 255]), 3, 255).size == 0


@pytest.mark.parametrize("evaluator_class", [PaperSemSegEvaluator, StandardSemSegEvaluator])
def test_unreadable_ground_truth_is_one_named_error(make_dataset, evaluator_class):
    name, records = make_dataset([None], ["a", "b"])
    Path(records[0]["sem_seg_file_name"]).write_bytes(b"not a png")
    kwargs = {"crop_size": 4} if evaluator_class is PaperSemSegEvaluator else {}
    evaluator = evaluator_class(name, distributed=False, **kwargs)
    pred = {"sem_seg": _scores(np.zeros((4, 4), np.int64), 2)}
    with pytest.raises(
        InputError, match=rf"cannot read ground truth '{records[0]['sem_seg_file_name']}'"
    ):
        evaluator.process([records[0]], [pred])


# ---------------------------------------------------------------- a user's dataset (both)


def _evaluator(evaluator_class, name, **kwargs):
    kwargs = dict({"crop_size": 4} if evaluator_class is PaperSemSegEvaluator else {}, **kwargs)
    return evaluator_class(name, distributed=False, **kwargs)


@pytest.mark.parametrize("evaluator_class", [PaperSemSegEvaluator, StandardSemSegEvaluator])
@pytest.mark.parametrize("ignore_label", [0, 1, "255", 2.0, "missing"])
def test_ignore_label_missing_or_a_class_id_is_named(make_dataset, evaluator_class, ignore_label):
    """ignore_label 0 silently left class 0 out of the paper protocol's mIoU; a missing one was
    Detectron2's AttributeError, a string the standard protocol's TypeError."""
    name, _ = make_dataset([np.zeros((4, 4), np.int64)], ["a", "b"], ignore_label=ignore_label)
    if ignore_label == "missing":
        delattr(MetadataCatalog.get(name), "ignore_label")
    with pytest.raises(InputError, match=rf"'{name}': metadata ignore_label is .*ignore_label=255"):
        _evaluator(evaluator_class, name)


@pytest.mark.parametrize("evaluator_class", [PaperSemSegEvaluator, StandardSemSegEvaluator])
def test_ignore_label_none_means_no_void(make_dataset, evaluator_class):
    gt = np.array([[0, 1, 1, 1]] * 4, np.int64)
    name, records = make_dataset([gt], ["a", "b"], ignore_label=None)
    results = _run(_evaluator(evaluator_class, name), records, [gt], 2)["sem_seg"]
    assert results["pACC" if evaluator_class is StandardSemSegEvaluator else "pAcc"] == 100.0


@pytest.mark.parametrize("evaluator_class", [PaperSemSegEvaluator, StandardSemSegEvaluator])
def test_repeated_class_names_are_refused(make_dataset, evaluator_class):
    """Results are keyed by class name: the second 'a' overwrote the first's IoU unseen."""
    name, _ = make_dataset([np.zeros((4, 4), np.int64)], ["a", "b", "a"])
    with pytest.raises(InputError, match=rf"'{name}': metadata stuff_classes names \['a'\]"):
        _evaluator(evaluator_class, name)


@pytest.mark.parametrize("evaluator_class", [PaperSemSegEvaluator, StandardSemSegEvaluator])
def test_a_record_without_ground_truth_is_named(make_dataset, evaluator_class):
    """Detectron2's evaluator ended in KeyError: 'sem_seg_file_name'."""
    name, records = make_dataset([np.zeros((4, 4), np.int64)] * 2, ["a", "b"])
    del records[1]["sem_seg_file_name"]
    with pytest.raises(InputError, match=r"img_1\.jpg' has no 'sem_seg_file_name'.*load_sem_seg"):
        _evaluator(evaluator_class, name)


@pytest.mark.parametrize("evaluator_class", [PaperSemSegEvaluator, StandardSemSegEvaluator])
def test_predictions_saved_under_one_name_are_refused(make_dataset, evaluator_class, tmp_path):
    """Two images of one stem in two folders: the second's label map overwrote the first's,
    and a resumed run scored it for both."""
    name, records = make_dataset([np.zeros((4, 4), np.int64)] * 2, ["a", "b"])
    for index, record in enumerate(records):
        del record["image_id"]
        record["file_name"] = str(tmp_path / f"scene{index}" / "0001.jpg")
    out = str(tmp_path / "out")
    with pytest.raises(InputError, match=r"scene0/0001.jpg' and '.*scene1/0001.jpg' .*image_id"):
        _evaluator(evaluator_class, name, output_dir=out, save_predictions=True)
    _evaluator(evaluator_class, name, output_dir=out)  # nothing saved: nothing collides


@pytest.mark.parametrize("evaluator_class", [PaperSemSegEvaluator, StandardSemSegEvaluator])
def test_no_images_give_no_results_and_write_none(make_dataset, evaluator_class, tmp_path):
    """The standard protocol wrote a results JSON of nulls (Detectron2's NaN metric)."""
    name, _ = make_dataset([], ["a", "b"])
    assert _run(_evaluator(evaluator_class, name, output_dir=str(tmp_path)), [], [], 2) == {}
    assert list(tmp_path.glob("*.json")) == []


@pytest.mark.parametrize("evaluator_class", [PaperSemSegEvaluator, StandardSemSegEvaluator])
def test_jpeg_ground_truth_is_refused(make_dataset, evaluator_class):
    """A JPEG label map's border pixels hold neighbouring ids (here still classes): the
    evaluation lowered mIoU without a word."""
    gt = np.full((16, 16), 100, np.uint8)
    gt[:, 7:] = 150
    name, records = make_dataset([None], [f"c{i}" for i in range(200)])
    path = records[0]["sem_seg_file_name"]
    Image.fromarray(gt).save(path, format="JPEG", quality=50)
    assert set(np.unique(np.asarray(Image.open(path)))) - {100, 150}  # ids changed, classes all
    evaluator = _evaluator(
        evaluator_class,
        name,
        **({"crop_size": 16} if evaluator_class is PaperSemSegEvaluator else {}),
    )
    with pytest.raises(InputError, match=rf"'{path}' is a JPEG.*save label maps losslessly"):
        _run(evaluator, [_with_size(records[0], 16, 16)], [gt], 200)
