"""Checks every entry point runs before any work starts, so each class of fault gets the same
named error everywhere: the process count, an output folder that cannot be written, and an
evaluation's claim on its output folder (a lock against a concurrent run into the same folder,
and earlier results moved aside so that an interrupted rerun never leaves them looking current).

The config file and the device are checked by ``cliptrase_d2.config`` (``load_config``,
``check_device``); files are written through ``cliptrase_d2.atomic``.
"""

import errno
import fcntl
import glob
import logging
import os
import shutil
import tempfile

from ..errors import ConfigError, OutputError, OutputNotWritableError

__all__ = [
    "check_num_processes",
    "check_writable_folder",
    "claim_output_dir",
    "LOCK_NAME",
    "PREVIOUS_NAME",
    "RESULT_PATTERNS",
]

logger = logging.getLogger("cliptrase_d2")

LOCK_NAME = ".cliptrase_d2.lock"  # holds the pid of the evaluation writing to the folder
PREVIOUS_NAME = "previous"  # where the earlier results of a folder go before a rerun
RESULT_PATTERNS = ("sem_seg_results_*.json", "predictions")  # what an evaluation writes

_claimed = {}  # real path of a claimed folder -> the open lock file (held until the process ends)


def check_num_processes(num_gpus: int, num_machines: int = 1, machine_rank: int = 0) -> None:
    """--num-gpus, --num-machines and --machine-rank describe at least one process."""
    if num_gpus < 1:
        raise ConfigError(
            f"--num-gpus {num_gpus}: at least one process is needed (--num-gpus 1; without "
            "CUDA, N starts N CPU processes)"
        )
    if num_machines < 1:
        raise ConfigError(f"--num-machines {num_machines}: at least one machine is needed")
    if not 0 <= machine_rank < num_machines:
        raise ConfigError(
            f"--machine-rank {machine_rank} is not in 0..{num_machines - 1} (--num-machines "
            f"{num_machines})"
        )


def check_writable_folder(folder: str, what: str) -> None:
    """Creates ``folder`` if needed and writes a probe file there; ``what`` names it in the
    error (e.g. 'OUTPUT_DIR', '--output')."""
    if not folder:
        raise ConfigError(f"{what} is empty: name the folder for the outputs")
    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder):
            pass
    except OSError as error:
        reason = error.strerror or str(error)
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            raise OutputError(
                f"cannot write to the {what} folder {folder}: {reason}. Free some space or "
                f"choose another {what}"
            ) from None
        raise OutputNotWritableError(
            f"cannot write to the {what} folder {folder}: {reason}. Choose another {what}"
        ) from None


def _lock(folder: str, what: str):
    path = os.path.join(folder, LOCK_NAME)
    handle = open(path, "a+", encoding="utf-8")
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise OutputError(
            f"another evaluation (pid {holder}) is writing to the {what} folder {folder}: wait "
            f"for it to end, or choose another {what}"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def _move_earlier_results(folder: str, results) -> None:
    earlier = sorted(
        {path for pattern in results for path in glob.glob(os.path.join(folder, pattern))}
    )
    if not earlier:
        return
    previous = os.path.join(folder, PREVIOUS_NAME)
    shutil.rmtree(previous, ignore_errors=True)
    os.makedirs(previous)
    for path in earlier:
        os.replace(path, os.path.join(previous, os.path.basename(path)))
    logger.warning(
        "moved the earlier results in %s (%s) to %s: this run's results replace them",
        folder,
        ", ".join(os.path.basename(path) for path in earlier),
        previous,
    )


def claim_output_dir(folder: str, what: str = "OUTPUT_DIR", results=RESULT_PATTERNS) -> None:
    """Before an evaluation writes to ``folder``: checks it is writable, locks it for this
    process (a second evaluation into it is refused with an OutputError naming this pid; the
    lock goes with the process, however it ends), and moves earlier results (glob patterns in
    ``folder``) into ``folder``/previous/. Claiming a folder this process holds does nothing."""
    check_writable_folder(folder, what)
    real = os.path.realpath(folder)
    if real in _claimed:
        return
    handle = _lock(folder, what)
    try:
        _move_earlier_results(folder, results)
    except OSError as error:
        handle.close()
        raise OutputNotWritableError(
            f"cannot move the earlier results in the {what} folder {folder} aside: "
            f"{error.strerror or error}. Choose another {what}"
        ) from None
    _claimed[real] = handle
