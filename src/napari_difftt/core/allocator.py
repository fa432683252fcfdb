"""Reuse of freed CPU memory for PyTorch's large tensors (glibc's malloc, Linux).

PyTorch's CPU allocator asks the C library for every tensor. By default glibc serves an
allocation of more than 128 KiB – 32 MiB (a threshold it adjusts as it goes) with a fresh
``mmap`` and gives it back to the kernel when the tensor is freed, and it returns the free top of
its heap above twice that threshold; a network pass at 128³ allocates and frees about 1 GiB of
such tensors, so every pass first-touches new pages: a quarter of a million page faults, a third
of a 128³ prediction's time on 2 CPU cores (docs/PERFORMANCE.md, "Reusing freed memory").
:func:`reuse_freed_memory` tells glibc (``mallopt``) to serve allocations under
:data:`MMAP_THRESHOLD` from its heap, to keep up to :data:`TRIM_THRESHOLD` of freed memory for
reuse, and to give threads started afterwards the main heap (``M_ARENA_MAX`` = 1: a worker
thread's own arena maps its large tensors afresh whatever the thresholds).

The command line applies it at start (:func:`napari_difftt.cli.run`, which the
``napari-difftt`` script calls, so ``napari-difftt demo``'s napari shares it); a library user
or a napari started otherwise calls it, or sets the equivalent environment variables before the
process starts (:data:`ENVIRONMENT`). ``NAPARI_DIFFTT_SYSTEM_MALLOC=1`` leaves malloc as it is.
Settings are process-wide and cannot be undone, so the call is idempotent and says what it did.
A process that lives on between jobs (napari) keeps its peak resident memory until
:func:`release_freed_memory` gives the free pages back (napari's long jobs call it as they end).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os

OPT_OUT = "NAPARI_DIFFTT_SYSTEM_MALLOC"  # set to 1: leave malloc's settings alone
MMAP_THRESHOLD = 2**30  # bytes: larger allocations still get their own mapping
TRIM_THRESHOLD = 2**30  # bytes of freed memory the process keeps for reuse
# what reuse_freed_memory sets, as glibc's environment variables (read when a process starts)
ENVIRONMENT = {
    "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD),
    "MALLOC_TRIM_THRESHOLD_": str(TRIM_THRESHOLD),
    "MALLOC_ARENA_MAX": "1",
}
# glibc's <malloc.h>
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8

_status: str | None = None  # what the first call did; later calls repeat it


def reuse_freed_memory() -> str:
    """Apply the policy of this module once per process; returns what is in force, one line:
    ``"reused (glibc X.Y: …)"`` or ``"system default (reason)"`` — off with
    :data:`OPT_OUT` set, or where the C library is not glibc (macOS, Windows, musl)."""
    global _status
    if _status is None:
        _status = _apply()
    return _status


def release_freed_memory() -> None:
    """Give the free pages of glibc's heaps back to the system (``malloc_trim``; 3–60 ms after
    a 128³–192³ prediction, whose next run then faults its pages afresh once). Nothing where
    the C library is not glibc. Resident memory after a 192³ prediction with memory reused:
    1.9 GB kept, 0.34 GB after this (docs/PERFORMANCE.md)."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


def _apply() -> str:
    if os.environ.get(OPT_OUT, "") not in ("", "0"):
        return f"system default ({OPT_OUT} is set)"
    libc = _glibc()
    if libc is None:
        return "system default (the C library is not glibc)"
    version = libc.gnu_get_libc_version().decode()
    settings = ((_M_MMAP_THRESHOLD, MMAP_THRESHOLD), (_M_TRIM_THRESHOLD, TRIM_THRESHOLD),
                (_M_ARENA_MAX, 1))
    refused = [option for option, value in settings if libc.mallopt(option, value) != 1]
    if refused:  # mallopt answers 1 on success; an old glibc may refuse a value
        return f"system default (glibc {version} refused mallopt options {refused})"
    return (f"reused (glibc {version}: allocations under {MMAP_THRESHOLD >> 20} MiB from the "
            f"heap, up to {TRIM_THRESHOLD >> 20} MiB of freed memory kept, one arena)")


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    """The process's C library when it is glibc (it has ``gnu_get_libc_version``), else None;
    looked up once (``find_library`` runs ``ldconfig`` in a subprocess)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.gnu_get_libc_version.restype = ctypes.c_char_p
        libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
        libc.malloc_trim.argtypes = (ctypes.c_size_t,)
    except (OSError, AttributeError):
        return None
    return libc
