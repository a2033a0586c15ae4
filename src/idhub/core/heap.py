"""Giving freed memory back to the operating system after a large build.

CPython returns an arena of small objects once every object in it is gone, but larger blocks
(dict tables, lists, arrays) come from glibc's `malloc`, which keeps what was freed for reuse
unless told otherwise. After a policy build or the roles warm-up, a worker has just freed tens of
megabytes of intermediates it will not need again; `malloc_trim(0)` hands the whole free pages
back. Elsewhere (musl, macOS, no libc found) this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from collections.abc import Callable


@functools.cache
def _trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        trim = libc.malloc_trim  # glibc only
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


def give_back_freed_memory() -> bool:
    """Returns free heap pages to the OS; True if the C library could be asked to."""
    trim = _trim()
    if trim is None:
        return False
    trim(0)
    return True
