"""``speed.keep_memory``: keep freed memory in the process heap instead of handing it back to the kernel.

PyTorch's CPU allocator takes every tensor from ``malloc``. With glibc's defaults, blocks above the mmap
threshold (at most 32 MiB) get their own mapping and are unmapped on free, and the heap top is trimmed once
more than twice that lies free, so every training step faults its activations in again, page by page (the
kernel zeroes each one). On the demo profile that is ~60,000 minor page faults per ``fast`` step and ~290,000
per ``seed`` step. ``keep_memory`` sets ``mallopt`` so big blocks come from the heap and freed pages stay
mapped for the next step: the same computation on the same numbers, fewer page faults, a higher resident
peak no larger than the largest step's.

The setting belongs to the process (glibc has one allocator), so the bench switches it per entry
(``apply``); the ``off`` state restores glibc's settled defaults and hands back what was kept
(``malloc_trim``), so big blocks are mapped anew again. Free chunks that fragmentation left inside the heap
are still reused after that (their pages fault once), which can only flatter an entry benched after a kept
one, never the kept one itself. Elsewhere than Linux/glibc it is a no-op that says so once.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging

logger = logging.getLogger(__name__)

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_MMAP_MAX = -1, -3, -4  # glibc <malloc.h>
KEEP = {M_MMAP_MAX: 0, M_TRIM_THRESHOLD: 2**31 - 1}  # no mmap'd blocks, never trim the heap top
# glibc's defaults as its dynamic threshold settles on a training loop's large blocks (threshold capped at 32 MiB,
# trim at twice the threshold); set explicitly so that switching back after KEEP leaves no trace of it
RELEASE = {M_MMAP_MAX: 65536, M_MMAP_THRESHOLD: 32 << 20, M_TRIM_THRESHOLD: 64 << 20}


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        # other C libraries number the mallopt parameters differently
        glibc = all(hasattr(libc, f) for f in ("gnu_get_libc_version", "mallopt", "malloc_trim"))
    except (OSError, TypeError):
        glibc = False
    if not glibc:
        logger.warning("speed.keep_memory: no glibc mallopt in this process (%s); the setting does nothing", name)
        return None
    libc.mallopt.argtypes, libc.mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    libc.malloc_trim.argtypes, libc.malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
    return libc


_state: list[bool | None] = [None]  # what the process is set to; None = glibc untouched


def apply(keep: bool) -> bool:
    """Set the process allocator for ``keep_memory`` = ``keep``; returns whether it took effect.

    ``apply(False)`` on a process that never had ``apply(True)`` leaves glibc's dynamic defaults untouched.
    """
    libc = _glibc()
    if libc is None:
        return False
    if _state[0] == keep or (not keep and _state[0] is None):
        return True
    ok = all(libc.mallopt(param, value) == 1 for param, value in (KEEP if keep else RELEASE).items())
    if not ok:
        logger.warning("speed.keep_memory: mallopt refused a setting; allocator left partly changed")
    if not keep:
        # what KEEP held on to is free heap now: hand it back, or the next blocks would be carved from it
        # (no mapping, no faults) and the released state would still behave like KEEP
        libc.malloc_trim(0)
    _state[0] = keep
    return ok


def state() -> bool | None:
    """The last setting applied: True (keep), False (released), None (glibc untouched)."""
    return _state[0]


STREAM_MMAP_THRESHOLD = 1 << 20  # bytes: a decoded 1280x720 BGR frame (2.6 MiB) is above it


def stream_frames() -> bool:
    """Allocator settings for whole-video inference: every block of 1 MiB or more is its own mapping.

    With glibc's dynamic threshold, a freed decoded frame raises the threshold, so the next frames come from the
    heap; most likely the small arrays kept per batch (each frame's candidates) are then carved out of the freed
    frames' space, no later frame fits the holes, and the heap grows by about a frame per frame (9 GB over 4,700
    frames of a 1280x720 video, measured with ``benchmarks/long_video_memory.py``). A fixed threshold keeps RSS
    flat for the cost of mapping each frame anew.
    Returns whether it took effect; a later ``apply`` sets training's state.
    """
    libc = _glibc()
    if libc is None:
        return False
    ok = libc.mallopt(M_MMAP_MAX, 65536) == 1 and libc.mallopt(M_MMAP_THRESHOLD, STREAM_MMAP_THRESHOLD) == 1
    _state[0] = False  # not KEEP: a later apply(True) sets KEEP again
    return ok
