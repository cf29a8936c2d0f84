"""Kernel route install rate: our writer against `ip -batch` and pyroute2, in fresh namespaces.

Run: python -m tests.bench.bench_fib [--sizes 100000,500000] [--pyroute2 20000]
  or pytest -m slow tests/bench/bench_fib.py -s
Prints `name: value` lines (routes/s and ratios); never asserts a number (DESIGN.md,
Performance). The issue's target: ours >= 2x `ip -batch`.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import re
import resource
import statistics
import subprocess
import time
from collections.abc import Sequence

import pytest

from bgpd.fib.manager import DAEMON_SENDMSG, DAEMON_SLICE, DAEMON_WRITE_MAX, FibManager
from bgpd.fib.netlink import NetlinkFib
from bgpd.fib.types import NextHop, Route, parse_addr
from tests.lab.netns import Lab, Netns
from tests.lab.require import require_netns, require_root

PROTO = 80
GATEWAY = "198.18.0.2"
BASE = 0x64400000  # 100.64.0.0/10: /30s, room for 1M prefixes


class Clock:
    """Wall time and CPU time (user+sys, of us or of our children) over a block: on a shared
    machine the wall clock mostly measures the neighbours, CPU seconds measure the work."""

    def __init__(self, who: int = resource.RUSAGE_SELF) -> None:
        self.who = who

    def __enter__(self) -> Clock:
        self.t0, self.r0 = time.perf_counter(), resource.getrusage(self.who)
        return self

    def __exit__(self, *exc: object) -> None:
        r1 = resource.getrusage(self.who)
        self.wall = time.perf_counter() - self.t0
        self.cpu = (r1.ru_utime - self.r0.ru_utime) + (r1.ru_stime - self.r0.ru_stime)


def fresh(lab: Lab) -> Netns:
    ns, peer = lab.netns(), lab.netns()
    lab.veth(ns, peer, ["198.18.0.1/24"], [f"{GATEWAY}/24"])
    return ns


def prefixes_in_main(ns: Netns) -> int:
    text = ns.run(["cat", "/proc/net/fib_triestat"]).stdout
    return int(re.search(r"Prefixes:\s+(\d+)", text.split("Main:", 1)[1]).group(1))


def routes(n: int) -> list[Route]:
    hop = (NextHop(parse_addr(GATEWAY)[1]),)
    return [Route((4, BASE + (i << 2), 30), hop) for i in range(n)]


def _check(ns: Netns, before: int, n: int, who: str) -> None:
    got = prefixes_in_main(ns) - before
    if got != n:
        raise RuntimeError(f"{who}: {got} of {n} routes in the kernel")


def bench_ours(lab: Lab, n: int) -> dict[str, float]:
    ns = fresh(lab)
    before = prefixes_in_main(ns)
    todo = routes(n)
    fib = NetlinkFib(PROTO, netns=ns.name)

    async def install() -> tuple[Clock, float, float]:
        with Clock() as clock:
            errors = await fib.apply(todo, [])
        if errors:
            raise RuntimeError(f"ours: {len(errors)} errors, first {errors[0]}")
        _check(ns, before, n, "ours")
        t2 = time.perf_counter()
        dumped = await fib.dump()
        t3 = time.perf_counter()
        if len(dumped) < n:
            raise RuntimeError(f"ours: dump saw {len(dumped)} of {n}")
        t4 = time.perf_counter()
        errors = await fib.apply([], [r.prefix for r in todo])
        t5 = time.perf_counter()
        if errors:
            raise RuntimeError(f"ours: {len(errors)} delete errors, first {errors[0]}")
        return clock, n / (t3 - t2), n / (t5 - t4)

    add, dump, delete = asyncio.run(install())
    fib.close()
    _check(ns, before, 0, "ours delete")
    return {
        f"fib_install_routes_per_s_ours_{n}": n / add.wall,
        f"fib_install_routes_per_cpu_s_ours_{n}": n / add.cpu,
        f"fib_delete_routes_per_s_ours_{n}": delete,
        f"fib_dump_routes_per_s_ours_{n}": dump,
    }


def bench_manager(lab: Lab, n: int) -> dict[str, float]:
    """The whole path the daemon uses: update() per route, slices, monitor running."""
    ns = fresh(lab)
    before = prefixes_in_main(ns)
    todo = routes(n)

    async def run() -> tuple[float, float]:
        # With the daemon's slice, write and sendmsg sizes (manager_from_config).
        fib = NetlinkFib(PROTO, netns=ns.name, batch=DAEMON_SENDMSG)
        mgr = FibManager(fib, slice_size=DAEMON_SLICE, write_max=DAEMON_WRITE_MAX)
        await mgr.start()
        worst = 0.0
        done = False

        async def tick() -> None:
            # What a keepalive timer would see: how late a 10 ms sleep wakes up.
            nonlocal worst
            while not done:
                t = time.perf_counter()
                await asyncio.sleep(0.01)
                worst = max(worst, time.perf_counter() - t - 0.01)

        ticker = asyncio.create_task(tick())
        t0 = time.perf_counter()
        for i in range(0, n, 2000):  # as the daemon's RIB worker hands changes over
            for r in todo[i : i + 2000]:
                mgr.update(r)
            await asyncio.sleep(0)
        mgr.converged()
        await mgr.settle()
        took = time.perf_counter() - t0
        done = True
        await ticker
        await mgr.stop()
        return n / took, worst

    # Gen-2 garbage collections walk the whole heap (every route object) and stall any
    # asyncio program this size; reported apart so the figure above can be read.
    gc_worst = 0.0
    gc_started = 0.0

    def on_gc(phase: str, info: dict[str, int]) -> None:
        nonlocal gc_worst, gc_started
        if phase == "start":
            gc_started = time.perf_counter()
        else:
            gc_worst = max(gc_worst, time.perf_counter() - gc_started)

    gc.callbacks.append(on_gc)
    try:
        rate, worst = asyncio.run(run())
    finally:
        gc.callbacks.remove(on_gc)
    _check(ns, before, n, "manager")
    return {
        f"fib_install_routes_per_s_manager_{n}": rate,
        f"fib_manager_worst_loop_delay_ms_{n}": worst * 1000,
        f"fib_manager_worst_gc_pause_ms_{n}": gc_worst * 1000,
    }


def bench_delete_order(lab: Lab, n: int) -> dict[str, float]:
    """The kernel's own cost of deleting a dense range of routes, by order. In address order
    (as a peer's withdrawals arrive) the fib trie halves one big node over and over once
    fewer than a quarter of its slots are left: at 500k /29s the last ~130k stall for
    seconds. Spread over the range (every 8th first) the same deletes cost far less; a
    writer can only do that with the whole withdrawal in hand."""
    out: dict[str, float] = {}
    prefixes = [r.prefix for r in routes(n)]
    hops = routes(1)[0].nexthops
    for order in ("address", "every_8th"):
        ns = fresh(lab)
        before = prefixes_in_main(ns)
        fib = NetlinkFib(PROTO, netns=ns.name, batch=DAEMON_SENDMSG)
        try:
            if fib.write_all([(p, hops, False) for p in prefixes], ()):
                raise RuntimeError("delete order: install failed")
            todo = prefixes if order == "address" else [p for k in range(8) for p in prefixes[k::8]]
            with Clock() as clock:
                errors = fib.write_all((), todo)
        finally:
            fib.close()
        if errors:
            raise RuntimeError(f"delete order: {len(errors)} errors, first {errors[0]}")
        _check(ns, before, 0, f"delete in {order} order")
        out[f"fib_delete_seconds_{order}_order_{n}"] = clock.wall
        out[f"fib_delete_cpu_s_{order}_order_{n}"] = clock.cpu
    return out


def bench_ip_batch(lab: Lab, n: int) -> dict[str, float]:
    ns = fresh(lab)
    before = prefixes_in_main(ns)
    path = lab.tmpdir("fib-bench") / "routes.batch"
    lines = []
    for i in range(n):
        a = BASE + (i << 2)
        lines.append(
            f"route add {a >> 24}.{(a >> 16) & 255}.{(a >> 8) & 255}.{a & 255}/30 "
            f"via {GATEWAY} proto {PROTO}\n"
        )
    path.write_text("".join(lines))
    with Clock(resource.RUSAGE_CHILDREN) as clock:
        subprocess.run(["ip", "-n", ns.name, "-batch", str(path)], check=True, timeout=600)
    _check(ns, before, n, "ip -batch")
    return {
        f"fib_install_routes_per_s_ip_batch_{n}": n / clock.wall,
        f"fib_install_routes_per_cpu_s_ip_batch_{n}": n / clock.cpu,
    }


def bench_pyroute2(lab: Lab, n: int) -> dict[str, float]:
    from pyroute2 import IPRoute

    ns = fresh(lab)
    before = prefixes_in_main(ns)
    ipr = IPRoute(netns=ns.name)
    try:
        dsts = []
        for i in range(n):
            a = BASE + (i << 2)
            dsts.append(f"{a >> 24}.{(a >> 16) & 255}.{(a >> 8) & 255}.{a & 255}/30")
        with Clock() as clock:
            for dst in dsts:
                ipr.route("add", dst=dst, gateway=GATEWAY, proto=PROTO)
        _check(ns, before, n, "pyroute2")
        t1 = time.perf_counter()
        dumped = list(ipr.get_routes(family=2, table=254))
        dump_took = time.perf_counter() - t1
    finally:
        ipr.close()
    # Our dump of the same table, for the choice between the two parsers.
    fib = NetlinkFib(PROTO, netns=ns.name)
    t2 = time.perf_counter()
    ours = fib.dump_sync()
    ours_took = time.perf_counter() - t2
    fib.close()
    return {
        f"fib_install_routes_per_s_pyroute2_{n}": n / clock.wall,
        f"fib_install_routes_per_cpu_s_pyroute2_{n}": n / clock.cpu,
        f"fib_dump_routes_per_s_pyroute2_{n}": len(dumped) / dump_took,
        f"fib_dump_routes_per_s_ours_same_table_{n}": len(ours) / ours_took,
    }


def run(lab: Lab, sizes: Sequence[int], pyroute2_size: int, runs: int = 3) -> dict[str, float]:
    """Medians over ``runs`` interleaved rounds, so a noisy neighbour hits every tool alike."""
    samples: dict[str, list[float]] = {}
    for _ in range(runs):
        for n in sizes:
            for bench in (bench_ip_batch, bench_ours):
                for name, value in bench(lab, n).items():
                    samples.setdefault(name, []).append(value)
    figures = {name: statistics.median(values) for name, values in samples.items()}
    for n in sizes:
        for unit in ("s", "cpu_s"):
            figures[f"fib_install_ratio_ours_vs_ip_batch_per_{unit}_{n}"] = (
                figures[f"fib_install_routes_per_{unit}_ours_{n}"]
                / figures[f"fib_install_routes_per_{unit}_ip_batch_{n}"]
            )
    figures |= bench_manager(lab, max(sizes))
    figures |= bench_delete_order(lab, max(sizes))
    if pyroute2_size:
        k = min(pyroute2_size, 100_000)
        figures |= bench_pyroute2(lab, k)
        figures[f"fib_install_ratio_ours_{min(sizes)}_vs_pyroute2_{k}"] = (
            figures[f"fib_install_routes_per_s_ours_{min(sizes)}"]
            / figures[f"fib_install_routes_per_s_pyroute2_{k}"]
        )
    return figures


def _fractional(name: str) -> bool:
    return "ratio" in name or "_seconds_" in name or name.startswith("fib_delete_cpu_s_")


def _load() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


@pytest.mark.slow
def test_fib_install_rates(lab: Lab) -> None:
    require_root()
    for name, value in run(lab, (100_000, 500_000), 20_000).items():
        print(f"{name}: {value:.2f}" if _fractional(name) else f"{name}: {value:.0f}")


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m tests.bench.bench_fib", description=__doc__)
    p.add_argument("--sizes", default="100000,500000", help="route counts, comma separated")
    p.add_argument("--pyroute2", type=int, default=20_000, help="pyroute2 count (<=100k; 0=skip)")
    p.add_argument("--runs", type=int, default=3, help="rounds; figures are medians")
    args = p.parse_args(argv)
    require_netns()
    print(f"load_average_at_start: {_load()}")
    with Lab() as lab:
        sizes = [int(x) for x in args.sizes.split(",") if x]
        for name, value in run(lab, sizes, args.pyroute2, args.runs).items():
            print(f"{name}: {value:.2f}" if _fractional(name) else f"{name}: {value:.0f}")
    print(f"load_average_at_end: {_load()}")


if __name__ == "__main__":
    main()
