"""Checks every entry point runs before any work starts, so each class of fault gets the same
named error everywhere: the process count, an output folder that cannot be written, and an
evaluation's claim on its output folder.

A claimed folder holds a state folder (``STATE_DIR``): a lock against a concurrent run into the
folder, and the records of the files runs wrote there (``cliptrase_d2.atomic`` lists each file
before it takes its name). Only what those records list is ever moved: the user's own files in
the folder are left where they are, and nothing is deleted.

The config file and the device are checked by ``cliptrase_d2.config`` (``load_config``,
``check_device``).
"""

import errno
import fcntl
import glob
import logging
import os
import socket
import tempfile

from ..atomic import (
    RESUMED_RECORD,
    STATE_DIR,
    WRITTEN_RECORD,
    atomic_open,
    is_temporary,
    recorded_files,
    records,
)
from ..errors import ConfigError, OutputError, OutputExistsError, OutputNotWritableError, UserError

__all__ = [
    "check_num_processes",
    "check_writable_folder",
    "claim_output_dir",
    "LOCK_NAME",
    "PREVIOUS_NAME",
    "RESULT_PATTERNS",
]

logger = logging.getLogger("cliptrase_d2")

LOCK_NAME = os.path.join(STATE_DIR, "lock")  # holds "<pid> <host>" of the run writing there
PREVIOUS_NAME = "previous"  # earlier runs' files go to previous/<n>/, n = 1, 2, ...
# what an evaluation writes (glob patterns; a folder stands for the files under it)
RESULT_PATTERNS = ("sem_seg_results_*.json", "predictions")

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
    if not isinstance(folder, (str, os.PathLike)):  # a LazyConfig override's number
        raise ConfigError(f"{what} is {folder!r}, not a folder name: quote it, {what}='{folder}'")
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


def _owner_is_gone(holder) -> bool:
    """Whether the run named in a lock file ("<pid> <host>") ended: its pid is gone on this
    host. What still holds the lock then are processes it forked (loader workers) that
    outlived it."""
    if len(holder) != 2 or holder[1] != socket.gethostname() or not holder[0].isdigit():
        return False
    try:
        os.kill(int(holder[0]), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _lock(folder: str, what: str):
    path = os.path.join(folder, LOCK_NAME)
    for attempt in range(2):
        handle = open(path, "a+", encoding="utf-8")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().split()
            handle.close()
            if attempt == 0 and _owner_is_gone(holder):
                os.remove(path)  # a new lock file: the orphans keep only the old one's lock
                continue
            pid = holder[0] if holder else "unknown"
            where = (
                f" on {holder[1]}" if len(holder) == 2 and holder[1] != socket.gethostname() else ""
            )
            raise OutputError(
                f"another evaluation (pid {pid}{where}) is writing to the {what} folder {folder}: "
                f"wait for it to end, or choose another {what}"
            ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()} {socket.gethostname()}\n")
    handle.flush()
    return handle


def _files_under(folder: str, patterns):
    """Paths (relative to ``folder``) of the files that ``patterns`` match, those in matching
    folders included; the writer's hidden temporaries (an interrupted write's) left out."""
    for pattern in patterns:
        for match in glob.glob(os.path.join(folder, pattern)):
            walked = os.walk(match) if os.path.isdir(match) else [("", [], [match])]
            for parent, _, names in walked:
                for name in names:
                    if not is_temporary(name):
                        yield os.path.relpath(os.path.join(parent, name), folder)


def _move_earlier_results(folder: str, present) -> None:
    """Moves ``present`` (earlier results the records list) and the records into
    previous/<n>/, a new folder."""
    if not present:
        return
    parent = os.path.join(folder, PREVIOUS_NAME)
    taken = (
        [int(name) for name in os.listdir(parent) if name.isdigit()]
        if os.path.isdir(parent)
        else []
    )
    previous = os.path.join(parent, str(max(taken, default=0) + 1))
    os.makedirs(os.path.join(previous, STATE_DIR))
    for path in sorted(present):
        os.makedirs(os.path.dirname(os.path.join(previous, path)), exist_ok=True)
        os.replace(os.path.join(folder, path), os.path.join(previous, path))
    for record in records(folder):
        os.replace(record, os.path.join(previous, STATE_DIR, os.path.basename(record)))
    logger.warning(
        "moved the %d file(s) an earlier run wrote in %s to %s (your own files stay): this "
        "run's results replace them; --resume continues that run instead",
        len(present),
        folder,
        previous,
    )


def _keep_for_resume(folder: str, ours) -> None:
    """Merges the records into one ``resumed`` record: the files this run continues from."""
    written = records(folder, (WRITTEN_RECORD + ".*",))
    with atomic_open(os.path.join(folder, STATE_DIR, RESUMED_RECORD)) as f:
        f.write(b"".join(os.fsencode(path) + b"\n" for path in sorted(ours)))
    for record in written:
        os.remove(record)  # merged into the resumed record just written


def claim_output_dir(
    folder: str,
    what: str = "OUTPUT_DIR",
    results=RESULT_PATTERNS,
    resume: bool = False,
    machine_rank: int = 0,
) -> None:
    """Before an evaluation writes to ``folder``: checks it is writable, locks it for this
    process (a second evaluation into it is refused with an OutputError naming the holder's pid;
    the lock goes with the process, however it ends, and a lock whose process is gone does not
    block), and refuses files where the run writes (glob patterns ``results``) that no run here
    wrote. Then the earlier runs' files there are moved into ``folder``/previous/<n>/, or with
    ``resume`` kept for this run to continue; what the tool wrote elsewhere in the folder (a
    demo's images) stays. Claiming a folder this process holds does
    nothing. Only machine 0, where the global main process runs, claims a folder that the
    machines of a run may share; on the others (``machine_rank`` > 0) it is only checked."""
    check_writable_folder(folder, what)
    if machine_rank != 0:
        return
    real = os.path.realpath(folder)
    if real in _claimed:
        return
    try:
        os.makedirs(os.path.join(folder, STATE_DIR), exist_ok=True)
        handle = _lock(folder, what)
    except OSError as error:
        if isinstance(error, UserError):
            raise
        raise OutputNotWritableError(
            f"cannot lock the {what} folder {folder}: {error.strerror or error}. Choose another "
            f"{what}"
        ) from None
    try:
        ours, present = recorded_files(folder), set(_files_under(folder, results))
        others = sorted(present - ours)
        if others:
            raise OutputExistsError(
                f"the {what} folder {folder} holds {len(others)} file(s) where this run writes "
                f"that no evaluation wrote there ({', '.join(others[:3])}"
                f"{', ...' if len(others) > 3 else ''}): move them away or choose another {what}"
            )
        if resume:
            _keep_for_resume(folder, ours)
        else:
            _move_earlier_results(folder, present)
    except UserError:
        handle.close()
        raise
    except OSError as error:
        handle.close()
        raise OutputNotWritableError(
            f"cannot move the earlier results in the {what} folder {folder} aside: "
            f"{error.strerror or error}. Choose another {what}"
        ) from None
    _claimed[real] = handle
