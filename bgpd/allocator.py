"""The C allocator's settings for a daemon that holds tables of hundreds of thousands of routes.

glibc serves a block of 128 KiB or more with its own mmap, and gives it back when it is freed,
but by default it raises that threshold to the size of each such block freed (up to 32 MiB).
The big dicts of a loading table (dirty sets, queues, dicts being resized) are then carved from
the heap, and what they leave behind when freed stays resident: 37 MiB of a 255 MiB daemon at
500k routes was such free heap (`malloc_stats`). A fixed threshold keeps every big block an
mmap of its own, returned as soon as it is freed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger("routemesh.bgpd")

M_MMAP_THRESHOLD = -3  # mallopt parameter number, from glibc's malloc.h
MMAP_THRESHOLD = 128 * 1024  # glibc's own starting value; setting it stops the adjustment


def keep_big_blocks_mapped() -> bool:
    """Fix glibc's mmap threshold (see the module docstring); False where there is no glibc."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False  # not glibc (musl has no mallopt): its own policy stands
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    ok = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD))
    if not ok:
        log.debug("mallopt(M_MMAP_THRESHOLD) refused; the allocator's default policy stands")
    return ok
