"""Process memory: free pages back to the system, and huge pages for large tensors.

:func:`release_free_memory` gives memory that the C heap keeps after ``free`` back to the
operating system. glibc's ``malloc`` serves allocations below a threshold (which it raises up
to 32 MiB as large blocks are freed) from heaps that it shrinks only from the top, and every
thread that allocates gets a heap (an *arena*) of its own. A stack prediction allocates and
frees tens of MiB per slice in three threads (network, reading, post-processing), so without
help the resident memory grows by whatever the heaps keep. :func:`release_free_memory` asks
glibc to return the free pages of every arena (``malloc_trim(0)``); it frees nothing in use and does
nothing where glibc's ``malloc_trim`` is absent.

:func:`request_huge_pages` asks PyTorch (on Linux, before torch is imported) to back large CPU
tensors with transparent huge pages; only processes wholly this package's call it.

The effect of both: ``docs/performance.md``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import sys


@functools.cache
def _malloc_trim():
    """Return glibc's ``malloc_trim``, or ``None`` where there is none (macOS, Windows, musl)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


def release_free_memory() -> bool:
    """Return the C heaps' free pages to the operating system, where the C library can.

    Returns
    -------
    bool
        Whether anything was released (``False`` also where the call is not available).
    """
    trim = _malloc_trim()
    return bool(trim(0)) if trim is not None else False


#: PyTorch's switch for backing large CPU tensors with transparent huge pages (Linux only).
HUGE_PAGES_VARIABLE = "THP_MEM_ALLOC_ENABLE"


def request_huge_pages() -> bool:
    """Ask PyTorch to back large CPU tensors with transparent huge pages, where it still can.

    PyTorch reads ``THP_MEM_ALLOC_ENABLE`` once, when it is first imported, and the setting
    then holds for the whole process. Only processes that are wholly this package's (the
    ``unetkit`` command, its dask workers, which inherit the environment, and benchmarks) call
    this; the napari plugin does not, so other plugins' PyTorch is left as the user set it.
    A value the user already set (``THP_MEM_ALLOC_ENABLE=0``) wins.

    Returns
    -------
    bool
        Whether PyTorch will use huge pages in this process: on Linux, torch not yet imported
        (or the variable already set to ``1`` before it was) and the variable ``1``.
    """
    if not sys.platform.startswith("linux"):
        return False
    if "torch" not in sys.modules:
        os.environ.setdefault(HUGE_PAGES_VARIABLE, "1")
    return os.environ.get(HUGE_PAGES_VARIABLE) == "1"
