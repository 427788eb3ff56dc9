"""Atomic file writing, the one helper every writer of this project uses.

A file is written under a unique hidden name in its destination folder and moved into place with
``os.replace`` only once complete, so an interrupted run never leaves a half-written file under
the final name, and a failure leaves nothing behind.
"""

import os
import uuid
from contextlib import contextmanager
from typing import IO, Iterator

__all__ = ["atomic_path", "atomic_open"]


@contextmanager
def atomic_path(path: "os.PathLike[str] | str") -> Iterator[str]:
    """Yields a temporary path beside ``path``; what the block writes there becomes ``path`` when
    the block completes, and is removed when it raises."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    temporary = os.path.join(
        folder, f".{os.path.basename(path)}.{os.getpid()}.{uuid.uuid4().hex}.tmp"
    )
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        if os.path.lexists(temporary):
            os.remove(temporary)


@contextmanager
def atomic_open(path: "os.PathLike[str] | str") -> Iterator[IO[bytes]]:
    """Yields a binary file that becomes ``path`` (flushed to disk) only if the block completes;
    created with the usual permissions (the umask applies)."""
    with atomic_path(path) as temporary:
        with open(temporary, "xb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
