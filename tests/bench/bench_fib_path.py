"""Event-loop CPU per route on the FIB path: the route worker's decided slices -> the bridge
(`bgpd.kernel.KernelRoutes`) -> `FibManager` -> writes handed to the kernel writer.

The kernel is a `NullFib` (takes every write, holds nothing), so what is timed is the loop's
Python work alone, with `time.process_time` (the writer thread's kernel time is not the
loop's). Two daemons load the same table: one hands its changes to a sink that does nothing,
the other to the FIB bridge as `bgpd -f` wires it; the difference per route is the FIB path.
Both the load (N prefixes, 500 per UPDATE, one next hop) and the withdrawal of everything.

    .venv/bin/python -m tests.bench.bench_fib_path [--prefixes 100000] [--repeat 5]
    .venv/bin/python -m tests.bench.bench_fib_path --memory 100000,500000   # bytes per route

Prints `name: value` lines (microseconds per route, best of --repeat); never asserts a number.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import time
import tracemalloc

from bgpd.config import parse_config
from bgpd.daemon import Daemon
from bgpd.fib.base import Fib
from bgpd.fib.manager import DAEMON_SLICE, DAEMON_WRITE_MAX, FibManager
from bgpd.kernel import KernelRoutes
from bgpd.speaker.attributes import AS_SEQUENCE, PathAttributes
from bgpd.speaker.messages import Update
from bgpd.speaker.rib import Path as RibPath
from bgpd.speaker.rib import Source
from bgpd.speaker.types import IPV4_UNICAST
from bgpd.standalone import live_batch_sink, live_sink
from tests.bench.bench_rib_memory import CONFIG  # the same one-neighbor daemon

FAM = IPV4_UNICAST
PEER_ADDR = 0xC6120002
NEXT_HOP = (0xC6120002,)
PER_UPDATE = 500


class NullFib(Fib):
    """A kernel that takes every write and holds nothing."""

    async def _write(self, writes, deletes):  # type: ignore[no-untyped-def]
        return []

    async def _dump(self, table):  # type: ignore[no-untyped-def]
        return []


def _daemon() -> tuple[Daemon, object]:
    from bgpd.neighbors import Peer

    d = Daemon(parse_config(CONFIG))
    nb = d.config.neighbors[0]
    peer = Peer(nb, None)  # type: ignore[arg-type]
    peer.source = Source(nb.address, PEER_ADDR, PEER_ADDR, 64513, True)
    d.peers[nb.address] = peer
    d.sink_from_start()
    return d, peer


def _updates(n: int, withdraw: bool) -> list[Update]:
    out = []
    for start in range(0, n, PER_UPDATE):
        nlri = [(0x64400000 + (i << 3), 29, 0) for i in range(start, min(n, start + PER_UPDATE))]
        if withdraw:
            out.append(Update(withdraw={FAM: nlri}))
        else:
            attrs = PathAttributes(origin=0, as_path=((AS_SEQUENCE, (64513,)),), med=start)
            out.append(Update(attrs=attrs, announce={FAM: nlri}, next_hop={FAM: NEXT_HOP}))
    return out


def _null_sink(d: Daemon) -> None:
    d.route_sink = lambda fam, prefix, paths: None
    d.route_sink_batch = lambda fam, items: None


async def _fib_sink(d: Daemon) -> FibManager:
    mgr = FibManager(
        NullFib(80, 254),
        watch=False,
        resolve=False,
        slice_size=DAEMON_SLICE,
        write_max=DAEMON_WRITE_MAX,
    )
    await mgr.start()
    kernel = KernelRoutes(mgr)
    d.route_sink = live_sink(d, kernel.sink)
    d.route_sink_batch = live_batch_sink(d, kernel.sink_batch)
    return mgr


async def _phase(d: Daemon, peer: object, updates: list[Update], mgr: FibManager | None) -> float:
    """CPU seconds for the worker to decide what `updates` changed and the FIB to write it."""
    for u in updates:
        d._on_update(peer, u)  # type: ignore[arg-type]
    gc.collect()
    t0 = time.process_time()
    while d.loc_rib.pending():
        d._decide_slice()
        await asyncio.sleep(0)
    if mgr is not None:
        await mgr.settle()
    return time.process_time() - t0


async def one_run(n: int, with_fib: bool) -> tuple[float, float]:
    d, peer = _daemon()
    mgr = await _fib_sink(d) if with_fib else None
    if mgr is None:
        _null_sink(d)
    load = await _phase(d, peer, _updates(n, False), mgr)
    if mgr is not None:
        assert mgr.routes_installed == n, mgr.routes_installed
    gone = await _phase(d, peer, _updates(n, True), mgr)
    if mgr is not None:
        assert mgr.routes_installed == 0, mgr.routes_installed
        await mgr.stop()
    return load, gone


async def measure(n: int, repeat: int) -> dict[str, float]:
    best: dict[str, float] = {}
    for _ in range(repeat):
        for with_fib in (False, True):
            load, gone = await one_run(n, with_fib)
            tag = "fib" if with_fib else "nosink"
            for phase, spent in (("load", load), ("withdraw", gone)):
                name = f"{phase}_{tag}_us_per_route"
                best[name] = min(best.get(name, float("inf")), spent / n * 1e6)
    for phase in ("load", "withdraw"):
        best[f"{phase}_fib_path_us_per_route"] = (
            best[f"{phase}_fib_us_per_route"] - best[f"{phase}_nosink_us_per_route"]
        )
    return best


class SlowFib(NullFib):
    """A kernel half as fast as the loop feeds it (a loop turn per 1000 routes written):
    decided routes pile up behind the write in flight, as they do at 500k."""

    async def _write(self, writes, deletes):  # type: ignore[no-untyped-def]
        for _ in range((len(writes) + len(deletes)) // 1000):
            await asyncio.sleep(0)
        return []


async def fib_bytes(n: int, slow: bool = False) -> dict[str, float]:
    """tracemalloc bytes per route held by the FIB stage (bridge + manager) once `n` routes
    are in the kernel, and the peak on the way, fed as the route worker feeds it: slices of
    2000 Loc-RIB entries, one shared Path per 500 prefixes. ``slow``: see SlowFib."""
    tag = "_slow_kernel" if slow else ""
    mgr = FibManager(
        (SlowFib if slow else NullFib)(80, 254),
        watch=False,
        resolve=False,
        slice_size=DAEMON_SLICE,
        write_max=DAEMON_WRITE_MAX,
    )
    await mgr.start()
    bridge = KernelRoutes(mgr)
    src = Source("198.18.0.2", PEER_ADDR, PEER_ADDR, 64513, True)
    attrs = PathAttributes(origin=0)
    keys = [(0x64400000 + (i << 3), 29) for i in range(n)]
    paths = [RibPath(src, attrs, NEXT_HOP) for _ in range(0, n, PER_UPDATE)]
    items = [(k, paths[i // PER_UPDATE]) for i, k in enumerate(keys)]
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    for i in range(0, n, 2000):
        bridge.sink_batch(FAM, items[i : i + 2000])
        await asyncio.sleep(0)
    await mgr.settle()
    gc.collect()
    held, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert mgr.routes_installed == n, mgr.routes_installed
    await mgr.stop()
    return {
        f"fib_stage_bytes_per_route{tag}_{n}": (held - base) / n,
        f"fib_stage_peak_bytes_per_route{tag}_{n}": (peak - base) / n,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prefixes", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument(
        "--memory", type=str, default="", help="sizes for tracemalloc bytes, e.g. 100000,500000"
    )
    args = ap.parse_args()
    if args.memory:
        for size in args.memory.split(","):
            for slow in (False, True):
                for name, value in asyncio.run(fib_bytes(int(size), slow)).items():
                    print(f"{name}: {value:.1f}")
        return
    for name, value in asyncio.run(measure(args.prefixes, args.repeat)).items():
        print(f"{name}: {value:.2f}")


if __name__ == "__main__":
    main()
