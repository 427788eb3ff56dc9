"""Every entry point (train_net, lazyconfig_train_net, compare, demo, web_demo) checks before any
work and fails with one named error: a config file missing or not YAML, an unsupported device,
no process, an output folder that cannot be written, a full disk. Outputs are all-or-nothing
per input, an evaluation claims its OUTPUT_DIR (a lock; a user's file where it writes refused),
and the demo can skip unreadable images."""

import errno
import json
import logging
import os
import re
import subprocess
import sys

import pytest
from PIL import Image

from conftest import FIXTURES, REPO, claimed_by_another_process, require_fixtures
from faults import full_disk
from cliptrase_d2.atomic import atomic_open, atomic_paths, atomic_write_text
from cliptrase_d2.config import check_device, load_config
from cliptrase_d2.engine import launch
from cliptrase_d2.engine.checks import claim_output_dir
from cliptrase_d2.engine.trainer import validate
from cliptrase_d2.errors import (
    ConfigError,
    MissingFileError,
    OutputError,
    OutputExistsError,
    OutputNotWritableError,
    UserError,
)
from detectron2.engine import default_argument_parser

sys.path.insert(0, os.path.join(REPO, "tools"))
import compare  # noqa: E402
import demo  # noqa: E402
import lazyconfig_train_net  # noqa: E402
import web_demo  # noqa: E402

SAMPLE_CONFIG = os.path.join(REPO, "configs", "sample", "voc21_standard.yaml")
LAZY_CONFIG = os.path.join(REPO, "configs", "lazy", "sample_voc21_standard.py")
COFFEE = os.path.join(FIXTURES, "images", "coffee.png")


# ---- the entry points, each called as its command line would, up to the start of the work ----


def run_train_net(config_file, opts=(), num_gpus=1, output=None):
    argv = ["--eval-only", "--num-gpus", str(num_gpus), "--config-file", config_file, *opts]
    return validate(default_argument_parser().parse_args(argv + _output("OUTPUT_DIR", output)))


def run_lazy(config_file, opts=(), num_gpus=1, output=None):
    overrides = [f"{key}={value}" for key, value in zip(opts[::2], opts[1::2])]
    if output:
        overrides.append(f"train.output_dir={output}")
    argv = ["--eval-only", "--num-gpus", str(num_gpus), "--config-file", config_file, *overrides]
    return lazyconfig_train_net.validate(default_argument_parser().parse_args(argv))


def run_compare(config_file, opts=(), num_gpus=1, output=None):
    argv = ["--config-file", config_file, "--heads", "cliptrase", "--num-gpus", str(num_gpus)]
    argv += ["--datasets", "cliptrase_sample_voc21"]
    argv += ["--output", str(output or "output/compare"), *opts]
    return compare.validate(compare.get_parser().parse_args(argv))


def run_demo(config_file, opts=(), output=None):
    argv = ["--input", COFFEE, "--output", str(output or "/nonexistent/never/made")]
    return demo.main(argv + ["--config-file", config_file, "--opts", *opts])


def run_web_demo(config_file, opts=(), output=None):  # the web demo keeps no output folder
    return web_demo.main(["--config-file", config_file, "--opts", *opts])


def _output(key, output):
    return [key, str(output)] if output else []


YAML_ENTRY_POINTS = {
    "train_net": run_train_net,
    "compare": run_compare,
    "demo": run_demo,
    "web_demo": run_web_demo,
}


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture
def log_messages():
    """Messages logged under 'cliptrase_d2' (its logger need not propagate to the root)."""
    handler, logger = _Records(), logging.getLogger("cliptrase_d2")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.DEBUG)
    yield handler.messages
    logger.removeHandler(handler)
    logger.setLevel(level)


@pytest.fixture
def bad_configs(tmp_path):
    """name -> (config file, the error class, a regex the message must match)."""
    files = {
        "not_yaml.yaml": "MODEL:\n  DEVICE: [cpu\n",
        "a_list.yaml": "- MODEL\n- DEVICE\n",
        "empty.yaml": "# settings to come\n",
        "bad_base.yaml": "_BASE_: missing_base.yaml\n",
        "bad_value.yaml": "MODEL:\n  CLIPTRASE:\n    PAPER_SIZE: large\n",
    }
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "configs").mkdir()
    return {
        "missing": (str(tmp_path / "nope.yaml"), MissingFileError, r"nope\.yaml does not exist"),
        "folder": (
            str(tmp_path / "configs"),
            MissingFileError,
            r"configs is a folder, not a file: .*e\.g\. configs/paper/voc21_224\.yaml",
        ),
        "not_yaml": (
            str(tmp_path / "not_yaml.yaml"),
            ConfigError,
            r"not_yaml\.yaml is not valid YAML .*line 3",
        ),
        "lazy": (
            os.path.join(REPO, "configs", "lazy", "common.py"),
            ConfigError,
            r"common\.py is a Python LazyConfig: evaluate it with tools/lazyconfig_train_net\.py",
        ),
        "a_list": (str(tmp_path / "a_list.yaml"), ConfigError, r"a_list\.yaml holds a list"),
        "empty": (str(tmp_path / "empty.yaml"), ConfigError, r"empty\.yaml holds nothing"),
        "bad_base": (
            str(tmp_path / "bad_base.yaml"),
            MissingFileError,
            r"bad_base\.yaml.*missing_base\.yaml.*does not exist",
        ),
        "bad_value": (
            str(tmp_path / "bad_value.yaml"),
            ConfigError,
            r"bad_value\.yaml.*PAPER_SIZE",
        ),
    }


@pytest.mark.parametrize("entry", sorted(YAML_ENTRY_POINTS))
@pytest.mark.parametrize(
    "fault", ["missing", "folder", "not_yaml", "lazy", "a_list", "empty", "bad_base", "bad_value"]
)
def test_bad_config_file_is_one_named_error_everywhere(entry, fault, bad_configs, tmp_path):
    config_file, kind, message = bad_configs[fault]
    with pytest.raises(kind, match=message):
        YAML_ENTRY_POINTS[entry](config_file, output=tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing made before the check


def test_lazy_config_missing_or_not_python(tmp_path):
    with pytest.raises(MissingFileError, match=r"nope\.py does not exist"):
        run_lazy(str(tmp_path / "nope.py"))
    broken = tmp_path / "broken.py"
    broken.write_text("model = dict(\n")
    with pytest.raises(ConfigError, match=r"broken\.py is not valid Python \(line"):
        run_lazy(str(broken))


@pytest.mark.parametrize("device", ["tpu", "xla", "cuda:x", "", "cpu:0:1"])
@pytest.mark.parametrize("entry", sorted(YAML_ENTRY_POINTS))
def test_unsupported_device_is_named(entry, device, tmp_path):
    with pytest.raises(ConfigError, match=r"MODEL\.DEVICE=.*set MODEL\.DEVICE to cpu or cuda"):
        YAML_ENTRY_POINTS[entry](SAMPLE_CONFIG, ["MODEL.DEVICE", device], output=tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_unsupported_device_lazy(tmp_path):
    with pytest.raises(ConfigError, match=r"train\.device='tpu'.*set train\.device to cpu"):
        run_lazy(LAZY_CONFIG, ["train.device", "tpu"], output=tmp_path / "o")


@pytest.mark.parametrize("device", ["cpu", "cuda", "cuda:0", "cuda:7"])
def test_supported_devices_pass_and_cuda_falls_back_without_gpus(device):
    import torch

    if torch.cuda.is_available() and device != "cpu":
        pytest.skip("the fallback is for machines without CUDA")
    check_device(device)
    assert load_config(SAMPLE_CONFIG, ["MODEL.DEVICE", device]).MODEL.DEVICE == "cpu"


def test_a_gpu_number_beyond_the_machine_is_named(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    check_device("cuda:1")
    with pytest.raises(ConfigError, match=r"MODEL\.DEVICE='cuda:2' but this machine has 2 GPU"):
        check_device("cuda:2")


@pytest.mark.parametrize("num_gpus", [0, -1])
@pytest.mark.parametrize("entry", [run_train_net, run_lazy, run_compare])
def test_no_process_is_an_error(entry, num_gpus, tmp_path):
    config = LAZY_CONFIG if entry is run_lazy else SAMPLE_CONFIG
    with pytest.raises(ConfigError, match=f"--num-gpus {num_gpus}: at least one process"):
        entry(config, num_gpus=num_gpus, output=tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_launch_refuses_no_process_and_bad_machine_rank():
    calls = []
    with pytest.raises(ConfigError, match="--num-gpus 0"):
        launch(calls.append, 0, args=(1,))
    with pytest.raises(ConfigError, match="--machine-rank 2 is not in 0..1"):
        launch(calls.append, 1, num_machines=2, machine_rank=2, args=(1,))
    assert calls == []


@pytest.mark.parametrize(
    "entry, key",
    [
        (run_train_net, "OUTPUT_DIR"),
        (run_lazy, "train.output_dir"),
        (run_compare, "--output"),
        (run_demo, "--output"),
    ],
)
def test_output_folder_that_cannot_be_made_is_named(entry, key, tiny_opts, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    config = LAZY_CONFIG if entry is run_lazy else SAMPLE_CONFIG
    opts = list(tiny_opts) if entry is run_demo else []
    with pytest.raises(OutputNotWritableError, match=f"cannot write to the {key} folder .*a_file"):
        entry(config, opts, output=blocker / "out")
    assert blocker.read_text() == "not a folder"


def test_command_line_errors_are_one_line(tmp_path):
    """As the user sees them: exit status 1, one line 'error: ...', no traceback."""
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    cases = [
        ("train_net.py", ["--eval-only", "--config-file", str(tmp_path / "x.yaml")], "x.yaml"),
        ("train_net.py", ["--eval-only", "--num-gpus", "0", "--config-file", SAMPLE_CONFIG], "0"),
        (
            "train_net.py",
            ["--eval-only", "--config-file", SAMPLE_CONFIG, "OUTPUT_DIR", str(blocker / "o")],
            "OUTPUT_DIR",
        ),
        ("demo.py", ["--input", COFFEE, "--output", "o", "--opts", "MODEL.DEVICE", "tpu"], "tpu"),
        (
            "compare.py",
            ["--config-file", str(tmp_path / "x.yaml"), "--datasets", "cliptrase_sample_voc21"],
            "x.yaml",
        ),
    ]
    datasets = dict(os.environ, DETECTRON2_DATASETS=os.path.join(REPO, "datasets"))  # the sample
    for tool, argv, named in cases:
        completed = subprocess.run(
            [sys.executable, os.path.join(REPO, "tools", tool), *argv],
            cwd=tmp_path,
            env=datasets,
            capture_output=True,
            text=True,
            timeout=300,
        )
        lines = completed.stderr.strip().splitlines()
        assert completed.returncode == 1, completed.stderr[-2000:]
        assert lines[-1].startswith("error: ") and named in lines[-1], lines[-1]
        assert "Traceback" not in completed.stderr, completed.stderr[-2000:]


# ---- full disk ----


def test_full_disk_is_an_output_error_and_leaves_nothing(tmp_path):
    folder = tmp_path / "disk"
    with full_disk(folder, free_bytes=0):
        with pytest.raises(OutputError, match=r"cannot write .*big\.bin: No space left on device"):
            with atomic_open(folder / "big.bin") as f:
                for _ in range(64):
                    f.write(b"x" * 65536)
        assert [n for n in os.listdir(folder) if n != ".ballast"] == []


@pytest.mark.parametrize("use_tmpfs", [True, False])
def test_demo_on_a_full_disk_writes_no_partial_set(use_tmpfs, tiny_opts, tmp_path):
    """Room for the small label map, not for the overlay: none of the image's files stay."""
    require_fixtures()
    output = tmp_path / "disk"
    with full_disk(output, free_bytes=6000, use_tmpfs=use_tmpfs) as kind:
        with pytest.raises(OutputError, match="No space left on device.*another output folder"):
            demo.main(
                ["--input", COFFEE, "--output", str(output), "--vocabulary", "cup, table"]
                + ["--opts", *tiny_opts]
            )
        left = sorted(name for name in os.listdir(output) if name != ".ballast")
    assert left == [], f"{kind}: {left}"


def test_evaluation_on_a_full_disk_is_an_output_error(tiny_opts, tmp_path):
    require_fixtures()
    from cliptrase_d2.engine.trainer import Trainer

    output = tmp_path / "disk"
    cfg = load_config(
        os.path.join(REPO, "configs", "paper", "Base-paper-224.yaml"),
        list(tiny_opts)
        + ["MODEL.CLIPTRASE.VOCABULARY", "voc21", "DATASETS.TEST", "('cliptrase_fixtures_voc21',)"]
        + ["OUTPUT_DIR", str(output), "DATALOADER.NUM_WORKERS", "0"],
    )
    model = Trainer.build_model(cfg)
    with full_disk(output, free_bytes=0):
        with pytest.raises(OutputError, match=r"sem_seg_results_cliptrase_fixtures_voc21\.json"):
            Trainer.test(cfg, model)
        assert not (output / "sem_seg_results_cliptrase_fixtures_voc21.json").exists()


# ---- all files of an input, or none ----


def test_group_write_places_all_or_none(tmp_path, monkeypatch):
    targets = [tmp_path / "a.png", tmp_path / "b.json", tmp_path / "c.png"]
    with atomic_paths(targets) as temporaries:
        for temporary, text in zip(temporaries, "abc"):
            with open(temporary, "w") as f:
                f.write(text)
    assert [t.read_text() for t in targets] == ["a", "b", "c"]

    # a failure inside the block: the earlier files stay as they were, no temporaries
    with pytest.raises(RuntimeError):
        with atomic_paths(targets) as temporaries:
            with open(temporaries[0], "w") as f:
                f.write("new")
            raise RuntimeError("encoder broke")
    assert [t.read_text() for t in targets] == ["a", "b", "c"]
    assert sorted(os.listdir(tmp_path)) == ["a.png", "b.json", "c.png"]

    # a folder where the second file goes: refused before any move
    fresh = [tmp_path / "x.png", tmp_path / "y.json"]
    fresh[1].mkdir()
    with pytest.raises(OutputExistsError, match=r"y\.json: a folder stands there"):
        with atomic_paths(fresh) as temporaries:
            for temporary in temporaries:
                open(temporary, "w").close()
    assert not fresh[0].exists() and fresh[1].is_dir()

    # a file where a folder of the path goes (makedirs: EEXIST, or ENOTDIR one level deeper)
    for folder in (fresh[0], fresh[0] / "sub"):
        fresh[0].write_text("mine")
        with pytest.raises(OutputExistsError, match=rf"make the folder {folder}: a file stands"):
            atomic_write_text(str(folder / "labels.txt"), "x")
        assert fresh[0].read_text() == "mine"

    # a move that fails half-way: the files already moved are taken back out
    fresh[1].rmdir()
    real_replace, moves = os.replace, []

    def failing_replace(source, target):
        moves.append(target)
        if len(moves) == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_replace(source, target)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OutputError, match="No space left"):
        with atomic_paths(fresh) as temporaries:
            for temporary in temporaries:
                open(temporary, "w").close()
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == ["a.png", "b.json", "c.png"]

    # a path that names no file; a name at the filesystem's limit (its temporary fits too), and
    # one past it
    for nameless in ("", str(tmp_path) + os.sep):
        with pytest.raises(OutputError, match=f"cannot write '{re.escape(nameless)}': it names no"):
            atomic_write_text(nameless, "x")
    longest = tmp_path / ("n" * 250 + ".png")
    with atomic_paths([longest]) as (temporary,):
        atomic_write_text(temporary, "x")  # a temporary's own temporary
    assert longest.read_text() == "x"
    with pytest.raises(OutputError, match=r"n\.png: its name is too long for this filesystem"):
        atomic_write_text(str(tmp_path / ("n" * 256 + ".png")), "x")
    assert sorted(os.listdir(tmp_path)) == ["a.png", "b.json", "c.png", longest.name]


@pytest.mark.parametrize("protocol", [[], ["--protocol", "paper"]])
def test_an_option_without_value_is_named(protocol, tmp_path):
    """The demo adds its own KEY VALUE pairs after the user's --opts: the error names the user's
    last one, not the demo's."""
    argv = ["--input", COFFEE, "--output", str(tmp_path / "out"), *protocol]
    with pytest.raises(ValueError, match="'MODEL.WEIGHTS' \\(the last of 1\\) has no value"):
        demo.main([*argv, "--cache-dir", str(tmp_path / "cache"), "--opts", "MODEL.WEIGHTS"])
    assert not (tmp_path / "out").exists()


def test_demo_refuses_a_folder_where_an_output_goes_even_with_overwrite(tiny_opts, tmp_path):
    require_fixtures()
    output = tmp_path / "out"
    (output / "coffee.json").mkdir(parents=True)
    with pytest.raises(OutputExistsError, match=r"a folder stands where .*coffee\.json"):
        demo.main(["--overwrite", "--input", COFFEE, "--output", str(output), "--opts", *tiny_opts])
    assert os.listdir(output) == ["coffee.json"]


# ---- unreadable inputs ----


@pytest.fixture
def folder_with_bad_images(tmp_path):
    require_fixtures()
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.open(COFFEE).resize((64, 48)).save(photos / "a_good.png")
    (photos / "b_garbage.png").write_bytes(b"not an image at all")
    good = (photos / "a_good.png").read_bytes()
    (photos / "c_truncated.png").write_bytes(good[: len(good) // 2])
    Image.open(COFFEE).resize((32, 32)).save(photos / "d_good.jpg")
    jpeg = (photos / "d_good.jpg").read_bytes()
    (photos / "e_truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])  # header fine, data cut
    return photos


def test_unreadable_input_stops_before_any_work(folder_with_bad_images, tiny_opts, tmp_path):
    output = tmp_path / "out"
    with pytest.raises(UserError, match=r"b_garbage\.png.*--skip-bad-inputs"):
        demo.main(
            ["--input", str(folder_with_bad_images), "--output", str(output)]
            + ["--opts", *tiny_opts]
        )
    assert not output.exists()


def test_skip_bad_inputs_reports_and_skips(
    folder_with_bad_images, tiny_opts, tmp_path, log_messages
):
    output = tmp_path / "out"
    Image.new("RGB", (8, 8)).save(folder_with_bad_images / "f_tiny.png")  # the model refuses it
    argv = ["--skip-bad-inputs", "--input", str(folder_with_bad_images), "--output", str(output)]
    argv += ["--batch-size", "2", "--vocabulary", "cup, table", "--opts", *tiny_opts]
    assert demo.main(argv) == 0
    written = sorted(os.listdir(output))
    assert written == sorted(
        f"{stem}{suffix}"
        for stem in ("a_good", "d_good")
        for suffix in ("_labels.png", ".png", ".json")
    )
    assert json.loads((output / "a_good.json").read_text())["width"] == 64
    skipped = [message for message in log_messages if message.startswith("skipped ")]
    for name in ("b_garbage.png", "c_truncated.png", "e_truncated.jpg", "f_tiny.png"):
        assert any(name in message for message in skipped), (name, skipped)
    # the last line counts every skipped input, not calling the refused one unreadable
    assert any("skipped 4 input(s) of 6" in message for message in skipped), skipped


# ---- an evaluation's OUTPUT_DIR: a user's file where it writes refused, concurrent runs refused
# (the claim itself: tests/test_output_dir.py)


def test_a_users_results_file_is_refused_through_train_net(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "sem_seg_results_cliptrase_sample_voc21.json").write_text("{}")
    with pytest.raises(OutputExistsError, match="sem_seg_results_cliptrase_sample_voc21.json"):
        run_train_net(SAMPLE_CONFIG, output=folder)
    assert (folder / "sem_seg_results_cliptrase_sample_voc21.json").read_text() == "{}"
    assert not (folder / "previous").exists()


def test_a_second_evaluation_into_the_same_folder_is_refused(tmp_path):
    folder = tmp_path / "out"
    with claimed_by_another_process(folder) as pid:
        for entry, config, key in [
            (run_train_net, SAMPLE_CONFIG, "OUTPUT_DIR"),
            (run_lazy, LAZY_CONFIG, "train.output_dir"),
            (run_compare, SAMPLE_CONFIG, "--output"),
        ]:
            refused = f"another evaluation \\(pid {pid}\\) is writing to the {key}"
            with pytest.raises(OutputError, match=refused):
                entry(config, output=folder)
    # the lock ends with its process, however it ends: the folder can be claimed again
    claim_output_dir(str(folder))


def test_web_demo_on_a_full_disk_is_an_error_shown_on_the_page(tiny_opts, tmp_path, monkeypatch):
    """A UserError: the page shows it as one line (build_page turns the family into gr.Error)."""
    models = web_demo.Models("", [*tiny_opts, "MODEL.CLIPTRASE.STANDARD_SHORT_SIDE", "224"])
    outputs = web_demo.Outputs()
    folder = tmp_path / "disk"
    monkeypatch.setattr(outputs, "new_folder", lambda: str(folder))
    with full_disk(folder, free_bytes=0):
        with pytest.raises(OutputError, match=r"coffee_labels\.png: No space left on device"):
            web_demo.segment_request(
                models,
                web_demo.Limits(),
                outputs,
                COFFEE,
                "cup, table",
                "",
                "cliptrase",
                "standard",
            )
        assert [name for name in os.listdir(folder) if name != ".ballast"] == []
