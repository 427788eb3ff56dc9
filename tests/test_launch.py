"""cliptrase_d2.engine.launch and cliptrase_d2.compat on the installed detectron2 (0.6 or main):
CPU processes in a gloo group, what ends a run (a failing process, a killed loader worker) and
the checks of --dist-url before any work; the compatibility shims applied only where detectron2
needs them. The command line's faults (a killed rank, signals, machines that never join) are in
test_process_faults.py."""

import argparse
import contextlib
import importlib
import json
import os
import re
import signal
import socket
import time

import numpy as np
import pytest
import torch
from PIL import Image

import cliptrase_d2  # noqa: F401  (detectron2 0.6 shims, before detectron2)
from cliptrase_d2 import compat
from cliptrase_d2.engine.launch import (
    WAIT_ENV,
    LostProcess,
    WorkerError,
    check_launch,
    launch,
    run_launched,
)
from cliptrase_d2.errors import ConfigError
from detectron2.utils import comm
from faults import process_table

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


class _Items(torch.utils.data.Dataset):
    """Tensors (sent from the loader worker through shared memory, as images are); on rank 1 the
    worker writes its pid to <folder>/worker.pid at item 3 and kills itself."""

    def __init__(self, folder, dies):
        self.folder, self.dies = folder, dies

    def __len__(self):
        return 10_000

    def __getitem__(self, index):
        if self.dies and index == 3:
            with open(os.path.join(self.folder, "worker.pid"), "w") as f:
                f.write(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)
        return torch.full((64, 64), float(index))


def _load_while_rank_one_s_worker_dies(folder):
    with open(os.path.join(folder, f"rank{comm.get_rank()}.pid"), "w") as f:
        f.write(str(os.getpid()))
    items = _Items(folder, dies=comm.get_rank() == 1)
    for _ in torch.utils.data.DataLoader(items, batch_size=1, num_workers=1):
        time.sleep(0.01)


def test_a_killed_loader_worker_ends_the_run_with_one_line_and_no_process_left(tmp_path, capfd):
    """Whether torch notices the death itself or a transfer from the dead worker fails first,
    the run ends with the rank and the worker's pid, no traceback, and neither rank, nor any
    loader worker, is left running."""
    with pytest.raises(WorkerError) as caught:
        launch(_load_while_rank_one_s_worker_dies, 2, dist_url="auto", args=(str(tmp_path),))
    worker = (tmp_path / "worker.pid").read_text()
    message = str(caught.value)
    assert re.fullmatch(
        rf"\(process rank 1 of 2\) (a loader worker \(pid {worker}\) was killed by SIGKILL|"
        rf"DataLoader worker \(pid(\(s\))? {worker}\) .+)",
        message,
    ), message
    capfd.readouterr()
    assert caught.value.exit_message() == f"error: {message}"
    assert capfd.readouterr().err == ""  # no traceback for a lost process
    groups = {int((tmp_path / f"rank{r}.pid").read_text()) for r in (0, 1)}
    assert not [p for p in process_table() if p.pgid in groups and p.state != "Z"]


# gloo's words (torch 2.14) in the evaluator's gather of machine 1, when machine 0 was stopped
GLOO_LOST_PEER = (
    "[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:561] Connection closed by "
    "peer [127.0.0.1]:18834. This is typically caused by a remote worker crashing. Check the logs "
    "of the remote worker before reporting an error. GLHF! \U0001f3d6\ufe0f"
)


def _gather_without_the_peer():
    raise RuntimeError(GLOO_LOST_PEER)


def test_a_collective_that_lost_its_peer_is_a_lost_process():
    expected = (
        r"another process of the run ended \(Connection closed by peer \[127\.0\.0\.1\]:18834\)"
    )
    with pytest.raises(LostProcess, match=rf"^{expected}: see its log$"):
        launch(_gather_without_the_peer, 1)


# ------------------------------------------------------------- --dist-url, before any work


@pytest.mark.parametrize(
    "url",
    [
        "127.0.0.1:29500",
        "tcp://127.0.0.1",
        "tcp://:29500",
        "tcp://127.0.0.1:port",
        "tcp://127.0.0.1:70000",
        "tcp://[::1:29500",
        "http://127.0.0.1:29500",
        "env://",
        "file:///tmp/rendezvous",
    ],
)
def test_a_malformed_dist_url_is_refused(url):
    with pytest.raises(ConfigError, match=re.escape(f"--dist-url {url}: give tcp://<host>:<port>")):
        check_launch(2, 1, 0, url)


def test_a_busy_port_is_refused_on_machine_0_only():
    with socket.socket() as taken:  # another program listening there
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        url = f"tcp://127.0.0.1:{taken.getsockname()[1]}"
        with pytest.raises(
            ConfigError, match=r"port \d+ is in use on this machine .*dist-url auto$"
        ):
            check_launch(2, 1, 0, url)
        with pytest.raises(ConfigError, match="in use on this machine .*choose a free port$"):
            check_launch(1, 2, 0, url)
        assert check_launch(1, 2, 1, url) == url  # machine 1 connects there


def test_more_processes_than_cpus_are_refused_without_cuda(monkeypatch):
    """--num-gpus 100000 on a machine without CUDA started CPU processes until the machine gave
    out, without a word; as with CUDA and its GPUs, the count is bounded by the CPUs."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    with pytest.raises(ConfigError, match="--num-gpus 5: without CUDA .* has 4 CPUs: give at"):
        check_launch(5, 1, 0, "auto")
    assert check_launch(4, 1, 0, "auto").startswith("tcp://127.0.0.1:")


def test_an_unknown_host_is_refused():
    with pytest.raises(ConfigError, match="unknown host no-such-host.invalid"):
        check_launch(1, 2, 1, "tcp://no-such-host.invalid:29500")


def test_auto_is_a_free_local_port_on_one_machine_only():
    url = check_launch(2, 1, 0, "auto")
    port = int(re.fullmatch(r"tcp://127\.0\.0\.1:(\d+)", url).group(1))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
    with pytest.raises(ValueError, match="tcp://<host>:<port>"):
        check_launch(2, 2, 0, "auto")


def test_one_process_needs_no_dist_url():
    assert check_launch(1, 1, 0, "not a url") == "not a url"


@pytest.mark.parametrize("value", ["0", "-5", "ten", "nan", "", "inf", "1e400"])
def test_the_wait_limit_must_be_seconds(value, monkeypatch):
    monkeypatch.setenv(WAIT_ENV, value)
    with pytest.raises(ConfigError, match=f"{WAIT_ENV}={value}: give the seconds"):
        check_launch(2, 1, 0, "auto")
    monkeypatch.setenv(WAIT_ENV, "2.5")
    check_launch(2, 1, 0, "auto")


def test_another_program_at_the_dist_url_is_named_within_the_wait(monkeypatch):
    """Machine 1 given the port of another program on machine 0 (an SSH server): the store's
    ping failed only after the run's timeout (30 minutes), in torch's raw DistNetworkError."""
    import datetime
    import threading

    monkeypatch.setenv(WAIT_ENV, "2")
    server = socket.create_server(("127.0.0.1", 0))

    def ssh_server():  # its greeting to every connection, as an SSH server
        with contextlib.suppress(OSError):
            while True:
                server.accept()[0].sendall(b"SSH-2.0-OpenSSH_9.6\r\n")

    threading.Thread(target=ssh_server, daemon=True).start()
    url = f"tcp://127.0.0.1:{server.getsockname()[1]}"
    launch_module = importlib.import_module("cliptrase_d2.engine.launch")
    started = time.monotonic()
    with pytest.raises(ConfigError, match=re.escape(f"--dist-url {url}: cannot join machine 0")):
        launch_module._rendezvous(url, 1, 2, 1, datetime.timedelta(seconds=30))
    assert time.monotonic() - started < 15
    server.close()


def test_dist_url_is_checked_before_the_config_and_output_folder():
    calls = []
    args = argparse.Namespace(num_gpus=2, num_machines=1, machine_rank=0, dist_url="tcp://x")
    with pytest.raises(SystemExit) as caught:
        run_launched(calls.append, args, calls.append)
    assert caught.value.code.startswith("error: --dist-url tcp://x: give tcp://<host>:<port>")
    assert calls == []


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
