"""glibc malloc settings for inference on a CPU.

With glibc's defaults, a buffer over the dynamic mmap threshold (128 KiB at first) is mapped
fresh and unmapped when freed, and a freed heap top over the trim threshold is returned to the
kernel: each forward of a ViT on a CPU then faults the pages of its activations (a few to a few
tens of MB per block) in again, zeroed by the kernel. With the mmap threshold at glibc's largest
(32 MiB) and a trim threshold of 64 MiB, those buffers are reused from the heap; larger ones are
still mapped and returned when freed. ``docs/SPEED.md`` has the measurements.

The entry points (``tools/train_net.py``, ``tools/lazyconfig_train_net.py``, the demos and the
benchmark) call ``tune_cpu_allocator()``; a program that uses the library directly may call it
too. It changes nothing when the process already has malloc settings of its own (one of
``USER_SETTINGS`` set, e.g. ``LD_PRELOAD`` for jemalloc or tcmalloc), when
``CLIPTRASE_MALLOC=default``, or when the C library is not glibc.
"""

import ctypes
import logging
import os
import platform
from typing import Callable, Optional

__all__ = ["MMAP_THRESHOLD", "TRIM_THRESHOLD", "tune_cpu_allocator"]

logger = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's malloc.h
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 2**20  # glibc's largest accepted value on 64-bit systems
TRIM_THRESHOLD = 64 * 2**20
USER_SETTINGS = (
    "MALLOC_MMAP_THRESHOLD_",
    "MALLOC_TRIM_THRESHOLD_",
    "MALLOC_TOP_PAD_",
    "GLIBC_TUNABLES",
    "LD_PRELOAD",
)
OPT_OUT = "CLIPTRASE_MALLOC"

_applied: Optional[bool] = None  # the first call's answer; later calls return it


def _glibc_mallopt() -> Optional[Callable[[int, int], int]]:
    """glibc's ``mallopt``, or None where the C library is another (musl, macOS, Windows)."""
    if platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL(None).mallopt  # ctypes' defaults: int arguments, int result
    except (OSError, AttributeError):
        return None


def tune_cpu_allocator() -> bool:
    """Sets glibc's mmap threshold to 32 MiB and its trim threshold to 64 MiB for this process,
    once; True when they were set. See the module's docstring for when it leaves them alone."""
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    own = [name for name in USER_SETTINGS if os.environ.get(name)]
    if own or os.environ.get(OPT_OUT, "").lower() == "default":
        logger.debug(
            "malloc settings left as they are (%s)", ", ".join(own) or f"{OPT_OUT}=default"
        )
        return False
    mallopt = _glibc_mallopt()
    if mallopt is None:
        return False
    # mallopt returns 1 on success, 0 for a value out of range (then nothing changed)
    _applied = (
        mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
        and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    )
    if not _applied:
        logger.warning("glibc refused the malloc thresholds; CPU inference runs with its defaults")
    return _applied
