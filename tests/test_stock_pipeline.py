"""The meta-architecture in a stock Detectron2 pipeline: only add_cliptrase_config and a config,
then Detectron2's own DatasetMapper, build_detection_test_loader, SemSegEvaluator and
inference_on_dataset (the README's "use it in your own pipeline")."""

import json
import os

import numpy as np
import pycocotools.mask as mask_utils
import pytest
from detectron2.data import DatasetCatalog
from PIL import Image

from conftest import REPO, require_fixtures

DATASET = "cliptrase_fixtures_pc59"


def test_stock_pipeline_equals_train_net(tiny_opts, tmp_path):
    require_fixtures()
    from detectron2.config import get_cfg
    from detectron2.data import DatasetMapper, build_detection_test_loader
    from detectron2.evaluation import SemSegEvaluator, inference_on_dataset
    from detectron2.modeling import build_model

    from cliptrase_d2 import add_cliptrase_config
    from cliptrase_d2.config import load_config
    from cliptrase_d2.engine.trainer import Trainer

    config = os.path.join(REPO, "configs", "standard", "Base-standard.yaml")
    overrides = [
        *tiny_opts,
        "DATASETS.TEST",
        f"('{DATASET}',)",
        "DATALOADER.NUM_WORKERS",
        "0",
        "MODEL.CLIPTRASE.STANDARD_SHORT_SIDE",
        "224",
    ]

    # --- what a user writes in their own pipeline ---
    cfg = get_cfg()
    add_cliptrase_config(cfg)
    cfg.merge_from_file(config)
    cfg.merge_from_list(overrides)
    model = build_model(cfg).eval()  # no vocabulary given: each record's dataset brings its own
    loader = build_detection_test_loader(cfg, DATASET, mapper=DatasetMapper(cfg, is_train=False))
    evaluator = SemSegEvaluator(DATASET, distributed=False, output_dir=str(tmp_path / "stock"))
    stock = inference_on_dataset(model, loader, evaluator)["sem_seg"]
    # ---

    ours_cfg = load_config(
        config, overrides + ["OUTPUT_DIR", str(tmp_path / "ours"), "TEST.SAVE_PREDICTIONS", "True"]
    )
    ours = Trainer.test(ours_cfg, Trainer.build_model(ours_cfg))["sem_seg"]
    assert model.vocabulary is None and len(evaluator._class_names) == 59
    for key in ("mIoU", "fwIoU", "mACC", "pACC"):
        assert stock[key] == pytest.approx(ours[key], abs=1e-9), key
    # The label maps behind the numbers: Detectron2's per-class RLE masks against our PNGs.
    with open(tmp_path / "stock" / "sem_seg_predictions.json") as f:
        masks = json.load(f)
    records = DatasetCatalog.get(DATASET)
    assert {m["file_name"] for m in masks} == {r["file_name"] for r in records}
    classes_seen = set()
    for record in records:
        ours_labels = np.asarray(
            Image.open(tmp_path / "ours" / "predictions" / DATASET / f"{record['image_id']}.png")
        )
        stock_labels = np.full(ours_labels.shape, -1)
        for mask in (m for m in masks if m["file_name"] == record["file_name"]):
            stock_labels[mask_utils.decode(mask["segmentation"]).astype(bool)] = mask["category_id"]
        np.testing.assert_array_equal(stock_labels, ours_labels)
        classes_seen |= set(np.unique(ours_labels).tolist())
    assert len(classes_seen) >= 2  # the comparison is over label maps that vary
