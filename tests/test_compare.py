"""tools/compare.py: every head on a dataset in one run, one table."""

import csv
import dataclasses
import json
import os
import sys

import pytest
import yaml

from conftest import FIXTURE_SPLITS, REPO, require_fixtures
from cliptrase_d2.data.datasets import register_split
from cliptrase_d2.errors import InputError, MissingFileError
from detectron2.data import DatasetCatalog, MetadataCatalog
from cliptrase_d2.config import load_config
from cliptrase_d2.engine.trainer import Trainer, validate
from detectron2.engine import default_argument_parser

sys.path.insert(0, os.path.join(REPO, "tools"))
import compare  # noqa: E402


def test_table_of_heads_on_reference_photos(tiny_opts, manifest, tmp_path):
    require_fixtures()
    run = manifest["runs"][0]  # VOC21, 224, eps 0.7, min 3: the paper defaults
    args = compare.get_parser().parse_args(
        [
            "--config-file",
            os.path.join(REPO, "configs", "paper", "voc21_224.yaml"),
            "--heads",
            "cliptrase,clearclip",
            "--datasets",
            "cliptrase_fixtures_voc21",
            "--output",
            str(tmp_path),
            *tiny_opts,
            "DATALOADER.NUM_WORKERS",
            "0",
        ]
    )
    cells = compare.main(args)
    assert cells["cliptrase", "cliptrase_fixtures_voc21"][0] == pytest.approx(
        run["metric"]["mIoU"], abs=0.01
    )
    with open(tmp_path / "compare.csv") as f:
        rows = list(csv.reader(f))
    assert [r[0] for r in rows] == ["head", "cliptrase", "clearclip"]
    assert float(rows[1][1]) == pytest.approx(run["metric"]["mIoU"], abs=0.01)
    assert float(rows[2][2]) > 0  # seconds per image
    assert "| clearclip |" in (tmp_path / "compare.md").read_text()
    # The clearclip row is clearclip's own evaluation, not the default head's under another name.
    cfg = load_config(
        os.path.join(REPO, "configs", "paper", "voc21_224.yaml"),
        [
            *tiny_opts,
            "DATALOADER.NUM_WORKERS",
            "0",
            "MODEL.CLIPTRASE.HEAD",
            "clearclip",
            "MODEL.CLIPTRASE.REFINE",
            "none",
            "DATASETS.TEST",
            "('cliptrase_fixtures_voc21',)",
            "OUTPUT_DIR",
            str(tmp_path / "alone"),
        ],
    )
    alone = Trainer.test(cfg, Trainer.build_model(cfg))["sem_seg"]
    assert cells["clearclip", "cliptrase_fixtures_voc21"][0] == pytest.approx(
        alone["mIoU"], abs=1e-9
    )
    cliptrase = json.loads(
        (tmp_path / "cliptrase" / "sem_seg_results_cliptrase_fixtures_voc21.json").read_text()
    )
    clearclip = json.loads(
        (tmp_path / "clearclip" / "sem_seg_results_cliptrase_fixtures_voc21.json").read_text()
    )
    assert (cliptrase["run"]["head"], clearclip["run"]["head"]) == ("cliptrase", "clearclip")
    assert cliptrase["per_class_IoU"] != clearclip["per_class_IoU"]


def test_unknown_head_lists_available():
    with pytest.raises(ValueError, match="unknown head nacl.*naclip"):
        compare.parse_list("cliptrase,nacl", compare.HEADS, "head")


def test_a_repeated_head_or_dataset_runs_once():
    assert compare.parse_list("clip, sclip,clip", compare.HEADS, "head") == ["clip", "sclip"]


def test_peer_heads_run_without_refinement_by_default():
    assert compare.head_opts("sclip", "default") == [
        "MODEL.CLIPTRASE.HEAD",
        "sclip",
        "MODEL.CLIPTRASE.REFINE",
        "none",
    ]
    assert compare.head_opts("cliptrase", "default") == ["MODEL.CLIPTRASE.HEAD", "cliptrase"]
    assert compare.head_opts("sclip", "vote")[-1] == "vote"


BENCHMARK_CONFIGS = sorted(
    os.path.join(protocol, name)
    for protocol in ("paper", "standard")
    for name in os.listdir(os.path.join(REPO, "configs", protocol))
    if not name.startswith("Base-")
)


@pytest.mark.parametrize("config", BENCHMARK_CONFIGS)
def test_each_dataset_runs_with_the_settings_of_its_benchmarks_config(config, monkeypatch):
    """A dataset compared under a protocol's base config runs as its benchmark's own config does
    (e.g. Cityscapes at 560, VOC20 with image-logit weighting); the command line still wins."""
    own = load_config(os.path.join(REPO, "configs", config))
    base = os.path.join(REPO, "configs", config.split(os.sep)[0], own_base(config))
    base_cfg, loaded = load_config(base), []

    def load(config_file, opts=()):  # the evaluation's config, then stop before the model
        loaded.append(load_config(config_file, opts))
        if opts:
            raise StopIteration
        return loaded[-1]

    monkeypatch.setattr(compare, "load_config", load)
    for keys in ([], own_keys(config)):  # then the command line sets each key the base's way
        opts = [x for k in keys for x in (f"MODEL.CLIPTRASE.{k}", str(base_cfg.MODEL.CLIPTRASE[k]))]
        args = compare.get_parser().parse_args(["--config-file", base, "--datasets", "x", *opts])
        with pytest.raises(StopIteration):
            compare.evaluate("cliptrase", own.DATASETS.TEST[0], args)
        expected = base_cfg if keys else own
        assert loaded[-1].MODEL.CLIPTRASE == expected.MODEL.CLIPTRASE


def own_base(config):
    with open(os.path.join(REPO, "configs", config)) as f:
        return yaml.safe_load(f)["_BASE_"]


def own_keys(config):
    with open(os.path.join(REPO, "configs", config)) as f:
        return list(((yaml.safe_load(f).get("MODEL") or {}).get("CLIPTRASE") or {}))


@pytest.mark.parametrize("head", sorted(compare.HEADS))
def test_each_head_runs_with_the_refinement_of_its_own_config(head):
    """By default a peer head runs with the REFINE of configs/<head>/standard.yaml (PEARL's TLP);
    CLIPtrase keeps the protocol config's own."""
    own = load_config(os.path.join(REPO, "configs", head, "standard.yaml")).MODEL.CLIPTRASE.REFINE
    expected = [] if head == "cliptrase" else ["MODEL.CLIPTRASE.REFINE", own]
    assert compare.head_opts(head, "default") == ["MODEL.CLIPTRASE.HEAD", head, *expected]


def test_unused_settings_reported_once(tiny_opts, project_log):
    require_fixtures()
    import logging

    from detectron2.modeling import build_model

    from cliptrase_d2.config import load_config
    from detectron2.utils import logger as d2_logger

    d2_logger._LOG_COUNTER.clear()  # detectron2's log_first_n counts per message
    opts = list(tiny_opts) + [
        "MODEL.CLIPTRASE.HEAD",
        "clearclip",
        "MODEL.CLIPTRASE.REFINE",
        "none",
        "MODEL.CLIPTRASE.VOCABULARY",
        "cat, dog",
    ]
    with project_log.at_level(logging.WARNING):
        for _ in range(2):
            build_model(
                load_config(os.path.join(REPO, "configs", "paper", "Base-paper-224.yaml"), opts)
            )
    assert sum("do not apply" in r.getMessage() for r in project_log.records) == 1


def test_a_failing_run_keeps_the_finished_cells(tmp_path, monkeypatch):
    """The table is written after every run: a dataset that fails to load later keeps the rest."""

    def evaluate(head, dataset, args):
        if dataset == "cliptrase_fixtures_pc59":
            raise FileNotFoundError("pc59 images missing")
        return 50.0, 0.25

    monkeypatch.setattr(compare, "evaluate", evaluate)
    args = compare.get_parser().parse_args(
        [
            "--config-file",
            os.path.join(REPO, "configs", "paper", "voc21_224.yaml"),
            "--heads",
            "cliptrase,clip",
            "--datasets",
            "cliptrase_fixtures_voc21,cliptrase_fixtures_pc59",
            "--output",
            str(tmp_path),
        ]
    )
    with pytest.raises(FileNotFoundError):
        compare.main(args)
    with open(tmp_path / "compare.csv") as f:
        rows = list(csv.reader(f))
    assert rows[1] == ["cliptrase", "50.00", "-", "0.250", "-"] and rows[2] == [
        "clip",
        "50.00",
        "-",
        "0.250",
        "-",
    ]


def test_second_table_runs_each_peer_under_its_published_setting(tmp_path, monkeypatch):
    """Peers only, on the benchmarks they reported, each with its configs/<head>/published file."""
    seen = []

    def evaluate(head, dataset, args):
        return 40.0, 0.5

    def evaluate_published(head, dataset, args):
        seen.append((head, dataset, compare.published_config(head, dataset)))
        return {"sclip": 61.5, "naclip": 58.25}[head], 1.0

    monkeypatch.setattr(compare, "evaluate", evaluate)
    monkeypatch.setattr(compare, "evaluate_published", evaluate_published)
    args = compare.get_parser().parse_args(
        [
            "--config-file",
            os.path.join(REPO, "configs", "standard", "Base-standard.yaml"),
            "--heads",
            "cliptrase,sclip,naclip",
            "--datasets",
            "cliptrase_fixtures_voc21",
            "--output",
            str(tmp_path),
        ]
    )
    cells = compare.main(args)
    published = os.path.join(REPO, "configs", "{}", "published", "voc21.yaml")
    assert seen == [
        (h, "cliptrase_fixtures_voc21", published.format(h)) for h in ("sclip", "naclip")
    ]
    assert cells["published", "sclip", "cliptrase_fixtures_voc21"] == (61.5, 1.0)
    with open(tmp_path / "compare_published.csv") as f:
        rows = list(csv.reader(f))
    assert rows == [
        ["head", "cliptrase_fixtures_voc21 mIoU", "cliptrase_fixtures_voc21 s/img"],
        ["sclip", "61.50", "1.000"],
        ["naclip", "58.25", "1.000"],
    ]
    markdown = (tmp_path / "compare_published.md").read_text()
    assert markdown.startswith("Each peer under its authors' published")
    with open(tmp_path / "compare.csv") as f:
        assert [r[0] for r in csv.reader(f)] == ["head", "cliptrase", "sclip", "naclip"]
    assert compare.published_config("cliptrase", "cliptrase_fixtures_voc21") is None
    assert compare.published_config("sclip", "cliptrase_fixtures_pc59") is not None


@pytest.mark.parametrize("tool", ["compare", "train_net"])
@pytest.mark.parametrize("owner", ["cliptrase_d2", "detectron2", "empty"])
def test_a_dataset_without_its_files_is_named_before_the_first_run(owner, tool, tmp_path):
    """--datasets A,B (train_net: DATASETS.TEST (A, B)) with B's folder missing evaluated A (with
    every head: hours on a benchmark), then ended on B's missing folder (a traceback for
    Detectron2's own datasets); now validate names it before any work."""
    name = "cliptrase_test_missing"
    if owner == "cliptrase_d2":
        register_split(dataclasses.replace(FIXTURE_SPLITS[2], name=name), str(tmp_path / "x"))
        message = f"Dataset '{name}': folder .*x/images does not exist"
    elif owner == "detectron2":  # Detectron2's loaders open their files: a bare FileNotFoundError
        DatasetCatalog.register(name, lambda: open(tmp_path / "x.json"))
        message = f"dataset '{name}': .*x.json': put its files there"
    else:  # Detectron2's loader asserted: "Dataset 'x' is empty!", after the datasets before
        DatasetCatalog.register(name, lambda: [])
        message = f"Dataset '{name}' lists no images: register it with its records"
    config = os.path.join(REPO, "configs", "paper", "voc21_224.yaml")
    if tool == "compare":
        argv = ["--config-file", config, "--output", str(tmp_path / "out"), "--datasets"]
        args = compare.get_parser().parse_args([*argv, f"cliptrase_fixtures_voc21,{name}"])
    else:
        argv = ["--eval-only", "--config-file", config, "OUTPUT_DIR", str(tmp_path / "out")]
        tests = f"('cliptrase_fixtures_voc21', '{name}')"
        args = default_argument_parser().parse_args([*argv, "DATASETS.TEST", tests])
    try:
        with pytest.raises(MissingFileError if owner != "empty" else InputError, match=message):
            (compare.validate if tool == "compare" else validate)(args)
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.pop(name, None)
    assert not (tmp_path / "out").exists()
