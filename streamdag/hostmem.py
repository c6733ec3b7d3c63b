"""Host allocator tuning for processes that grow networks (the ``streamdag`` command).

Growing a network rebuilds its node tables and applies its mutations with many short-lived
numpy arrays of tens to hundreds of kB per batch. glibc's malloc hands such memory back to
the kernel as soon as it is freed (the heap top is trimmed past 128 kB; bigger blocks are
unmapped), so the next batch takes the page faults again. On the H100 benchmark host the
host side of a batch of 8 duplications at M (apply + table rebuild, 30 batches, median)
took 2.5–4.1 ms over six runs, 2.1–3.4 ms over six runs with freed memory kept; the table
rebuild alone 1.5–2.5 against 1.0–1.6 ms.

:func:`retain_freed_memory` asks glibc to keep it: a heap top of up to 512 MiB freed memory
is not trimmed, the heap grows 64 MiB at a time, and blocks below 32 MiB (glibc's maximum)
come from the heap rather than from fresh mappings. The cost is resident memory: a process
keeps what it freed, up to that much. The ``streamdag`` command calls it at start (unless
``STREAMDAG_RETAIN_FREED_MEMORY=0``); a program that uses the library directly may call it
itself. It is process-wide and does nothing off glibc.
"""

from __future__ import annotations

import ctypes
import sys

__all__ = ["retain_freed_memory"]

# mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
_SETTINGS = ((_M_TRIM_THRESHOLD, 512 << 20), (_M_TOP_PAD, 64 << 20),
             (_M_MMAP_THRESHOLD, 32 << 20))


def retain_freed_memory() -> bool:
    """Tune glibc malloc to keep freed memory (see the module note); ``True`` if it took."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return all(mallopt(param, value) == 1 for param, value in _SETTINGS)
