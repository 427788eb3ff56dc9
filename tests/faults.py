"""Fault injection for the tests: a disk that fills up, and the process table to see what a
killed process left behind.

``full_disk(folder, free_bytes)`` makes ``folder`` a place where only about ``free_bytes`` more
can be written. Running as root it mounts a small tmpfs there and fills it with a ballast file
(a real full disk: every writer, PIL and json included, meets ENOSPC); otherwise it patches the
project's one file opener (``cliptrase_d2.atomic``) so that writes under ``folder`` raise
``OSError(ENOSPC)`` once ``free_bytes`` were written.
"""

import errno
import os
import signal
import subprocess
import time
from contextlib import contextmanager
from typing import NamedTuple
from unittest import mock

import cliptrase_d2.atomic as atomic

TMPFS_BYTES = 1 << 20


def _mount_tmpfs(folder: str) -> bool:
    if os.geteuid() != 0:
        return False
    completed = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_BYTES}", "tmpfs", folder],
        capture_output=True,
    )
    return completed.returncode == 0


def _fill(folder: str, free_bytes: int) -> None:
    """Writes a ballast file so that about ``free_bytes`` stay free (tmpfs counts 4 KiB pages)."""
    stat = os.statvfs(folder)
    ballast = stat.f_bavail * stat.f_frsize - free_bytes
    with open(os.path.join(folder, ".ballast"), "wb") as f:
        f.write(b"\0" * max(ballast, 0))


class _LimitedWrites:
    """Writes under ``folder`` share ``budget`` bytes; past it they raise ENOSPC."""

    def __init__(self, folder: str, budget: int):
        self.folder, self.budget = os.path.realpath(folder), budget

    def open(self, path, mode="r", *args, **kwargs):
        f = open(path, mode, *args, **kwargs)
        if "r" in mode or not os.path.realpath(path).startswith(self.folder + os.sep):
            return f
        write = f.write

        def limited(data):
            if len(data) > self.budget:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            self.budget -= len(data)
            return write(data)

        f.write = limited
        return f


@contextmanager
def full_disk(folder, free_bytes: int = 0, use_tmpfs: bool = True):
    """``folder`` (created) takes only about ``free_bytes`` more. Yields "tmpfs" or "patched"
    (which fault was injected; ``use_tmpfs=False`` asks for the patched writer); the folder's
    files stay afterwards only in the patched case."""
    folder = os.fspath(folder)
    os.makedirs(folder, exist_ok=True)
    if use_tmpfs and _mount_tmpfs(folder):
        try:
            _fill(folder, free_bytes)
            yield "tmpfs"
        finally:
            subprocess.run(["umount", "-l", folder], check=True)
        return
    limited = _LimitedWrites(folder, free_bytes)
    with mock.patch.object(atomic, "open", limited.open, create=True):
        yield "patched"


class Process(NamedTuple):
    pid: int
    ppid: int
    pgid: int
    sid: int
    state: str  # "R", "S", ... "Z" for a zombie (ended, not yet waited for)
    command: str


def process_table():
    """Every process on the machine, read from /proc (psutil's view without psutil)."""
    table = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
            with open(f"/proc/{name}/cmdline", "rb") as f:
                command = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:  # ended meanwhile
            continue
        # "pid (comm) state ppid pgrp session ...": comm may hold spaces and parentheses
        state, ppid, pgid, sid = stat[stat.rindex(")") + 2 :].split()[:4]
        table.append(Process(int(name), int(ppid), int(pgid), int(sid), state, command))
    return table


def running_in_session(sid: int):
    """The processes of session ``sid`` that still run (zombies are over: only their exit status
    waits to be collected)."""
    return [p for p in process_table() if p.sid == sid and p.state != "Z"]


def wait_until(condition, timeout: float, every: float = 0.2):
    """Polls ``condition()`` until it returns something true (returned) or ``timeout`` seconds
    passed (returns the last value)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(every)


def end_session(sid: int) -> None:
    """SIGKILL to whatever of session ``sid`` still runs (a test's clean-up after a failure)."""
    for process in running_in_session(sid):
        try:
            os.kill(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
