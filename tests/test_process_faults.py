"""tools/train_net.py --eval-only with several processes, faults injected for real: a rank
killed mid-run, SIGINT / SIGTERM to the launcher, machines that never join (two machines that
do join: test_train_net.py). Each run is started in a session of its own, so that everything it
started, re-parented or not, is found in the process table afterwards."""

import os
import re
import signal
import socket
import subprocess
import time

import pytest
from PIL import Image

from conftest import FIXTURES, REPO, require_fixtures, sample_evaluation
from faults import end_session, process_table, running_in_session, wait_until

DATASET = "cliptrase_sample_voc21"


@pytest.fixture(scope="module")
def long_dataset(tmp_path_factory):
    """The sample dataset (found through $DETECTRON2_DATASETS) as 200 small copies of the VOC
    sample photo and its labels: a run is still busy when the fault comes."""
    require_fixtures()
    root = tmp_path_factory.mktemp("datasets")
    image = Image.open(os.path.join(FIXTURES, "images", "vocsample.png")).convert("RGB")
    labels = Image.open(os.path.join(FIXTURES, "gt", "vocsample.png"))
    image, labels = image.resize((64, 64)), labels.resize((64, 64), Image.NEAREST)
    for folder in ("images", "annotations"):
        os.makedirs(root / DATASET / folder)
    for i in range(200):
        image.save(root / DATASET / "images" / f"{i:03d}.png")
        labels.save(root / DATASET / "annotations" / f"{i:03d}.png")
    return str(root)


def _start(root, output, tiny_opts, *argv, workers=1, env=()):
    command = sample_evaluation(output, tiny_opts, *argv, workers=workers)
    environment = dict(os.environ, DETECTRON2_DATASETS=root, OMP_NUM_THREADS="1", **dict(env))
    return subprocess.Popen(
        command,
        cwd=REPO,
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its session id is its pid
        # as from a terminal: a shell ignores SIGINT in the commands it runs in the background
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def _finish(run, timeout=180):
    """(exit status, stderr lines) of ``run``; whatever of its session still runs afterwards is
    killed (the tests assert there is none first)."""
    try:
        _, stderr = run.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        end_session(run.pid)
        pytest.fail(f"the run did not end within {timeout} s")
    return run.returncode, stderr.strip().splitlines()


def _busy(run, num_processes):
    """The ranks' pids once each of them has a loader worker (None until then)."""
    table = [p for p in process_table() if "resource_tracker import main" not in p.command]
    ranks = [run.pid] if num_processes == 1 else [p.pid for p in table if p.ppid == run.pid]
    loading = {p.ppid for p in table if p.ppid in ranks}
    return ranks if len(ranks) == num_processes and loading >= set(ranks) else None


def _nothing_left(run):
    assert wait_until(lambda: not running_in_session(run.pid), 10), running_in_session(run.pid)


def _fault_when_busy(run, num_processes, fault):
    ranks = wait_until(lambda: _busy(run, num_processes) or run.poll() is not None, 300)
    if not isinstance(ranks, list):
        end_session(run.pid)
        pytest.fail(f"the run ended (or stalled) before it was busy: {_finish(run)}")
    start = time.monotonic()
    fault(ranks)
    status, lines = _finish(run)
    return status, lines, time.monotonic() - start, ranks


def test_a_killed_rank_ends_the_run_in_one_line_leaving_no_process(
    long_dataset, tiny_opts, tmp_path
):
    """Before, the launcher ended in a traceback, and the ranks' loader workers and the resource
    tracker stayed alive, re-parented."""
    run = _start(long_dataset, tmp_path / "out", tiny_opts, "--num-gpus", "2", "--dist-url", "auto")
    killed = []

    def kill_a_rank(ranks):
        killed.append(ranks[-1])
        os.kill(ranks[-1], signal.SIGKILL)

    status, lines, took, _ = _fault_when_busy(run, 2, kill_a_rank)
    assert status == 1
    assert re.fullmatch(
        rf"error: \(process rank [01] of 2, pid {killed[0]}\) was killed by SIGKILL \(exit "
        r"status -9\); the run was stopped",
        lines[-1],
    ), lines[-3:]
    assert not any("Traceback" in line for line in lines)
    assert took < 60  # not the 30 minutes of a collective's timeout
    _nothing_left(run)


@pytest.mark.parametrize("sig, num_processes", [("SIGINT", 2), ("SIGTERM", 1)])
def test_a_signal_ends_the_run_in_one_line_leaving_no_process(
    sig, num_processes, long_dataset, tiny_opts, tmp_path
):
    """Ctrl-C (SIGINT) and SIGTERM (a scheduler's cancel), to several processes or one."""
    argv = ("--num-gpus", str(num_processes), "--dist-url", "auto")
    run = _start(long_dataset, tmp_path / "out", tiny_opts, *argv)
    signum = getattr(signal, sig)
    status, lines, took, _ = _fault_when_busy(run, num_processes, lambda _: run.send_signal(signum))
    assert status == 128 + signum
    assert lines[-1] == f"interrupted by {sig}: the run was stopped"
    assert not any("Traceback" in line or "KeyboardInterrupt" in line for line in lines)
    assert took < 60
    _nothing_left(run)


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_machine_that_never_joins_is_named_then_given_up_on(long_dataset, tiny_opts, tmp_path):
    """Machine 0 alone, and machine 1 alone, each with one process of two: each says what it
    waits for (machine, rank, address) within a minute (after 10 s), and gives up at the limit
    with one line; Detectron2 waited 30 minutes in silence, then raised."""
    limit = {"CLIPTRASE_D2_DIST_WAIT": "14"}
    urls = [f"tcp://127.0.0.1:{_free_port()}", f"tcp://127.0.0.1:{_free_port()}"]
    runs = [
        _start(
            long_dataset,
            tmp_path / f"out{machine}",
            tiny_opts,
            *("--num-gpus", "1", "--num-machines", "2", "--machine-rank", str(machine)),
            *("--dist-url", urls[machine]),
            env=limit,
        )
        for machine in (0, 1)
    ]
    (status0, lines0), (status1, lines1) = [_finish(run) for run in runs]
    waits = {
        0: f"machine 0 is waiting for machine 1 (rank 1) at {urls[0]} (",
        1: f"machine 1 is waiting for machine 0 (rank 0) to listen at {urls[1]} (",
    }
    for machine, status, lines in ((0, status0, lines0), (1, status1, lines1)):
        assert status == 1
        assert any(line.startswith(waits[machine]) for line in lines), lines[-3:]
    assert lines0[-1] == (
        f"error: (process rank 0 of 2) gave up after 14 s waiting for machine 1 (rank 1) at "
        f"{urls[0]}: start every machine's command with the same --num-machines, --num-gpus and "
        "--dist-url, or wait longer ($CLIPTRASE_D2_DIST_WAIT, seconds)"
    )
    assert lines1[-1].startswith(
        "error: (process rank 1 of 2) gave up after 14 s waiting for machine 0 (rank 0) to "
        f"listen at {urls[1]}: "
    )
    for run in runs:
        _nothing_left(run)
