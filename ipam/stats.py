"""Counters and the allocation latency record IPAM keeps so a metrics exporter can publish them."""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

# Upper bounds in seconds, Prometheus-histogram style (the last bucket is +Inf).
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass
class LatencyRecord:
    """A cumulative-friendly histogram: per-bucket counts, total count and sum."""

    buckets: tuple[float, ...] = LATENCY_BUCKETS
    counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    count: int = 0
    total: float = 0.0
    maximum: float = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, seconds)] += 1
        self.count += 1
        self.total += seconds
        self.maximum = max(self.maximum, seconds)


@dataclass
class IpamStats:
    """What one ``Ipam`` has done since it was made; metrics read it, nothing resets it."""

    allocations: int = 0
    releases: int = 0
    # Compare-and-swap writes that lost to another writer and were retried from a fresh read.
    conflicts: int = 0
    block_claims: int = 0
    borrows: int = 0
    exhausted: int = 0
    latency: LatencyRecord = field(default_factory=LatencyRecord)
