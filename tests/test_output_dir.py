"""An output folder's claim (cliptrase_d2.engine.checks.claim_output_dir): only the files runs
wrote there (their records list them) are moved aside, into a new previous/<n>/ each time, and
nothing is deleted; the user's files stay, and a user's file where a run writes is refused
before any work; a lock whose process was killed does not block."""

import fcntl
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from conftest import REPO, claimed_by_another_process
from cliptrase_d2.atomic import (
    STATE_DIR,
    atomic_write_json,
    atomic_write_png,
    atomic_write_text,
    recorded_files,
)
from cliptrase_d2.engine import checks
from cliptrase_d2.engine.checks import LOCK_NAME, claim_output_dir
from cliptrase_d2.errors import OutputError, OutputExistsError

sys.path.insert(0, os.path.join(REPO, "tools"))
import compare  # noqa: E402


def _new_run(folder, **kwargs):
    """Claims ``folder`` as the next run would: this process's earlier claim ended first."""
    handle = checks._claimed.pop(os.path.realpath(folder), None)
    if handle:
        handle.close()
    claim_output_dir(str(folder), **kwargs)


def _run_writing(folder, number):
    """A run of an evaluation: claims, writes its results and two label maps."""
    import numpy as np

    _new_run(folder)
    atomic_write_json(folder / "sem_seg_results_ds.json", {"run": number})
    for name in ("a", "b"):
        atomic_write_png(
            folder / "predictions" / "ds" / f"{name}.png", np.full((2, 2), number, np.uint8)
        )


def _user_files(folder):
    mine = {
        "notes.txt": "mine",
        "predictions_by_hand/a.png": "mine",
        "previous/keep.txt": "mine",
        "old/sem_seg_results_ds.json": "mine",
    }
    for path, text in mine.items():
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        (folder / path).write_text(text)
    return mine


def test_reruns_move_only_their_own_files_and_delete_nothing(tmp_path, project_log):
    folder = tmp_path / "out"
    folder.mkdir()
    mine = _user_files(folder)
    for number in (1, 2, 3):
        _run_writing(folder, number)
    atomic_write_text(folder / "demo" / "coffee.json", "{}")  # the tool's, but no result
    _new_run(folder)
    assert (folder / "demo" / "coffee.json").read_text() == "{}"

    for path, text in mine.items():  # the user's files, untouched
        assert (folder / path).read_text() == text, path
    for number in (1, 2, 3):  # every earlier run kept whole, none replaced
        previous = folder / "previous" / str(number)
        assert (previous / "sem_seg_results_ds.json").read_text() == f'{{\n  "run": {number}\n}}'
        assert sorted(os.listdir(previous / "predictions" / "ds")) == ["a.png", "b.png"]
    assert not (folder / "sem_seg_results_ds.json").exists()
    assert os.listdir(folder / "predictions" / "ds") == []
    moved = [m for m in project_log.messages if m.startswith("moved the 3 file(s) an earlier run")]
    assert len(moved) == 3


def test_a_users_file_where_the_run_writes_is_refused_before_any_work(tmp_path):
    folder = tmp_path / "out"
    _run_writing(folder, 1)
    (folder / "predictions" / "ds" / "c.png").write_bytes(b"mine")
    (folder / "sem_seg_results_other.json").write_text("{}")
    with pytest.raises(OutputExistsError) as refused:
        _new_run(folder)
    message = str(refused.value)
    assert "2 file(s)" in message and "sem_seg_results_other.json" in message
    assert os.path.join("predictions", "ds", "c.png") in message and "move them away" in message
    # nothing moved: not the run's own files, not the user's
    assert not (folder / "previous").exists()
    assert sorted(os.listdir(folder / "predictions" / "ds")) == ["a.png", "b.png", "c.png"]


def test_resume_keeps_the_earlier_files_in_place(tmp_path):
    folder = tmp_path / "out"
    _run_writing(folder, 1)
    _new_run(folder, resume=True)
    assert sorted(os.listdir(folder / "predictions" / "ds")) == ["a.png", "b.png"]
    assert not (folder / "previous").exists()
    resumed = (folder / STATE_DIR / "resumed").read_text().split()
    assert sorted(resumed) == [
        "predictions/ds/a.png",
        "predictions/ds/b.png",
        "sem_seg_results_ds.json",
    ]
    atomic_write_text(folder / "sem_seg_results_ds.json", "{}")  # the resumed run's results
    _new_run(folder)  # a run without --resume: all of it moves aside together
    assert sorted(os.listdir(folder / "previous" / "1" / "predictions" / "ds")) == [
        "a.png",
        "b.png",
    ]
    assert (folder / "previous" / "1" / "sem_seg_results_ds.json").read_text() == "{}"


def test_a_file_name_that_is_not_utf8_is_recorded_and_a_damaged_record_is_no_traceback(tmp_path):
    """A dataset's Latin-1 image name makes a label map whose name is not UTF-8: it ended in a
    UnicodeEncodeError while being recorded, and bytes that are not UTF-8 in a record (damaged,
    or of such a name) in a UnicodeDecodeError on the next claim."""
    import numpy as np

    folder = tmp_path / "out"
    _new_run(folder)
    name = os.fsdecode(b"caf\xe9.png")
    atomic_write_png(folder / "predictions" / "ds" / name, np.zeros((2, 2), np.uint8))
    with open(folder / STATE_DIR / "written.damaged.1", "wb") as record:
        record.write(b"\xff\xfe\x00garbage\n")
    _new_run(folder, resume=True)  # kept for the resumed run, and listed again
    assert os.path.join("predictions", "ds", name) in recorded_files(str(folder))
    _new_run(folder)
    assert os.listdir(folder / "previous" / "1" / "predictions" / "ds") == [name]


KILLED_WRITER = textwrap.dedent(
    """
    import os, sys, time
    import numpy as np
    from cliptrase_d2.atomic import atomic_write_png
    from cliptrase_d2.engine.checks import claim_output_dir
    folder = sys.argv[1]
    claim_output_dir(folder)
    worker = os.fork()
    if worker == 0:  # a loader worker: it holds the lock too, and outlives its parent
        time.sleep(600)
        os._exit(0)
    print(worker, flush=True)
    for index in range(1000):
        path = os.path.join(folder, "predictions", "ds", f"{index}.png")
        atomic_write_png(path, np.zeros((64, 64), np.uint8))
        print(index, flush=True)
    """
)


def test_a_killed_run_s_files_move_aside_and_its_lock_does_not_block(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    mine = _user_files(folder)
    writer = subprocess.Popen(
        [sys.executable, "-c", KILLED_WRITER, str(folder)],
        stdout=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONPATH=REPO),
    )
    worker = None
    try:
        worker = int(writer.stdout.readline())
        for _ in range(5):
            writer.stdout.readline()
        writer.send_signal(signal.SIGKILL)  # killed for real, in the middle of its writes
        writer.wait(timeout=60)
        holder = (folder / LOCK_NAME).read_text().split()
        assert holder[0] == str(writer.pid)
        with open(folder / LOCK_NAME) as lock, pytest.raises(BlockingIOError):
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)  # the orphan holds it
        _new_run(folder)  # the orphan still holds the old lock: its owner is gone, so no refusal
    finally:
        writer.stdout.close()
        if worker:
            os.kill(worker, signal.SIGKILL)
    moved = os.listdir(folder / "previous" / "1" / "predictions" / "ds")
    assert len(moved) >= 5 and not any(".tmp" in name for name in moved)
    for path, text in mine.items():
        assert (folder / path).read_text() == text, path


def test_a_live_run_s_lock_is_refused(tmp_path):
    folder = tmp_path / "out"
    with claimed_by_another_process(folder) as pid:
        with pytest.raises(OutputError, match=rf"another evaluation \(pid {pid}\) is writing"):
            _new_run(folder)


def test_compare_leaves_a_users_folder_named_like_a_head(tmp_path):
    folder = tmp_path / "compare"
    (folder / "clip").mkdir(parents=True)
    (folder / "clip" / "my_notes.txt").write_text("mine")
    for number in (1, 2):
        _new_run(folder, what="--output", results=compare.OUTPUTS)
        atomic_write_text(folder / "compare.md", f"table {number}")
        atomic_write_json(folder / "clip" / "sem_seg_results_ds.json", {"run": number})
    _new_run(folder, what="--output", results=compare.OUTPUTS)
    assert (folder / "clip" / "my_notes.txt").read_text() == "mine"
    assert sorted(os.listdir(folder / "clip")) == ["my_notes.txt"]
    for number in (1, 2):
        assert (folder / "previous" / str(number) / "compare.md").read_text() == f"table {number}"
        assert (folder / "previous" / str(number) / "clip" / "sem_seg_results_ds.json").exists()
    # the user's own results file inside a head's folder is refused, not moved
    (folder / "clip" / "sem_seg_results_ds.json").write_text("mine")
    with pytest.raises(OutputExistsError, match=r"clip/sem_seg_results_ds\.json"):
        _new_run(folder, what="--output", results=compare.OUTPUTS)
    assert (folder / "clip" / "sem_seg_results_ds.json").read_text() == "mine"
