"""Cheap readings from /proc: peak RSS, CPU seconds, and the kernel FIB size of a namespace.

/proc/<pid>/net/ is the network namespace of <pid>, so a DUT's kernel routes are counted
without spawning anything inside its namespace; fib_triestat costs the same at 500k routes
as at 5 (`ip route | wc -l` does not).
"""

from __future__ import annotations

import os
import platform
import re
from collections.abc import Iterable
from pathlib import Path

_CLK_TCK = os.sysconf("SC_CLK_TCK")


def peak_rss_kib(pid: int) -> int:
    """VmHWM of ``pid`` in KiB (0 if it is gone)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    m = re.search(r"^VmHWM:\s+(\d+) kB", text, re.M)
    return int(m.group(1)) if m else 0


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` in seconds (0 if it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    # Fields after the ")" that closes comm; utime and stime are fields 14 and 15.
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def total_peak_rss_mib(pids: Iterable[int]) -> float:
    return sum(peak_rss_kib(p) for p in pids) / 1024


def total_cpu_seconds(pids: Iterable[int]) -> float:
    return sum(cpu_seconds(p) for p in pids)


def parse_fib_triestat(text: str) -> int:
    """Prefixes in the main table's trie (local and main share a trie without custom rules)."""
    m = re.search(r"^Main:\n(?:\t.*\n)*?\tPrefixes:\s+(\d+)", text, re.M)
    if not m:
        raise ValueError("no Main table in fib_triestat")
    return int(m.group(1))


def fib_prefixes(pid: int) -> int:
    """Kernel IPv4 FIB prefixes in the network namespace of ``pid``."""
    return parse_fib_triestat(Path(f"/proc/{pid}/net/fib_triestat").read_text())


def machine() -> dict[str, object]:
    """CPU model, core count, memory and kernel of this machine, for the report."""
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kib = 0
    try:
        m = re.search(r"^MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text(), re.M)
        mem_kib = int(m.group(1)) if m else 0
    except OSError:
        pass
    return {
        "cpu_model": model,
        "cores": os.cpu_count(),
        "mem_gib": round(mem_kib / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
    }
