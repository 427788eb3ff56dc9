"""tools/benchmark.py's machinery on the fixtures' tiny CLIP: what it reports, not how fast."""

import json
import os
import sys
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import REPO, TINY_CONFIG, require_fixtures
from cliptrase_d2.data.dataset_mapper import ProtocolFrame
from cliptrase_d2.method import dense_clip, refinement
from cliptrase_d2.method.preprocess import resize_and_center_crop

sys.path.insert(0, os.path.join(REPO, "tools"))
import benchmark  # noqa: E402

CASES = "paper_224,paper_336,standard_512x683"


@pytest.fixture(scope="module")
def report():
    require_fixtures()
    argv = [
        "--model",
        TINY_CONFIG,
        "--repeats",
        "1",
        "--warmup",
        "0",
        "--no-memory",
        "--stages",
        "--cases",
        CASES,
        "--batch-sizes",
        "1,3",
    ]
    return benchmark.run_benchmark(benchmark.get_parser().parse_args(argv))


def test_times_and_ratios_of_every_case(report):
    for name in ("plain_224", "plain_336", *CASES.split(",")):
        assert report[f"time_ms_{name}"] > 0
    for size in (224, 336):
        assert report[f"ratio_paper_{size}"] == pytest.approx(
            report[f"time_ms_paper_{size}"] / report[f"time_ms_plain_{size}"]
        )
        assert report[f"ratio_paper_{size}_photo"] == pytest.approx(
            report[f"time_ms_paper_{size}_photo"] / report[f"time_ms_plain_{size}"]
        )
        assert report[f"loader_ms_paper_{size}"] > 0
    assert report["classes_paper_224"] == report["classes_paper_336"] == 59  # PC59
    assert report["classes_standard_512x683"] == 150  # ADE150
    assert report["windows_standard_512x683"] == 6  # shorter side 336: 336 x 448 -> 2 x 3 windows
    assert report["window_ratio_standard_512x683"] == pytest.approx(
        report["time_ms_standard_512x683"] / (6 * report["time_ms_plain_224_beside_standard"])
    )
    assert report["images_per_s_batch4"] > 0 and report["images_per_s_batch1"] > 0
    assert report["batch4_speedup"] == pytest.approx(
        report["images_per_s_batch4"] / report["images_per_s_batch1"]
    )
    assert report["plain_batch4_speedup"] > 0


def test_stages_cover_the_method_and_are_restored(report):
    stages = report["stages_ms"]
    assert set(stages) == set(CASES.split(","))
    paper = stages["paper_224"]
    for label in (
        "backbone (embed, blocks 1..N-2)",
        "block N-1 + self-correlation",
        "block N (correlative)",
        "upsampling",
        "clustering (DBSCAN)",
        "region map: median filter",
        "refinement (vote, region means)",
    ):
        assert paper[label] > 0, label
    assert stages["standard_512x683"]["sliding window"] > 0
    named = sum(
        value for label, value in paper.items() if label not in ("total", "other (output, glue)")
    )
    assert named <= paper["total"] + 1e-6 and paper["other (output, glue)"] > -1.0
    assert dense_clip.residual_block.__module__ == dense_clip.__name__  # the wrappers are gone
    assert refinement.median_filter.__name__ == "median_filter"


def test_table_and_json(report):
    table = benchmark.format_table(report)
    assert "the plain forward gains" in table
    assert (
        "| paper_336 | 59 |" in table
        and "| stage (ms) | paper_224 | paper_336 | standard_512x683 |" in table
    )
    assert json.loads(json.dumps(report)) == report


def test_paper_cases_get_the_test_mappers_crop():
    """The paper cases are timed on what evaluation's mapper gives the model (the S x S crop),
    the standard ones on the photo at the case's size."""
    photo = benchmark.load_photos("")[0]
    model = SimpleNamespace(frame=ProtocolFrame("paper", 224))
    frame = benchmark.case_frame("paper_224", model, photo)
    assert frame.shape == (224, 224, 3) and photo.shape != frame.shape
    np.testing.assert_array_equal(
        frame,
        np.asarray(resize_and_center_crop(Image.fromarray(photo), 224, Image.BICUBIC)),
    )
    assert benchmark.case_frame("standard_512x683", model, photo).shape == (512, 683, 3)


def test_timed_runs_take_turns_in_alternating_order():
    calls = []
    runs = {name: (lambda name=name: calls.append(name)) for name in "abc"}
    times = benchmark.median_times(runs, torch.device("cpu"), repeats=3, warmup=1)
    assert calls == list("abc" + "abc" + "cba" + "abc")  # warm-up, then rounds 1, 2 (reversed), 3
    assert set(times) == set("abc") and all(t >= 0 for t in times.values())


def test_stage_clock_charges_nested_calls_to_their_own_stage():
    clock = benchmark.StageClock(torch.device("cpu"))
    inner = clock.wrap(lambda: time.sleep(0.02), "inner")
    outer = clock.wrap(lambda: inner(), "outer")
    outer()
    assert clock.totals["inner"] >= 0.02 and clock.totals["outer"] < clock.totals["inner"]


def test_windows_of_the_standard_cases():
    common = dict(long_side=2048, window=224, stride=112)
    cityscapes = SimpleNamespace(frame=ProtocolFrame("standard", short_side=560, **common))
    ade = SimpleNamespace(frame=ProtocolFrame("standard", short_side=336, **common))
    assert benchmark.number_of_windows(cityscapes, (1024, 2048)) == 4 * 9  # 560 x 1120
    assert benchmark.number_of_windows(ade, (1024, 2048)) == 2 * 5  # 336 x 672
    assert benchmark.number_of_windows(ade, (512, 683)) == 2 * 3  # 336 x 448


def test_peak_memory_is_measured_in_a_fresh_process():
    require_fixtures()
    args = benchmark.get_parser().parse_args(["--model", TINY_CONFIG])
    measured = benchmark.case_memory("plain_224", args)
    assert measured["case"] == "plain_224"
    assert measured["peak_mb"] >= measured["setup_mb"] > 50  # the interpreter, torch and the model


def test_overhead_after_the_backbone_and_batch_throughput(report):
    for case in CASES.split(","):
        # the same forwards' whole time: an overhead timed apart from time_ms_<case> may exceed
        # it on a busy machine, never the forwards it was taken from
        assert 0 < report[f"overhead_ms_{case}"] < report[f"overhead_forward_ms_{case}"]
    for size in (224, 336):
        assert report[f"overhead_share_paper_{size}"] == pytest.approx(
            report[f"overhead_ms_paper_{size}"] / report[f"time_ms_plain_{size}"]
        )
    for size in (1, 3):
        assert report[f"throughput_ratio_batch{size}"] == pytest.approx(
            report[f"throughput_batch{size}"] / report[f"plain_throughput_batch{size}"]
        )
    assert "throughput_ratio_batch8" not in report  # a CPU measures only the sizes asked for
    assert "batch 3: " in benchmark.format_table(report)


def test_backbone_clock_charges_only_the_time_after_the_backbone():
    """A model whose backbone sleeps 30 ms and whose post-processing sleeps 20 ms."""

    class Head:
        name = "sleepy"

        def features(self, visual, images):
            time.sleep(0.03)

    class Model:
        head = Head()

        def __call__(self, inputs):
            time.sleep(0.01)  # before the backbone: not charged
            self.head.features(None, None)
            time.sleep(0.02)

    model = Model()
    overhead, forward = benchmark.overhead_ms(model, [], torch.device("cpu"), repeats=3)
    assert 19 <= overhead < 29 and isinstance(model.head, Head)  # the head is restored
    assert forward >= 60 and forward - overhead >= 40  # 10 ms before + 30 ms backbone, not charged
