"""The daemon's glibc setting: big blocks stay mmaps of their own after a bigger one was freed."""

from __future__ import annotations

import subprocess
import sys

import pytest

PROBE = """
import ctypes, sys
from bgpd.allocator import keep_big_blocks_mapped
if sys.argv[1] == "tuned":
    assert keep_big_blocks_mapped()
names = ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
         "fordblks", "keepcost")
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in names]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Info
big = bytearray(16 << 20)
del big  # a freed mmapped block: untuned, glibc now serves blocks below 16 MiB from the heap
before = libc.mallinfo2().hblkhd
block = bytearray(1 << 20)
print(libc.mallinfo2().hblkhd - before >= 1 << 20)
"""


def mapped_after_a_big_free(mode: str) -> bool:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True
    )
    return out.stdout.strip() == "True"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_a_fixed_threshold_keeps_a_1mib_block_out_of_the_heap() -> None:
    # glibc's default moves the threshold up, which is what left freed heap resident.
    assert not mapped_after_a_big_free("default")
    assert mapped_after_a_big_free("tuned")
