"""IPAM allocation throughput on a real etcd, with 1 and with 8 concurrent allocator processes.

Run: python -m tests.bench.bench_ipam [--count N]   or   pytest -m slow tests/bench/bench_ipam.py -s

Each allocator is its own process (as CNI invocations are) with its own host name, allocating
one address per handle from a /16 pool with Calico's default blockSize 26. Prints `name: value`
lines; never asserts a number (DESIGN.md, Performance).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import statistics
import time
from collections.abc import Sequence
from typing import Any

import pytest

from bgpd.datastore.etcd import EtcdDatastore
from bgpd.model import load_documents
from ipam import Ipam
from ipam.check import check
from ipam.pools import put_resource
from tests.lab.etcd import EtcdServer

POOL = """apiVersion: projectcalico.org/v3
kind: IPPool
metadata: {name: bench}
spec: {cidr: 10.244.0.0/16, blockSize: 26}
"""


async def _allocate(endpoint: str, host: str, count: int) -> dict[str, Any]:
    store = EtcdDatastore([endpoint], retry_for=60)
    ipam = Ipam(store, host)
    latencies = []
    try:
        for i in range(count):
            t0 = time.perf_counter()
            await ipam.assign(f"{host}-{i}", attrs={"node": host})
            latencies.append(time.perf_counter() - t0)
    finally:
        await store.close()
    return {"latencies": latencies, "conflicts": ipam.stats.conflicts,
            "claims": ipam.stats.block_claims, "borrows": ipam.stats.borrows}  # fmt: skip


def _allocator(endpoint: str, host: str, count: int, go: Any, out: Any) -> None:
    go.wait()
    try:
        out.put(asyncio.run(_allocate(endpoint, host, count)))
    except BaseException as exc:
        out.put({"error": f"{host}: {type(exc).__name__}: {exc}"})


def run_allocators(endpoint: str, processes: int, count: int, tag: str) -> dict[str, float]:
    ctx = multiprocessing.get_context("spawn")
    go, out = ctx.Event(), ctx.Queue()
    procs = [
        ctx.Process(target=_allocator, args=(endpoint, f"{tag}-{i}", count, go, out))
        for i in range(processes)
    ]
    for p in procs:
        p.start()
    time.sleep(1.0)  # let every process import before the clock starts
    start = time.perf_counter()
    go.set()
    results = [out.get(timeout=1800) for _ in procs]
    elapsed = time.perf_counter() - start
    for p in procs:
        p.join(timeout=30)
    errors = [r["error"] for r in results if "error" in r]
    if errors:
        raise RuntimeError("; ".join(errors))
    lat = sorted(x for r in results for x in r["latencies"])
    total = processes * count
    return {
        f"ipam_allocations_per_s_{processes}_allocators": total / elapsed,
        f"ipam_latency_ms_p50_{processes}_allocators": 1000 * statistics.median(lat),
        f"ipam_latency_ms_p99_{processes}_allocators": 1000 * lat[int(0.99 * (len(lat) - 1))],
        f"ipam_cas_conflicts_{processes}_allocators": sum(r["conflicts"] for r in results),
        f"ipam_block_claims_{processes}_allocators": sum(r["claims"] for r in results),
        f"ipam_borrowed_{processes}_allocators": sum(r["borrows"] for r in results),
    }


async def _seed_and_verify(endpoint: str, expect: int | None) -> int:
    store = EtcdDatastore([endpoint])
    try:
        if expect is None:
            for r in load_documents(POOL):
                await put_resource(store, r)
            return 0
        report = await check(store)
        if report.unique != expect or report.double_allocations:
            raise RuntimeError(f"expected {expect} unique addresses, check says {report.to_json()}")
        return report.unique
    finally:
        await store.close()


def run(count: int) -> dict[str, float]:
    figures: dict[str, float] = {}
    with EtcdServer() as server:
        asyncio.run(_seed_and_verify(server.endpoint, None))
        figures |= run_allocators(server.endpoint, 1, count, "solo")
        figures |= run_allocators(server.endpoint, 8, count, "crowd")
        # Not a benchmark figure, a sanity line: the run handed out what it claims to have.
        figures["ipam_unique_addresses_after_run"] = asyncio.run(
            _seed_and_verify(server.endpoint, 9 * count)
        )
    return figures


def _print(figures: dict[str, float]) -> None:
    for name, value in figures.items():
        print(f"{name}: {value:.1f}" if "_ms_" in name else f"{name}: {value:.0f}")


@pytest.mark.slow
def test_ipam_allocation_rates() -> None:
    _print(run(500))


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m tests.bench.bench_ipam", description=__doc__)
    p.add_argument("--count", type=int, default=500, help="allocations per allocator")
    _print(run(p.parse_args(argv).count))


if __name__ == "__main__":
    main()
