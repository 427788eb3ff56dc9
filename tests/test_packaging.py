"""A non-editable install carries the configs and the vocabularies, and reaches the configs by
name from any folder (cliptrase_d2.model_zoo)."""

import os
import shutil
import subprocess
import sys
import zipfile

import pytest

from cliptrase_d2.errors import MissingFileError
from cliptrase_d2.model_zoo import config_root, get_config_file

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_NOT_SOURCES = (".git", ".venv*", "build", "datasets", "output", "weights", "*.egg-info")


def test_get_config_file_in_a_checkout():
    assert str(config_root()) == os.path.join(REPO, "configs")
    path = get_config_file("paper/voc21_224.yaml")
    assert path == os.path.join(REPO, "configs", "paper", "voc21_224.yaml")
    assert get_config_file("configs/paper/voc21_224.yaml") == path  # the docs' paths as names


@pytest.mark.parametrize("name", ["paper/no_such.yaml", "/etc/passwd", "paper", "../setup.py"])
def test_unknown_config_name_is_named(name):
    with pytest.raises(MissingFileError, match="paper/voc21_224.yaml"):
        get_config_file(name)


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The package as `pip install .` installs it: a wheel built from this checkout, unpacked."""
    out = tmp_path_factory.mktemp("wheel")
    # a copy of the checkout, so that no build/ folder of an earlier build (with files since
    # deleted) is packaged, and the checkout is left as it was
    source = out / "source"
    top_level = shutil.ignore_patterns(*_NOT_SOURCES)
    shutil.copytree(
        REPO,
        source,
        ignore=lambda folder, names: top_level(folder, names) if folder == REPO else (),
    )
    pip_wheel = ["pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out)]
    subprocess.run(
        [sys.executable, "-m", *pip_wheel, str(source)],
        check=True,
        capture_output=True,
    )
    (wheel,) = [name for name in os.listdir(out) if name.endswith(".whl")]
    site = out / "site"
    with zipfile.ZipFile(out / wheel) as archive:
        archive.extractall(site)
    return site


def test_wheel_holds_every_config(installed):
    wanted = sorted(
        os.path.relpath(os.path.join(folder, name), os.path.join(REPO, "configs"))
        for folder, _, names in os.walk(os.path.join(REPO, "configs"))
        for name in names
        if name.endswith((".yaml", ".py"))
    )
    root = installed / "cliptrase_d2" / "configs"
    got = sorted(
        os.path.relpath(os.path.join(folder, name), root)
        for folder, _, names in os.walk(root)
        for name in names
        if name.endswith((".yaml", ".py"))
    )
    assert got == wanted and len(got) > 80
    assert (installed / "cliptrase_d2" / "data" / "vocabularies.json").is_file()


def test_installed_package_loads_configs_by_name_from_any_folder(installed, tmp_path):
    script = (
        "import cliptrase_d2, os\n"
        "from cliptrase_d2.config import load_config\n"
        "from cliptrase_d2.model_zoo import get_config_file\n"
        "assert cliptrase_d2.__file__.startswith(os.environ['SITE']), cliptrase_d2.__file__\n"
        "path = get_config_file('paper/voc21_336.yaml')\n"
        "assert path.startswith(os.environ['SITE']), path\n"
        "cfg = load_config(path)\n"  # _BASE_ files resolved inside the installed copy
        "print(cfg.MODEL.META_ARCHITECTURE, cfg.MODEL.CLIPTRASE.PAPER_SIZE, cfg.DATASETS.TEST)\n"
    )
    env = dict(os.environ, PYTHONPATH=str(installed), SITE=str(installed), HF_HUB_OFFLINE="1")
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[:2] == ["CLIPtrase", "336"]
    assert "cliptrase_voc21_val" in done.stdout
