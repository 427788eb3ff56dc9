"""cliptrase_d2.engine.launch and cliptrase_d2.compat on the installed detectron2 (0.6 or main):
CPU processes through detectron2's launch where it supports them, through ours on 0.6; the
compatibility shims applied only where detectron2 needs them."""

import importlib
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

import cliptrase_d2  # noqa: F401  (detectron2 0.6 shims, before detectron2)
from cliptrase_d2 import compat
from cliptrase_d2.engine.launch import LIBRARY_LAUNCHES_ON_CPU, WorkerError, launch
from detectron2.utils import comm

# the module (cliptrase_d2.engine exports the function under the same name)
launch_module = importlib.import_module("cliptrase_d2.engine.launch")

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="tests the CPU (gloo) path")


def _report(folder):
    """Writes what one process sees of its process group to <folder>/<rank>.json."""
    import torch.distributed as dist

    record = {
        "rank": comm.get_rank(),
        "world_size": comm.get_world_size(),
        "local_rank": comm.get_local_rank(),
        "local_size": comm.get_local_size(),
        "backend": dist.get_backend(),
        "threads": torch.get_num_threads(),
        "gathered": comm.all_gather(comm.get_rank() * 10),
    }
    with open(os.path.join(folder, f"{record['rank']}.json"), "w") as f:
        json.dump(record, f)


def _fail_on_rank_one(message):
    if comm.get_rank() == 1:
        raise ValueError(message)
    comm.synchronize()


def test_two_cpu_processes_form_a_gloo_group(tmp_path):
    launch(_report, 2, dist_url="auto", args=(str(tmp_path),))
    records = [json.loads((tmp_path / f"{rank}.json").read_text()) for rank in (0, 1)]
    threads = max(1, (os.cpu_count() or 1) // 2)
    for rank, record in enumerate(records):
        assert record == {
            "rank": rank,
            "world_size": 2,
            "local_rank": rank,
            "local_size": 2,
            "backend": "gloo",
            "threads": threads,
            "gathered": [0, 10],
        }


def test_a_failing_cpu_process_raises_its_error(tmp_path):
    expected = r"^\(process rank 1 of 2\) no such file: x\.png$"
    with pytest.raises(WorkerError, match=expected) as caught:
        launch(_fail_on_rank_one, 2, dist_url="auto", args=("no such file: x.png",))
    assert caught.value.kind == "ValueError"


def test_cpu_processes_go_through_detectron2_launch_where_it_supports_them(monkeypatch):
    """Detectron2 gained CPU (gloo) support in its launch in January 2023, 0.6 has none."""
    calls = []
    monkeypatch.setattr(launch_module, "d2_launch", lambda *a, **k: calls.append((a, k)))
    monkeypatch.setattr(launch_module.mp, "spawn", lambda *a, **k: calls.append("ours"))
    launch(print, 2, dist_url="auto")
    if LIBRARY_LAUNCHES_ON_CPU:
        ((args, kwargs),) = calls
        assert args[1] == 2 and kwargs["dist_url"] == "auto"
    else:
        assert calls == ["ours"]


def test_library_launch_on_cpu_is_detected_from_detectron2():
    import inspect

    d2_launch_module = importlib.import_module("detectron2.engine.launch")
    worker = inspect.getsource(d2_launch_module._distributed_worker)
    asserts_cuda = "cuda is not available" in worker
    assert LIBRARY_LAUNCHES_ON_CPU is not asserts_cuda


def test_auto_url_needs_one_machine():
    with pytest.raises(ValueError, match="tcp://<host>:<port>"):
        launch(print, 2, num_machines=2, dist_url="auto")


# ---------------------------------------------------------------- compat shims

MAIN_TRANSFORM = "def __init__(self, src_rect, output_size, interp=Image.BILINEAR, fill=0):\n"
RELEASE_TRANSFORM = "def __init__(self, src_rect, output_size, interp=Image.LINEAR, fill=0):\n"


def test_removed_names_are_told_by_detectron2s_transform_module():
    assert compat.uses_removed_names(RELEASE_TRANSFORM)
    assert not compat.uses_removed_names(MAIN_TRANSFORM)
    assert not compat.uses_removed_names(None)  # detectron2 absent


def test_shims_match_the_installed_detectron2():
    """On 0.6 the removed names are back (its modules use them); on main nothing is patched."""
    source = compat._detectron2_source(os.path.join("data", "transforms", "transform.py"))
    assert source is not None and "class ResizeTransform" in source
    needed = compat.uses_removed_names(source)
    assert needed == (
        "np.int)" in compat._detectron2_source(os.path.join("evaluation", "sem_seg_evaluation.py"))
    )
    assert hasattr(Image, "LINEAR") == needed  # Pillow >= 10 (pinned) has no LINEAR of its own
    for alias, builtin in compat.NUMPY_ALIASES:
        if needed:  # NumPy 2 has its own np.bool (np.bool_), which 0.6's .astype(np.bool) accepts
            assert alias in np.__dict__, alias
        else:
            assert np.__dict__.get(alias) is not builtin, alias


def test_cpp_stub_only_without_compiled_ops():
    import glob

    import detectron2

    built = glob.glob(os.path.join(os.path.dirname(detectron2.__file__), "_C*.so"))
    ops = importlib.import_module("detectron2._C")
    assert isinstance(ops, compat._MissingCppOps) == (not built)
    if built:  # an official build: its own extension, untouched
        assert ops.__file__ == built[0]
    else:  # the pb1-detectron2 sdist
        with pytest.raises(ImportError, match="without its compiled C\\+\\+/CUDA ops"):
            ops.nms_rotated  # noqa: B018
