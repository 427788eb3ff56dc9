"""tools/train_net.py --eval-only: the paper metric on the reference photos, N processes equal one,
and its errors."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import (
    FIXTURES,
    REPO,
    TRAIN_NET,
    manifest_runs,
    require_fixtures,
    run_config,
    sample_evaluation,
    skip_outside_ci,
)
from cliptrase_d2.config import load_config
from cliptrase_d2.engine.trainer import Trainer

SAMPLE_ROOT = os.path.join(REPO, "datasets", "cliptrase_sample_voc21")
FIXTURE_DATASETS = {
    "VOC21": "cliptrase_fixtures_voc21",
    "VOC20": "cliptrase_fixtures_voc20",
    "PC59": "cliptrase_fixtures_pc59",
}


@pytest.mark.parametrize("run", manifest_runs())
def test_paper_metric_on_reference_photos_equals_manifest(run, manifest, tiny_opts, tmp_path):
    config, opts = run_config(run)
    key = manifest["vocabulary_key"][run["dataset"]]
    dataset = FIXTURE_DATASETS[run["dataset"]]
    cfg = load_config(
        config,
        list(tiny_opts)
        + opts
        + [
            "MODEL.CLIPTRASE.VOCABULARY",
            key,
            "DATASETS.TEST",
            f"('{dataset}',)",
            "OUTPUT_DIR",
            str(tmp_path),
            "DATALOADER.NUM_WORKERS",
            "0",
            "TEST.SAVE_PREDICTIONS",
            "True",
        ],
    )
    model = Trainer.build_model(cfg)
    results = Trainer.test(cfg, model)["sem_seg"]
    for name, value in run["metric"].items():
        assert round(results[name], 2) == pytest.approx(value, abs=0.01), name
    # The label maps behind the metric are the authors' (several metrics are 0.00 on these photos,
    # and some reference maps hold one class, so the numbers alone could not tell much).
    for case in run["cases"]:
        reference = np.load(os.path.join(FIXTURES, "cases", case["file"]))["pred"]
        saved = np.array(Image.open(tmp_path / "predictions" / dataset / case["image"]))
        assert saved.shape == reference.shape
        assert (saved == reference).mean() >= 0.9999, case["file"]


def _require_sample():
    if not os.path.isdir(os.path.join(SAMPLE_ROOT, "annotations")):
        skip_outside_ci(
            f"sample dataset missing at {SAMPLE_ROOT}: run `python datasets/prepare_sample.py`"
        )


def _eval(num_processes, output, tiny_opts, *extra):
    command = [*sample_evaluation(output, tiny_opts, "--num-gpus", str(num_processes)), *extra]
    env = dict(os.environ, DETECTRON2_DATASETS=os.path.join(REPO, "datasets"), OMP_NUM_THREADS="1")
    completed = subprocess.run(
        command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return completed


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_processes_equal_one(tiny_opts, tmp_path):
    _require_sample()
    _eval(1, tmp_path / "one", tiny_opts)
    redirected = _eval(2, tmp_path / "two", tiny_opts)
    # a redirected log: no colour codes, no config dump (the config is in config.yaml), and the
    # results as a table, not Detectron2's raw results dict
    for text in (redirected.stdout, (tmp_path / "two" / "log.txt").read_text()):
        assert "\x1b[" not in text and "Running with full config" not in text
        assert "OrderedDict" not in text + redirected.stderr
        assert re.search(r"\|\s+mIoU\s+\|\s+fwIoU\s+\|\s+mAcc\s+\|\s+pAcc\s+\|", text)
    assert "OUTPUT_DIR:" in (tmp_path / "two" / "config.yaml").read_text()
    results = [
        json.loads((tmp_path / n / "sem_seg_results_cliptrase_sample_voc21.json").read_text())
        for n in ("one", "two")
    ]
    assert results[0] == results[1]
    assert (
        results[0]["run"]["head"] == "cliptrase" and results[0]["run"]["short_side"] == 224
    )  # what made them
    log = (tmp_path / "two" / "log.txt").read_text()
    for line in (
        "CLIPtrase: head=cliptrase",
        "Semantic segmentation results on cliptrase_sample_voc21",
        "Wrote ",
    ):
        assert line in log, line
    assert 0 <= results[0]["mIoU"] <= 100 and len(results[0]["per_class_IoU"]) == 21
    one = sorted(os.listdir(tmp_path / "one" / "predictions" / "cliptrase_sample_voc21"))
    two = sorted(os.listdir(tmp_path / "two" / "predictions" / "cliptrase_sample_voc21"))
    assert one == two and len(one) == 4
    for name in one:
        a = np.array(Image.open(tmp_path / "one" / "predictions" / "cliptrase_sample_voc21" / name))
        b = np.array(Image.open(tmp_path / "two" / "predictions" / "cliptrase_sample_voc21" / name))
        gt = np.array(Image.open(os.path.join(SAMPLE_ROOT, "annotations", name)))
        assert a.shape == gt.shape  # the standard protocol predicts at the original resolution
        np.testing.assert_array_equal(a, b)


def test_two_machines_sharing_one_output_folder_equal_one_process(tiny_opts, tmp_path):
    """Two machines simulated on one host (one process each, one OUTPUT_DIR): machine 0 alone
    claims the folder and writes the results, and both machines' label maps land in it."""
    _require_sample()
    _eval(1, tmp_path / "one", tiny_opts)
    port = _free_port()
    machines = [
        subprocess.Popen(
            sample_evaluation(
                tmp_path / "shared",
                tiny_opts,
                *("--num-machines", "2", "--machine-rank", str(rank), "--num-gpus", "1"),
                *("--dist-url", f"tcp://127.0.0.1:{port}"),
            ),
            cwd=REPO,
            env=dict(
                os.environ, DETECTRON2_DATASETS=os.path.join(REPO, "datasets"), OMP_NUM_THREADS="1"
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in (0, 1)
    ]
    for machine in machines:
        _, stderr = machine.communicate(timeout=600)
        assert machine.returncode == 0, stderr[-3000:]
    name = "sem_seg_results_cliptrase_sample_voc21.json"
    shared = json.loads((tmp_path / "shared" / name).read_text())
    assert shared == json.loads((tmp_path / "one" / name).read_text())
    folder = os.path.join("predictions", "cliptrase_sample_voc21")
    names = sorted(os.listdir(tmp_path / "shared" / folder))
    assert names == sorted(os.listdir(tmp_path / "one" / folder)) and len(names) == 4
    for name in names:
        np.testing.assert_array_equal(
            np.array(Image.open(tmp_path / "shared" / folder / name)),
            np.array(Image.open(tmp_path / "one" / folder / name)),
        )
    # each machine wrote its own half of them, into the one folder
    records = sorted((tmp_path / "shared" / ".cliptrase_d2").glob("written.*"))
    written = [set(record.read_text().split()) for record in records]
    assert len(written) == 2 and all(any(folder in path for path in paths) for paths in written)


def test_a_failing_process_reports_its_error_without_hanging(tiny_opts, tmp_path):
    """Process 2 of 2 meets a bad ground truth while process 1 waits in the evaluator's gather:
    the run ends at once with that error, not after the 30-minute collective timeout."""
    import shutil
    import time

    _require_sample()
    root = tmp_path / "datasets"
    shutil.copytree(SAMPLE_ROOT, root / "cliptrase_sample_voc21")
    annotations = sorted(os.listdir(root / "cliptrase_sample_voc21" / "annotations"))
    Image.new("L", (10, 10)).save(root / "cliptrase_sample_voc21" / "annotations" / annotations[-1])
    command = [
        sys.executable,
        TRAIN_NET,
        "--eval-only",
        "--num-gpus",
        "2",
        "--config-file",
        os.path.join(REPO, "configs", "sample", "voc21_standard.yaml"),
        *tiny_opts,
        "OUTPUT_DIR",
        str(tmp_path / "out"),
        "MODEL.CLIPTRASE.STANDARD_SHORT_SIDE",
        "224",
        "DATALOADER.NUM_WORKERS",
        "0",
    ]
    env = dict(os.environ, DETECTRON2_DATASETS=str(root), OMP_NUM_THREADS="1")
    start = time.monotonic()
    completed = subprocess.run(
        command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert completed.returncode != 0
    last = completed.stderr.strip().splitlines()[-1]
    assert (
        last.startswith("error: (process rank 1 of 2)")
        and "10x10" in last
        and annotations[-1] in last
    ), last
    assert time.monotonic() - start < 240


def test_training_is_refused():
    completed = subprocess.run(
        [
            sys.executable,
            TRAIN_NET,
            "--config-file",
            os.path.join(REPO, "configs", "sample", "voc21_standard.yaml"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode != 0 and "training-free" in completed.stderr


def test_unregistered_dataset_lists_registered_ones(tiny_opts, tmp_path):
    require_fixtures()
    cfg = load_config(
        os.path.join(REPO, "configs", "paper", "Base-paper-224.yaml"),
        list(tiny_opts)
        + [
            "MODEL.CLIPTRASE.VOCABULARY",
            "voc21",
            "DATASETS.TEST",
            "('voc_2012_val_typo',)",
            "OUTPUT_DIR",
            str(tmp_path),
        ],
    )
    with pytest.raises(KeyError, match="voc_2012_val_typo.*cliptrase_ade150_val"):
        Trainer.test(cfg, Trainer.build_model(cfg))


def test_missing_dataset_root_names_path_and_prepare_script(tiny_opts, tmp_path, monkeypatch):
    require_fixtures()
    from cliptrase_d2.data.datasets.register_benchmarks import register_benchmark_datasets

    register_benchmark_datasets(str(tmp_path / "nowhere"))
    try:
        cfg = load_config(
            os.path.join(REPO, "configs", "paper", "ade150_224.yaml"),
            list(tiny_opts) + ["OUTPUT_DIR", str(tmp_path)],
        )
        with pytest.raises(
            FileNotFoundError, match=r"nowhere.*ADEChallengeData2016.*prepare_ade20k_150\.py"
        ):
            Trainer.test(cfg, Trainer.build_model(cfg))
    finally:
        register_benchmark_datasets()


def test_every_method_config_writes_to_its_own_folder():
    heads = [
        "clearclip",
        "clip",
        "cliptrase",
        "maskclip",
        "maskclip_residual",
        "naclip",
        "sclip",
        "scclip",
        "pearl",
    ]
    folders = {
        load_config(os.path.join(REPO, "configs", head, "standard.yaml"), []).OUTPUT_DIR
        for head in heads
    }
    assert len(folders) == len(heads) and "./output" not in folders


def _sample_config(yaml, output, *extra):
    return load_config(
        os.path.join(REPO, "configs", "sample", yaml),
        [
            *extra,
            "OUTPUT_DIR",
            str(output),
            "MODEL.CLIPTRASE.STANDARD_SHORT_SIDE",
            "224",
        ],
    )


@pytest.mark.parametrize("yaml", ["voc21_standard.yaml", "voc21_paper_224.yaml"])
def test_batches_of_three_images_give_what_one_at_a_time_gives(
    yaml, tiny_opts, tmp_path, monkeypatch
):
    """TEST.IMS_PER_BATCH 3 on the four sample photos: the model receives batches of 3 and 1
    (read by DATALOADER.NUM_WORKERS 2 processes), and the metrics and saved label maps equal
    those of batch 1 exactly."""
    _require_sample()
    monkeypatch.setenv("DETECTRON2_DATASETS", os.path.join(REPO, "datasets"))
    results, batches = {}, {}
    for size, workers in ((1, 0), (3, 2)):
        cfg = _sample_config(
            yaml,
            tmp_path / str(size),
            *tiny_opts,
            "TEST.IMS_PER_BATCH",
            str(size),
            "DATALOADER.NUM_WORKERS",
            str(workers),
            "DATASETS.TEST",
            "('cliptrase_sample_voc20',)",  # no background class: maps that vary with the tiny CLIP
        )
        loader = Trainer.build_test_loader(cfg, "cliptrase_sample_voc20")
        assert (loader.batch_size, loader.num_workers) == (size, workers)
        model = Trainer.build_model(cfg)
        forward, batches[size] = model.forward, []
        model.forward = lambda inputs, seen=batches[size], forward=forward: (
            seen.append(len(inputs)) or forward(inputs)
        )
        results[size] = Trainer.test(cfg, model)["sem_seg"]
    assert batches == {1: [1, 1, 1, 1], 3: [3, 1]}
    assert results[1].keys() == results[3].keys()
    for key, value in results[1].items():  # exactly (NaN for classes absent from both)
        assert results[3][key] == value or (np.isnan(value) and np.isnan(results[3][key])), key
    folder = os.path.join("predictions", "cliptrase_sample_voc20")
    names = sorted(os.listdir(tmp_path / "1" / folder))
    assert names == sorted(os.listdir(tmp_path / "3" / folder)) and len(names) == 4
    maps = [
        [np.array(Image.open(tmp_path / str(size) / folder / name)) for name in names]
        for size in (1, 3)
    ]
    for name, one, three in zip(names, *maps):
        np.testing.assert_array_equal(three, one, err_msg=name)
    assert len({labels.tobytes() for labels in maps[0]}) >= 2  # not one map four times


def test_batches_are_cut_from_each_process_s_shard(tiny_opts, tmp_path, monkeypatch):
    """Process 2 of 2 reads its half of the four photos (InferenceSampler), in one batch of 3
    at most."""
    from detectron2.utils import comm

    _require_sample()
    monkeypatch.setenv("DETECTRON2_DATASETS", os.path.join(REPO, "datasets"))
    cfg = _sample_config("voc21_standard.yaml", tmp_path, *tiny_opts, "TEST.IMS_PER_BATCH", "3")
    cfg.DATALOADER.NUM_WORKERS = 0
    everything = [
        [os.path.basename(r["file_name"]) for r in batch]
        for batch in Trainer.build_test_loader(cfg, "cliptrase_sample_voc21")
    ]
    monkeypatch.setattr(comm, "get_world_size", lambda: 2)
    monkeypatch.setattr(comm, "get_rank", lambda: 1)
    shard = [
        [os.path.basename(r["file_name"]) for r in batch]
        for batch in Trainer.build_test_loader(cfg, "cliptrase_sample_voc21")
    ]
    assert len(everything) == 2 and len(everything[0]) == 3
    assert shard == [sum(everything, [])[2:]]


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("TEST.IMS_PER_BATCH", "0", "TEST.IMS_PER_BATCH.*got 0|got 0.*TEST.IMS"),
        ("TEST.IMS_PER_BATCH", "-2", "TEST.IMS_PER_BATCH.*got -2|got -2.*TEST.IMS"),
        (
            "TEST.IMS_PER_BATCH",
            "2.5",
            r"TEST\.IMS_PER_BATCH takes a whole number \(now \d+\), not 2\.5$",
        ),
        ("DATASETS.TEST", "()", r"DATASETS\.TEST is empty: name the dataset"),
        ("DATASETS.TEST", "('typo_val',)", r"'typo_val' is not registered.*cliptrase_ade150"),
    ],
)
def test_bad_batch_size_or_test_datasets_are_refused_before_any_work(key, value, message, tmp_path):
    import argparse

    from cliptrase_d2.engine.trainer import validate
    from cliptrase_d2.errors import ConfigError, UnknownNameError

    args = argparse.Namespace(
        config_file=os.path.join(REPO, "configs", "sample", "voc21_standard.yaml"),
        opts=["OUTPUT_DIR", str(tmp_path / "out"), key, value],
        num_gpus=1,
        num_machines=1,
        machine_rank=0,
        resume=False,
    )
    with pytest.raises(UnknownNameError if "typo" in value else ConfigError, match=message):
        validate(args)
    assert not (tmp_path / "out").exists()  # nothing claimed, nothing built
