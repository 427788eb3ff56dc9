"""Fault injection for the tests: a disk that fills up.

``full_disk(folder, free_bytes)`` makes ``folder`` a place where only about ``free_bytes`` more
can be written. Running as root it mounts a small tmpfs there and fills it with a ballast file
(a real full disk: every writer, PIL and json included, meets ENOSPC); otherwise it patches the
project's one file opener (``cliptrase_d2.atomic``) so that writes under ``folder`` raise
``OSError(ENOSPC)`` once ``free_bytes`` were written.
"""

import errno
import os
import subprocess
from contextlib import contextmanager
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
