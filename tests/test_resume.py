"""tools/train_net.py --resume: a run killed halfway continues from its saved label maps and ends
with the metrics of a run that was never interrupted; a resume with other settings is refused."""

import json
import re
import os
import shutil
import signal
import subprocess
import time

import numpy as np
import pytest
from PIL import Image

from conftest import REPO, SAMPLE_CONFIG, sample_evaluation, skip_outside_ci
from cliptrase_d2.atomic import STATE_DIR, atomic_write_text
from cliptrase_d2.errors import ConfigError, OutputExistsError
from cliptrase_d2.config import load_config
from cliptrase_d2.engine.trainer import validate
from detectron2.engine import default_argument_parser

SAMPLE_ROOT = os.path.join(REPO, "datasets", "cliptrase_sample_voc21")
RESULTS = "sem_seg_results_cliptrase_sample_voc21.json"
PREDICTIONS = os.path.join("predictions", "cliptrase_sample_voc21")


def _sample_twice(root) -> int:
    """The VOC sample with each photo twice (under two names): enough images to stop between."""
    if not os.path.isdir(os.path.join(SAMPLE_ROOT, "annotations")):
        skip_outside_ci(f"sample dataset missing at {SAMPLE_ROOT}: run datasets/prepare_sample.py")
    dataset = root / "cliptrase_sample_voc21"
    for folder in ("images", "annotations"):
        (dataset / folder).mkdir(parents=True)
    for name in sorted(os.listdir(os.path.join(SAMPLE_ROOT, "images"))):
        stem, suffix = os.path.splitext(name)
        for copy in ("a", "b"):
            shutil.copy(
                os.path.join(SAMPLE_ROOT, "images", name),
                dataset / "images" / f"{stem}{copy}{suffix}",
            )
            shutil.copy(
                os.path.join(SAMPLE_ROOT, "annotations", f"{stem}.png"),
                dataset / "annotations" / f"{stem}{copy}.png",
            )
    return len(os.listdir(dataset / "images"))


def _predicted(output):
    folder = output / PREDICTIONS
    names = os.listdir(folder) if folder.is_dir() else []
    return sorted(name for name in names if not name.startswith("."))


def test_a_killed_evaluation_resumes_where_it_stopped(tiny_opts, tmp_path):
    total = _sample_twice(tmp_path / "datasets")
    env = dict(os.environ, DETECTRON2_DATASETS=str(tmp_path / "datasets"), OMP_NUM_THREADS="1")
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"

    killed = subprocess.Popen(
        sample_evaluation(resumed, tiny_opts),
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 400
        while (
            len(_predicted(resumed)) < 2 and killed.poll() is None and time.monotonic() < deadline
        ):
            time.sleep(0.05)
        killed.send_signal(signal.SIGKILL)
    finally:
        killed.communicate(timeout=60)
    done = _predicted(resumed)
    assert 2 <= len(done) < total, done  # stopped halfway, for real
    assert not (resumed / RESULTS).exists()
    inodes = {name: os.stat(resumed / PREDICTIONS / name).st_ino for name in done}

    completed = subprocess.run(
        sample_evaluation(resumed, tiny_opts, "--resume"),
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    completed = subprocess.run(
        sample_evaluation(whole, tiny_opts),
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]

    assert json.loads((resumed / RESULTS).read_text()) == json.loads((whole / RESULTS).read_text())
    assert _predicted(resumed) == _predicted(whole) and len(_predicted(whole)) == total
    for name in _predicted(whole):
        np.testing.assert_array_equal(
            np.array(Image.open(resumed / PREDICTIONS / name)),
            np.array(Image.open(whole / PREDICTIONS / name)),
        )
    # the images predicted before the kill were not predicted again (the same files)
    assert {name: os.stat(resumed / PREDICTIONS / name).st_ino for name in done} == inodes
    log = (resumed / "log.txt").read_text()
    assert f"{len(done)} images already predicted" in log
    assert f"Start inference on {total - len(done)} batches" in log


def _validate(*argv):
    return validate(default_argument_parser().parse_args(["--eval-only", *argv]))


def test_resume_with_other_settings_is_refused(tmp_path):
    output = tmp_path / "out"
    opts = ["--config-file", SAMPLE_CONFIG, "OUTPUT_DIR", str(output)]
    cfg = load_config(SAMPLE_CONFIG, ["OUTPUT_DIR", str(output)], resolve=False)
    (output / STATE_DIR).mkdir(parents=True)  # a folder an earlier run claimed and wrote in
    atomic_write_text(output / "config.yaml", cfg.dump())
    with pytest.raises(
        ConfigError, match=r"--resume: .*MODEL\.CLIPTRASE\.HEAD 'cliptrase' -> 'clip'"
    ):
        _validate("--resume", *opts, "MODEL.CLIPTRASE.HEAD", "clip")
    assert sorted(os.listdir(output)) == [STATE_DIR, "config.yaml"]  # refused before the claim
    # what does not change a prediction may change; the folder may have moved since
    cfg.OUTPUT_DIR = str(tmp_path / "moved" / ".." / "out")
    atomic_write_text(output / "config.yaml", cfg.dump())
    _validate("--resume", *opts, "DATALOADER.NUM_WORKERS", "0", "TEST.IMS_PER_BATCH", "2")


def test_resume_of_a_config_yaml_without_a_key_reads_the_key_s_default(tmp_path):
    """A config.yaml that another detectron2 version wrote lacks the keys this one adds (0.6's
    lacks main's DATALOADER.REPEAT_SQRT): such a key had its default value in that run."""
    output = tmp_path / "out"
    opts = ["--config-file", SAMPLE_CONFIG, "OUTPUT_DIR", str(output)]
    cfg = load_config(SAMPLE_CONFIG, ["OUTPUT_DIR", str(output)], resolve=False)
    del cfg.DATALOADER["ASPECT_RATIO_GROUPING"]
    (output / STATE_DIR).mkdir(parents=True)
    atomic_write_text(output / "config.yaml", cfg.dump())
    with pytest.raises(ConfigError, match=r"DATALOADER\.ASPECT_RATIO_GROUPING True -> False"):
        _validate("--resume", *opts, "DATALOADER.ASPECT_RATIO_GROUPING", "False")
    _validate("--resume", *opts)


def test_resume_without_saved_predictions_is_refused(tmp_path):
    """Nothing to resume from: a config that saves no label maps cannot skip any image."""
    output = tmp_path / "out"
    opts = ["--config-file", SAMPLE_CONFIG, "OUTPUT_DIR", str(output)]
    with pytest.raises(ConfigError, match=r"--resume skips .*TEST\.SAVE_PREDICTIONS False"):
        _validate("--resume", *opts, "TEST.SAVE_PREDICTIONS", "False")
    assert not output.exists()  # refused before the claim


def test_resuming_a_finished_run_scores_its_saved_label_maps_and_checks_them(tiny_opts, tmp_path):
    """--resume of a run that saved every label map predicts nothing and gives its results (it
    ended in Detectron2's 'need at least one array to concatenate'); a saved label map that was
    damaged since is named with what to do (ids past the classes were scored without a word,
    or ended in a reshape error; an unreadable one in Pillow's error)."""
    output = tmp_path / "out"

    def evaluate(*flags):
        return subprocess.run(
            sample_evaluation(output, tiny_opts, *flags),
            cwd=REPO,
            env=dict(os.environ, OMP_NUM_THREADS="1"),
            capture_output=True,
            text=True,
            timeout=600,
        )

    assert evaluate().returncode == 0
    first = json.loads((output / RESULTS).read_text())
    resumed = evaluate("--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((output / RESULTS).read_text()) == first
    assert "Start inference on 0 batches" in (output / "log.txt").read_text()

    saved = output / PREDICTIONS / _predicted(output)[0]
    good = saved.read_bytes()
    shape = np.array(Image.open(saved)).shape
    fix = "delete it to predict the image again, or run without --resume"
    for damage, message in [
        (lambda: Image.fromarray(np.full(shape, 21, np.uint8)).save(saved), r"ids 21 to 21\)$"),
        (lambda: Image.fromarray(np.full(shape, 200, np.uint8)).save(saved), r"ids 200 to 200"),
        (lambda: saved.write_text("not a png"), r"cannot be read \(cannot identify image"),
        (lambda: Image.fromarray(np.zeros((5, 7), np.uint8)).save(saved), r"\)' is 5x7; "),
    ]:
        damage()
        failed = evaluate("--resume")
        last = failed.stderr.strip().splitlines()[-1]
        assert failed.returncode == 1 and "Traceback" not in failed.stderr, failed.stderr[-3000:]
        assert re.search(message, last), last
        assert f"its label map {saved}, saved by the run --resume continues: {fix})" in last, last
        saved.write_bytes(good)
    assert evaluate("--resume").returncode == 0  # the files put back: scored again
    assert json.loads((output / RESULTS).read_text()) == first


@pytest.mark.parametrize(
    "text, reason",
    [
        ("MODEL: [\n", r"expected the node content"),
        ("- a\n- b\n", r"'list' object has no attribute 'items'"),
        (b"MODEL:\n  DEVICE: \xff\n", r"can't decode byte 0xff"),
    ],
)
def test_resume_from_a_damaged_config_yaml_is_named(tmp_path, text, reason):
    """The earlier run's config.yaml, damaged since: one line, not yaml's or yacs's traceback."""
    output = tmp_path / "out"
    (output / STATE_DIR).mkdir(parents=True)  # a folder an earlier run claimed and wrote in
    atomic_write_text(output / "config.yaml", "")
    write = (output / "config.yaml").write_bytes if isinstance(text, bytes) else None
    (write or (output / "config.yaml").write_text)(text)
    opts = ["--config-file", SAMPLE_CONFIG, "OUTPUT_DIR", str(output)]
    with pytest.raises(ConfigError, match=rf"--resume: .*config\.yaml, the settings .*{reason}"):
        _validate("--resume", *opts)


def test_resume_into_a_folder_holding_another_projects_config_yaml(tmp_path):
    """A config.yaml no run of ours wrote is the user's: the claim refuses it (it was compared
    with this run's settings, and its differences reported as the earlier run's)."""
    output = tmp_path / "out"
    output.mkdir()
    (output / "config.yaml").write_text("OUTPUT_DIR: elsewhere\nCUDNN_BENCHMARK: true\n")
    opts = ["--config-file", SAMPLE_CONFIG, "OUTPUT_DIR", str(output)]
    with pytest.raises(OutputExistsError, match=r"config\.yaml"):
        _validate("--resume", *opts)
    assert (output / "config.yaml").read_text().startswith("OUTPUT_DIR: elsewhere")
