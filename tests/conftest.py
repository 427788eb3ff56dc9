"""Shared test fixtures: the authors' reference outputs and the tiny CLIP in $CLIPTRASE_FIXTURES."""

import contextlib
import json
import os
import subprocess
import sys
import textwrap
import warnings
import zipfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=FutureWarning)

import pytest  # noqa: E402
import torch  # noqa: E402

import cliptrase_d2  # noqa: E402,F401  (first: detectron2 0.6 shims, registrations)
from cliptrase_d2.data.datasets import SemSegSplit, register_split  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.environ.get("CLIPTRASE_FIXTURES", os.path.join(REPO, "..", "shared", "fixtures"))
PEERS = os.path.join(FIXTURES, "..", "peers")
TINY_CONFIG = os.path.join(FIXTURES, "tiny_clip.json")
TINY_WEIGHTS = os.path.join(FIXTURES, "tiny_clip_openai.pt")
TRAIN_NET = os.path.join(REPO, "tools", "train_net.py")
SAMPLE_CONFIG = os.path.join(REPO, "configs", "sample", "voc21_standard.yaml")
MANIFEST = os.path.join(FIXTURES, "cases", "manifest.json")

torch.set_num_threads(min(2, torch.get_num_threads()))

# The reference photos as datasets (registered by the tests, not by the package), with their
# ground truth as the authors' code read it: 0..19, 255 for background and void alike. Under the
# paper protocol VOC21 counts 255 as background, as the authors' code did; the three photos
# without VOC labels carry a constant class 1 (the ground truth only affects the metric).
_FIXTURES_HINT = (
    "Set $CLIPTRASE_FIXTURES to the reference fixtures folder (the one holding images/ and gt/)."
)
FIXTURE_SPLITS = (
    SemSegSplit(
        "cliptrase_fixtures_voc21",
        "voc21",
        "images",
        "gt",
        _FIXTURES_HINT,
        image_suffixes=(".png",),
        paper_void_as_background=True,
    ),
    SemSegSplit(
        "cliptrase_fixtures_voc20",
        "voc20",
        "images",
        "gt",
        _FIXTURES_HINT,
        image_suffixes=(".png",),
    ),
    SemSegSplit(
        "cliptrase_fixtures_pc59", "pc59", "images", "gt", _FIXTURES_HINT, image_suffixes=(".png",)
    ),
)
for _split in FIXTURE_SPLITS:
    register_split(_split, FIXTURES)


def skip_outside_ci(message: str):
    """Skips the calling test; under CI (CI=true), which has everything the suite needs, fails
    it."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


def require_fixtures():
    """Skips the calling test when the reference fixtures are absent; under CI (CI=true) that is a
    failure."""
    if os.path.exists(MANIFEST) and os.path.exists(TINY_WEIGHTS):
        return
    skip_outside_ci(
        f"reference fixtures not found at {FIXTURES} "
        "(set CLIPTRASE_FIXTURES to the folder holding tiny_clip.json and cases/)"
    )


@pytest.fixture(scope="session")
def manifest():
    require_fixtures()
    with open(MANIFEST) as f:
        return json.load(f)


@pytest.fixture(scope="session")
def tiny_clip():
    """The fixtures' tiny CLIP in fp32 with its exact weights (eval mode, CPU)."""
    require_fixtures()
    from cliptrase_d2.clip_loading import build_clip

    return build_clip(TINY_CONFIG, TINY_WEIGHTS)


@pytest.fixture(scope="session")
def tiny_tokenizer():
    require_fixtures()
    from cliptrase_d2.clip_loading import get_tokenizer

    return get_tokenizer(TINY_CONFIG)


@pytest.fixture(scope="session")
def text_cache_dir(tmp_path_factory):
    """One text-embedding cache for the whole session (the tiny model's text tower runs once per
    vocabulary)."""
    return str(tmp_path_factory.mktemp("text_cache"))


@pytest.fixture(scope="session")
def tiny_opts(text_cache_dir):
    """Config overrides that select the fixtures' tiny CLIP."""
    require_fixtures()
    return [
        "MODEL.CLIPTRASE.CLIP_MODEL",
        TINY_CONFIG,
        "MODEL.WEIGHTS",
        TINY_WEIGHTS,
        "MODEL.CLIPTRASE.TEXT_CACHE_DIR",
        text_cache_dir,
        "MODEL.DEVICE",
        "cpu",
    ]


def run_config(run):
    """(config file, extra opts) reproducing one manifest run under the paper protocol."""
    config = os.path.join(REPO, "configs", "paper", f"Base-paper-{run['size']}.yaml")
    opts = [
        "MODEL.CLIPTRASE.DBSCAN_EPS",
        str(run["eps"]),
        "MODEL.CLIPTRASE.DBSCAN_MIN_SAMPLES",
        str(run["min_samples"]),
        "MODEL.CLIPTRASE.IMAGE_LOGIT_WEIGHTING",
        str(run["dataset"] == "VOC20"),
    ]
    return config, opts


def manifest_runs():
    """pytest params over the manifest's runs (one placeholder that skips when fixtures are
    absent)."""
    if not os.path.exists(MANIFEST):
        return [pytest.param(None, id="fixtures-missing")]
    with open(MANIFEST) as f:
        runs = json.load(f)["runs"]
    return [
        pytest.param(
            run, id=f"{run['dataset']}_{run['size']}_eps{run['eps']}_min{run['min_samples']}"
        )
        for run in runs
    ]


@pytest.fixture
def project_log(caplog):
    """caplog that also sees the project's loggers after detectron2's setup_logger stopped their
    propagation."""
    import logging

    project = logging.getLogger("cliptrase_d2")
    propagate = project.propagate
    project.propagate = False  # each record reaches caplog once, through this handler
    project.addHandler(caplog.handler)
    yield caplog
    project.removeHandler(caplog.handler)
    project.propagate = propagate


def sample_evaluation(output, tiny_opts, *flags, workers=0):
    """The command line of ``tools/train_net.py --eval-only`` (with ``flags``) on the VOC sample
    with the tiny CLIP, shorter side 224, results in ``output``."""
    return [
        sys.executable,
        TRAIN_NET,
        "--eval-only",
        *flags,
        "--config-file",
        SAMPLE_CONFIG,
        *tiny_opts,
        "OUTPUT_DIR",
        str(output),
        "MODEL.CLIPTRASE.STANDARD_SHORT_SIDE",
        "224",
        "DATALOADER.NUM_WORKERS",
        str(workers),
    ]


_HOLDER = textwrap.dedent(
    """
    import sys
    from cliptrase_d2.engine.checks import claim_output_dir
    claim_output_dir(sys.argv[1])
    print("claimed", flush=True)
    sys.stdin.readline()
    """
)


@contextlib.contextmanager
def claimed_by_another_process(folder):
    """``folder`` claimed as an evaluation's OUTPUT_DIR by another live process (its pid is
    yielded), which ends when the block does."""
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(folder)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONPATH=REPO),
    )
    try:
        assert holder.stdout.readline().strip() == "claimed"
        yield holder.pid
    finally:
        holder.communicate("\n", timeout=60)


class WritesMarker:
    """A pickle payload that runs code when unpickled: it creates ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


def flip_byte_in_first_tensor(path) -> None:
    """Corrupts one byte of the first data/<key> record in place (the zip CRC no longer matches)."""
    with zipfile.ZipFile(path) as archive:
        info = next(i for i in archive.infolist() if "/data/" in i.filename and i.file_size > 0)
    with open(path, "r+b") as f:
        f.seek(info.header_offset + 26)
        name_length = int.from_bytes(f.read(2), "little")
        extra_length = int.from_bytes(f.read(2), "little")
        position = info.header_offset + 30 + name_length + extra_length
        f.seek(position)
        byte = f.read(1)
        f.seek(position)
        f.write(bytes([byte[0] ^ 0xFF]))
