"""tools/benchmark.py's machinery on the fixtures' tiny CLIP: what it reports, not how fast."""

import itertools
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import REPO, TINY_CONFIG, TINY_WEIGHTS, require_fixtures
from cliptrase_d2.method.preprocess import resize_and_center_crop
from cliptrase_d2.modeling import vfm as vfm_module

sys.path.insert(0, os.path.join(REPO, "tools"))
import benchmark  # noqa: E402

CASES = "paper_224,paper_336,standard_512x683"
SCRIPT = os.path.join(REPO, "tools", "benchmark.py")


def arguments(*argv):
    args = benchmark.get_parser().parse_args(["--model", TINY_CONFIG, *argv])
    benchmark.check_arguments(args)
    return args


@pytest.fixture(scope="module")
def report():
    require_fixtures()
    argv = ["--repeats", "1", "--warmup", "0", "--no-memory", "--stages", "--cases", CASES]
    return benchmark.run_benchmark(arguments(*argv, "--batch-sizes", "1,3"))


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


def test_stages_cover_the_method(report):
    """The profiler labels of heads.py and refinement.py split the forward into stages."""
    stages = report["stages_ms"]
    assert set(stages) == set(CASES.split(","))
    paper = stages["paper_224"]
    for label in (
        "backbone",
        "upsampling",
        "argmax",
        "clustering",
        "region map",
        "median filter",
        "refinement",
    ):
        assert paper[label] > 0, label
    assert stages["standard_512x683"]["backbone"] > 0
    assert stages["standard_512x683"]["upsampling"] > 0  # the windows' averages, resized
    named = sum(value for label, value in paper.items() if label not in ("total", "other"))
    assert named <= paper["total"] + 1e-6 and paper["other"] == pytest.approx(
        paper["total"] - named
    )


def test_table_and_json(report):
    table = benchmark.format_table(report)
    assert "the plain forward gains" in table
    assert (
        "| paper_336 | 59 |" in table
        and "| stage (ms) | paper_224 | paper_336 | standard_512x683 |" in table
    )
    assert json.loads(json.dumps(report)) == report


def test_cases_get_what_the_test_mapper_gives(tmp_path):
    """The paper cases are timed on the test mapper's S x S crop, the standard ones on the photo
    at the case's size (the original size the prediction is made at)."""
    require_fixtures()
    args = arguments("--cases", "paper_224,standard_512x683")
    photos = benchmark.photo_files(args, str(tmp_path))
    paper = benchmark.loader_inputs(benchmark.case_config("paper_224", args), photos[None])[0]
    photo = Image.open(photos[None][0]).convert("RGB")
    assert paper["image"].shape == (3, 224, 224) and (paper["height"], paper["width"]) == (
        photo.height,
        photo.width,
    )
    np.testing.assert_array_equal(
        paper["image"].permute(1, 2, 0).numpy(),
        np.asarray(resize_and_center_crop(photo, 224, Image.BICUBIC)),
    )
    config = benchmark.case_config("standard_512x683", args)
    standard = benchmark.loader_inputs(config, photos[(512, 683)])
    assert len(standard) == 4 and {(x["height"], x["width"]) for x in standard} == {(512, 683)}


def test_timed_runs_take_turns_in_alternating_order():
    calls = []
    runs = {name: (lambda name=name: calls.append(name)) for name in "abc"}
    times = benchmark.median_ms(runs, repeats=3, warmup=1)
    assert calls[:3] == list("abc")  # the warm-up round
    turns = [name for name, _ in itertools.groupby(calls[3:])]  # a turn may run its name twice
    assert turns == list("abc" + "ba" + "bc")  # rounds 1, 2 (reversed: c b a), 3 (a b c)
    assert set(times) == set("abc") and all(t >= 0 for t in times.values())


def test_stages_are_exclusive_of_the_labels_nested_in_them():
    def forward():
        with torch.profiler.record_function("cliptrase/outer"):
            with torch.profiler.record_function("cliptrase/inner"):
                time.sleep(0.02)

    total, _, stages = benchmark.profile_forward(forward, "cpu")
    assert stages["inner"] >= 20 and stages["outer"] < stages["inner"] and total >= 20


def test_windows_of_the_standard_cases():
    args = arguments("--cases", "standard_1024x2048")
    cityscapes = benchmark.case_config("standard_1024x2048", args)
    ade = benchmark.case_config("standard_512x683", args)
    assert benchmark.number_of_windows(cityscapes, (1024, 2048)) == 4 * 9  # 560 x 1120
    assert benchmark.number_of_windows(ade, (1024, 2048)) == 2 * 5  # 336 x 672
    assert benchmark.number_of_windows(ade, (512, 683)) == 2 * 3  # 336 x 448


def test_peak_memory_is_measured_in_a_fresh_process():
    require_fixtures()
    measured = benchmark.case_memory("plain_224", arguments())
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


def test_only_the_time_after_the_backbone_is_charged():
    """A forward whose backbone sleeps 30 ms, with 10 ms before it and 20 ms after."""

    def forward():
        time.sleep(0.01)  # before the backbone: not charged
        with torch.profiler.record_function("cliptrase/backbone"):
            time.sleep(0.03)
        time.sleep(0.02)

    overhead, whole, stages = benchmark.profiled_stages(forward, "cpu", repeats=3)
    assert 19 <= overhead < 29 and stages["backbone"] >= 30
    assert whole >= 60 and whole - overhead >= 40  # 10 ms before + 30 ms backbone, not charged


def test_proxyclip_floor_is_clip_and_the_vfm_on_every_window(monkeypatch):
    """The proxyclip case's floor: its windows x (the plain 224 forward + its own VFM on one
    window), both timed in the case's turns; a tiny random VFM of the --vfm kind stands in."""
    require_fixtures()
    built, shapes, build_vfm = [], [], vfm_module.build_vfm

    def tiny_vfm(name, weights, dtype):
        built.append((name, weights))
        vfm = build_vfm(name, "random", dtype, depth=1, embed_dim=16, num_heads=2)
        vfm.register_forward_hook(lambda module, inputs, output: shapes.append(inputs[0].shape))
        return vfm

    monkeypatch.setattr(vfm_module, "build_vfm", tiny_vfm)
    case = "proxyclip_512x683"
    argv = ["--repeats", "1", "--warmup", "0", "--no-memory", "--cases", case]
    report = benchmark.run_benchmark(arguments(*argv, "--vfm", "dino_vits16"))
    assert built == [("dino_vits16", "random")]
    assert report[f"classes_{case}"] == 150 and report[f"windows_{case}"] == 6  # 336 x 448
    # the case's forward: its six windows in one batch; the VFM alone: one 224 window
    assert set(shapes) == {(6, 3, 224, 224), (1, 3, 224, 224)}
    unit = report["time_ms_plain_224_beside_standard"] + report[f"vfm_ms_{case}"]
    assert report[f"vfm_ms_{case}"] > 0 and report[f"floor_ms_{case}"] == pytest.approx(6 * unit)
    assert report[f"floor_ratio_{case}"] == pytest.approx(
        report[f"time_ms_{case}"] / report[f"floor_ms_{case}"]
    )
    assert 0 < report[f"overhead_ms_{case}"] < report[f"overhead_forward_ms_{case}"]
    assert f"| {case} | 150 | " in benchmark.format_table(report)


def test_precision_agreement_compares_models_of_the_same_weights(monkeypatch):
    """--precision's agreement holds a case's model against the fp32 one of the same weights:
    the proxyclip case's random VFM too (seeded), not a second random draw."""
    require_fixtures()
    build_vfm = vfm_module.build_vfm
    tiny = dict(depth=1, embed_dim=16, num_heads=2)
    monkeypatch.setattr(vfm_module, "build_vfm", lambda *a: build_vfm(*a, **tiny))
    args = arguments(
        "--weights", TINY_WEIGHTS, "--cases", "proxyclip_512x683", "--precision", "bf16"
    )
    model = benchmark.build_case("proxyclip_512x683", args)[0]
    reference = benchmark.build_case("proxyclip_512x683", args, "fp32")[0]
    for (name, value), expected in zip(
        model.vfm.state_dict().items(), reference.vfm.state_dict().values()
    ):
        torch.testing.assert_close(value.float(), expected.to(value.dtype).float(), msg=name)


BAD_ARGUMENTS = [
    (["--cases", "paper_224,paper_999"], "--cases must be one of paper_224, "),
    (["--cases", ","], "--cases must name at least one of paper_224"),
    (["--device", "tpu"], "--device='tpu' is not a device"),
    (["--device", "cuda:7"] if torch.cuda.is_available() else ["--device", "cuda"], "--device"),
    (["--batch-sizes", "1,x"], "--batch-sizes must be comma-separated whole numbers, got '1,x'"),
    (["--batch-sizes", "0"], "--batch-sizes must be a list of whole numbers, each at least 1"),
    (["--batch-sizes", "4", "--cases", "paper_336"], "--batch-sizes needs the paper_224 case"),
    (["--model", "ViT-Q-99"], "--model ViT-Q-99: Unknown open_clip model 'ViT-Q-99'"),
    (["--model", "nowhere.json"], "--model nowhere.json: Model config nowhere.json not found"),
    (["--weights", "nowhere.pt"], "--weights nowhere.pt: Weights file nowhere.pt not found"),
    (["--image", __file__], "test_benchmark.py"),
    (["--repeats", "0"], "--repeats must be at least 1, got 0"),
    (["--repeats", "two"], "argument --repeats: invalid int value: 'two'"),
    (["--warmup", "-1"], "--warmup must be at least 0, got -1"),
    (["--threads", "100000"], f"--threads must be from 0 (default) to the {os.cpu_count()} CPUs"),
    (["--precision", "fp8"], "argument --precision: invalid choice: 'fp8'"),
    (["--vfm", "dino_vitl14"], "argument --vfm: invalid choice: 'dino_vitl14'"),
]


@pytest.mark.parametrize("argv, message", BAD_ARGUMENTS)
def test_bad_arguments_are_one_line_before_any_work(argv, message, monkeypatch):
    monkeypatch.setattr(benchmark, "run_benchmark", lambda args: pytest.fail("work started"))
    with pytest.raises(SystemExit) as exited:
        benchmark.exit_on_user_error(benchmark.main, argv)
    text = str(exited.value.code)
    assert text.startswith("error: ") and message in text and "\n" not in text


@pytest.mark.parametrize(
    "text, problem",
    [
        ("embed_dim: 8", "is not valid JSON"),
        ('{"embed_dim": 8}', "is not an open_clip model config"),
    ],
)
def test_a_model_config_json_is_checked_as_evaluation_checks_it(
    text, problem, tmp_path, monkeypatch
):
    """A --model JSON that open_clip cannot build from is named before any work (it ended in a
    traceback from open_clip or the JSON parser)."""
    path = tmp_path / "my_clip.json"
    path.write_text(text)
    test_bad_arguments_are_one_line_before_any_work(
        ["--model", str(path)], f"--model {path}: Model config {path} {problem}", monkeypatch
    )


@pytest.mark.parametrize(
    "content, problem",
    [(b"not a checkpoint", "is not a readable checkpoint"), (None, "does not fit the model")],
)
def test_weights_are_read_as_evaluation_reads_them(content, problem, tmp_path, monkeypatch):
    """A --weights file that is damaged, or another model's (here the tiny CLIP's for the default
    ViT-B-16), ended in its one line only after models were built and photos read."""
    require_fixtures()
    path = tmp_path / "w.pt"
    path.write_bytes(content) if content else shutil.copy(TINY_WEIGHTS, path)
    message = f"--weights {path}: Weights file {path} {problem}"
    test_bad_arguments_are_one_line_before_any_work(["--weights", str(path)], message, monkeypatch)


def test_a_bad_argument_ends_the_command_with_one_line():
    done = subprocess.run(
        [sys.executable, SCRIPT, "--cases", "paper_999"], capture_output=True, text=True
    )
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.strip().splitlines()[-1].startswith("error: --cases must be one of")
    assert "Traceback" not in done.stderr


def test_quoted_home_folder_paths_are_the_home_folder_s(tmp_path, monkeypatch):
    """--image "~/photo.png" ended in 'image file ~/photo.png does not exist' and --weights
    "~/w.pt" in 'no such file', for files that exist (evaluation reads such paths)."""
    monkeypatch.setenv("HOME", str(tmp_path))
    Image.new("RGB", (8, 8)).save(tmp_path / "photo.png")
    require_fixtures()
    shutil.copy(TINY_WEIGHTS, tmp_path / "w.pt")  # read before any work: a real checkpoint
    args = arguments("--image", "~/photo.png", "--weights", "~/w.pt")
    assert (args.image, args.weights) == (str(tmp_path / "photo.png"), str(tmp_path / "w.pt"))
