"""Atomic file writing, the one helper every writer of this project uses.

A file is written under a unique hidden name in its destination folder and moved into place with
``os.replace`` only once complete, so an interrupted run never leaves a half-written file under
the final name, and a failure leaves nothing behind. ``atomic_paths`` does the same for a group
of files: all of them appear, or none.

A full disk, a read-only or unwritable folder, or a folder standing where the file goes raise
``OutputError`` (one line naming the file and the fix) instead of the bare ``OSError``.
"""

import errno
import os
import uuid
from contextlib import contextmanager
from typing import IO, Iterator, List, Sequence

from .errors import OutputError, OutputExistsError, OutputNotWritableError

__all__ = ["atomic_path", "atomic_open", "atomic_paths"]

# errno values that say the output cannot be written there (not a bug of the writer)
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
_NOT_WRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)

_final_paths = {}  # temporary -> the path it becomes: errors name that one, even when nested


def _output_error(error: OSError, path: str) -> OSError:
    """The UserError for ``error`` met while writing ``path``, or ``error`` itself (a bug)."""
    if isinstance(error, OutputError):
        return error
    path = _final_paths.get(path, path)
    if error.errno in _NO_SPACE:
        return OutputError(
            f"cannot write {path}: {os.strerror(error.errno)}. Free some space or choose "
            "another output folder"
        )
    if error.errno in _NOT_WRITABLE:
        return OutputNotWritableError(
            f"cannot write {path}: {os.strerror(error.errno)}. Choose a folder you can write to"
        )
    if error.errno == errno.EISDIR:
        return OutputExistsError(
            f"cannot write {path}: a folder stands there. Remove it or choose another output folder"
        )
    return error


def _temporary_beside(path: str) -> str:
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as error:
        raise _output_error(error, folder) from None
    temporary = os.path.join(
        folder, f".{os.path.basename(path)}.{os.getpid()}.{uuid.uuid4().hex}.tmp"
    )
    _final_paths[temporary] = _final_paths.get(path, path)
    return temporary


def _remove(path: str) -> None:
    if os.path.lexists(path):
        os.remove(path)


@contextmanager
def atomic_paths(paths: Sequence["os.PathLike[str] | str"]) -> Iterator[List[str]]:
    """Yields one temporary path beside each of ``paths``; what the block writes there becomes
    those paths together when the block completes. When the block or a move raises, none of
    ``paths`` is left from this write (those already moved are removed) and the temporaries go."""
    paths = [os.fspath(path) for path in paths]
    temporaries, placed, current = [], [], None
    try:
        for path in paths:
            temporaries.append(_temporary_beside(path))
        current = paths[0] if len(paths) == 1 else os.path.dirname(paths[0]) if paths else None
        yield temporaries
        for path in paths:  # before any move: a folder in the way would leave a partial set
            current = path
            if os.path.isdir(path):
                raise _output_error(OSError(errno.EISDIR, os.strerror(errno.EISDIR)), path)
        for temporary, path in zip(temporaries, paths):
            current = path
            os.replace(temporary, path)
            placed.append(path)
    except OSError as error:
        for path in placed:
            _remove(path)
        translated = _output_error(error, current) if current else error
        if translated is error:
            raise
        raise translated from None
    except BaseException:
        for path in placed:
            _remove(path)
        raise
    finally:
        for temporary in temporaries:
            _remove(temporary)
            _final_paths.pop(temporary, None)


@contextmanager
def atomic_path(path: "os.PathLike[str] | str") -> Iterator[str]:
    """Yields a temporary path beside ``path``; what the block writes there becomes ``path`` when
    the block completes, and is removed when it raises."""
    with atomic_paths([path]) as (temporary,):
        yield temporary


@contextmanager
def atomic_open(path: "os.PathLike[str] | str") -> Iterator[IO[bytes]]:
    """Yields a binary file that becomes ``path`` (flushed to disk) only if the block completes;
    created with the usual permissions (the umask applies)."""
    with atomic_path(path) as temporary:
        with open(temporary, "xb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
