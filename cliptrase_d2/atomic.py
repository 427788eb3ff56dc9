"""Atomic file writing, the one writer of everything that imports this package: JSON, label
maps, images and text.

A file is written under a unique hidden name in its destination folder and moved into place with
``os.replace`` only once complete, so an interrupted run never leaves a half-written file under
the final name, and a failure leaves nothing behind. ``atomic_paths`` does the same for a group
of files: all of them appear, or none.

Inside an output folder that an evaluation claimed (one holding a ``STATE_DIR``, see
``cliptrase_d2.engine.checks.claim_output_dir``), each file is listed in the folder's record
before it takes its name, so that a later run can tell the files the tool wrote from the user's.

A full disk, a read-only or unwritable folder, or a folder standing where the file goes raise
``OutputError`` (one line naming the file and the fix) instead of the bare ``OSError``.
"""

import errno
import glob
import json
import math
import os
import re
import socket
import uuid
from contextlib import contextmanager
from typing import IO, Iterator, List, Optional, Sequence, Set

import numpy as np
from PIL import Image

from .errors import InputError, OutputError, OutputExistsError, OutputNotWritableError

__all__ = [
    "atomic_open",
    "atomic_paths",
    "atomic_save_image",
    "atomic_write_json",
    "atomic_write_png",
    "atomic_write_text",
    "claimed_root",
    "recorded_files",
    "records",
    "RESUMED_RECORD",
    "STATE_DIR",
    "WRITTEN_RECORD",
]

STATE_DIR = ".cliptrase_d2"  # in a claimed output folder: its lock and the records of its files
RESUMED_RECORD = "resumed"  # in STATE_DIR: the files of the runs a resumed run continues
WRITTEN_RECORD = "written"  # in STATE_DIR: written.<host>.<pid>, the files one process wrote

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
    if error.errno == errno.ENAMETOOLONG:
        return OutputError(
            f"cannot write {path}: its name is too long for this filesystem. Choose a shorter "
            "file or folder name"
        )
    if error.errno in (errno.EEXIST, errno.ENOTDIR):  # making the folder: a file stands in the way
        return OutputExistsError(
            f"cannot make the folder {path}: a file stands there or above it. Remove it or choose "
            "another output folder"
        )
    return error


def _temporary_beside(path: str) -> str:
    # the file's own ending last: a writer that picks its format by it (OpenCV's video) works
    stem, ending = os.path.splitext(os.path.basename(path))
    if not stem:  # "", "folder/"
        raise OutputError(f"cannot write {path!r}: it names no file; give a file name")
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as error:
        raise _output_error(error, folder) from None
    # the stem shortened: a name near the filesystem's limit (a temporary's own temporary too)
    # still has room for the unique part
    temporary = f".{stem[:32]}.{os.getpid()}.{uuid.uuid4().hex}.tmp{ending}"
    temporary = os.path.join(folder, temporary)
    _final_paths[temporary] = _final_paths.get(path, path)
    return temporary


def is_temporary(name: str) -> bool:
    """Whether the file name ``name`` is one of this writer's temporaries (an interrupted
    write's)."""
    return re.fullmatch(r"\..*\.[0-9]+\.[0-9a-f]{32}\.tmp(\.[^.]*)?", name) is not None


def claimed_root(folder: str) -> Optional[str]:
    """The claimed output folder that holds ``folder`` (the nearest one up with a STATE_DIR),
    or None."""
    root = os.path.abspath(folder)
    while not os.path.isdir(os.path.join(root, STATE_DIR)):
        parent = os.path.dirname(root)
        if parent == root:
            return None
        root = parent
    return root


def records(root: str, patterns=(RESUMED_RECORD, WRITTEN_RECORD + ".*")) -> List[str]:
    """The record files of ``root`` that ``patterns`` (glob patterns in its STATE_DIR) match."""
    return [path for p in patterns for path in glob.glob(os.path.join(root, STATE_DIR, p))]


def recorded_files(root: str, patterns=(RESUMED_RECORD, WRITTEN_RECORD + ".*")) -> Set[str]:
    """Paths (relative to ``root``) that the records of ``root`` matching ``patterns`` list."""
    listed = set()
    for record in records(root, patterns):
        with open(record, encoding="utf-8", errors="surrogateescape") as f:  # as os.fsdecode
            listed.update(line.rstrip("\n") for line in f if line.strip())
    return listed


def _record(path: str) -> None:
    """Lists ``path`` in the record of the claimed folder holding it (each process its own
    record file: no two writers append to one file, even over a network filesystem)."""
    root = claimed_root(os.path.dirname(os.path.abspath(path)))
    relative = os.path.relpath(os.path.abspath(path), root) if root else None
    if relative is None or relative.startswith(STATE_DIR + os.sep):  # the records are not listed
        return
    record = f"{WRITTEN_RECORD}.{socket.gethostname()}.{os.getpid()}"
    with open(os.path.join(root, STATE_DIR, record), "ab") as f:
        f.write(os.fsencode(relative) + b"\n")  # a name's bytes, UTF-8 or not


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
            _record(path)  # listed before it takes its name: no file of ours goes unlisted
            os.replace(temporary, path)
            placed.append(path)
    except BaseException as error:
        for path in placed:
            _remove(path)
        if not (isinstance(error, OSError) and current):
            raise
        translated = _output_error(error, current)
        if translated is error:
            raise
        raise translated from None
    finally:
        for temporary in temporaries:
            _remove(temporary)
            _final_paths.pop(temporary, None)


@contextmanager
def atomic_open(path: "os.PathLike[str] | str") -> Iterator[IO[bytes]]:
    """Yields a binary file that becomes ``path`` (flushed to disk) only if the block completes;
    created with the usual permissions (the umask applies)."""
    with atomic_paths([path]) as (temporary,):
        with open(temporary, "xb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())


def _json_ready(obj):
    """NumPy scalars/arrays to Python values; NaN (a class that was not counted) to null."""
    if isinstance(obj, dict):
        return {str(key): _json_ready(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_ready(value) for value in obj]
    if isinstance(obj, np.ndarray):
        return _json_ready(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def atomic_write_json(path: str, obj) -> None:
    """Write ``obj`` as indented JSON; NaN and infinities become ``null``."""
    atomic_write_text(path, json.dumps(_json_ready(obj), indent=2, allow_nan=False))


def atomic_write_png(path: str, label_map: np.ndarray) -> None:
    """Write a (H, W) label map as a grayscale PNG: 8-bit for ``uint8``, 16-bit (PIL mode
    ``I;16``) for ``uint16``. Read it back with ``np.array(Image.open(path))``."""
    label_map = np.asarray(label_map)
    if label_map.ndim != 2:
        raise InputError(f"label map must be (H, W), got shape {label_map.shape}")
    if label_map.dtype not in (np.uint8, np.uint16):
        raise TypeError(f"label map must be uint8 or uint16, got {label_map.dtype}")
    atomic_save_image(path, Image.fromarray(label_map))


def atomic_save_image(path: str, image: Image.Image) -> None:
    """Save a PIL image as PNG under ``path`` atomically."""
    with atomic_open(path) as f:
        image.save(f, format="PNG")


def atomic_write_text(path: str, text: str) -> None:
    """Write UTF-8 text under ``path`` atomically."""
    with atomic_open(path) as f:
        f.write(text.encode("utf-8"))
