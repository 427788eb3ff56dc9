"""tools/device_check.sh --dry-run on a CPU: what the GPU check would run, and that it would
parse."""

import json
import os
import shlex
import subprocess
import sys

import pytest

from conftest import FIXTURES, REPO, require_fixtures

sys.path.insert(0, os.path.join(REPO, "tools"))
import benchmark  # noqa: E402

SCRIPT = os.path.join(REPO, "tools", "device_check.sh")
SAMPLE = os.path.join(REPO, "datasets")


def _run(tmp_path, output="check.json", **env):
    environment = {
        **os.environ,
        "PYTHON": sys.executable,
        "CLIPTRASE_FIXTURES": FIXTURES,
        "DETECTRON2_DATASETS": SAMPLE,
        **env,  # a test's own values win
    }
    return subprocess.run(
        ["bash", SCRIPT, "--dry-run", str(tmp_path / output)],
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_dry_run_lists_every_step_and_writes_the_json(tmp_path):
    require_fixtures()
    if not os.path.isdir(os.path.join(SAMPLE, "cliptrase_sample_voc21")):
        pytest.skip("the VOC sample is not linked into datasets/")
    done = _run(tmp_path)
    assert done.returncode == 0, done.stderr
    with open(tmp_path / "check.json") as f:
        report = json.load(f)
    assert report["dry_run"] is True
    steps = report["steps"]
    assert list(steps) == ["tests", "benchmark_fp32", "benchmark_fp16", "train_net"]
    assert all(step["status"] == "skipped" for step in steps.values())
    assert "tests/test_cuda.py" in steps["tests"]["command"]
    for precision in ("fp32", "fp16"):
        argv = shlex.split(steps[f"benchmark_{precision}"]["command"])
        args = benchmark.get_parser().parse_args(argv[argv.index("tools/benchmark.py") + 1 :])
        assert (args.device, args.precision, args.batch_sizes) == ("cuda", precision, "1,32")
    train = shlex.split(steps["train_net"]["command"])
    assert (
        train[train.index("--num-gpus") + 1] == "1"
        and train[train.index("MODEL.DEVICE") + 1] == "cuda"
    )
    assert "[dry-run] train_net" in done.stdout


def test_paths_with_a_space_stay_one_argument(tmp_path):
    """A fixtures folder or --model with a space in its path was split into two arguments when
    the steps ran (bash -c of the command line)."""
    require_fixtures()
    fixtures, model = tmp_path / "my fixtures", tmp_path / "my model.json"
    fixtures.symlink_to(FIXTURES)
    model.symlink_to(os.path.join(FIXTURES, "tiny_clip.json"))
    done = _run(tmp_path, CLIPTRASE_FIXTURES=str(fixtures), BENCHMARK_MODEL=str(model))
    assert done.returncode == 0, done.stderr
    with open(tmp_path / "check.json") as f:
        steps = json.load(f)["steps"]
    train = shlex.split(steps["train_net"]["command"])
    assert train[train.index("MODEL.WEIGHTS") + 1] == f"{fixtures}/tiny_clip_openai.pt"
    assert train[0] == sys.executable and str(model) in shlex.split(
        steps["benchmark_fp32"]["command"]
    )


@pytest.mark.parametrize("output", ["nowhere/check.json", "."])
def test_an_output_that_cannot_be_written_is_named_first(output, tmp_path):
    """The JSON went to a missing folder (or a folder) only after every step had run: a
    FileNotFoundError traceback, and the steps' results deleted with the work folder."""
    require_fixtures()
    done = _run(tmp_path, output)
    assert done.returncode == 2 and "device_check: cannot write" in done.stderr
    assert "give another OUTPUT.json" in done.stderr and "[dry-run]" not in done.stdout


def test_missing_fixtures_are_named(tmp_path):
    done = _run(tmp_path, CLIPTRASE_FIXTURES=str(tmp_path / "nowhere"))
    assert done.returncode == 2 and "nowhere/tiny_clip.json is missing" in done.stderr
    assert not (tmp_path / "check.json").exists()
