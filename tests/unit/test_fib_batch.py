"""The route worker's batches to the FIB: one call per decided slice, the same routes in the
kernel as one call per prefix would leave, and no Python call per prefix on the way."""

from __future__ import annotations

import asyncio
import sys
import tracemalloc
from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from bgpd.fib.fake import FakeFib
from bgpd.fib.manager import FibManager
from bgpd.fib.prefixtable import PrefixTable
from bgpd.fib.types import NextHop, Route, parse_addr, parse_prefix, route_of
from bgpd.kernel import KernelRoutes
from bgpd.speaker.attributes import PathAttributes
from bgpd.speaker.rib import Destination, Path, Source
from bgpd.speaker.types import IPV4_UNICAST
from tests.bench.bench_fib_path import _daemon, _fib_sink, _updates, fib_bytes

FAM = IPV4_UNICAST
ATTRS = PathAttributes(origin=0)
# Two gateways on the connected network, one that nothing reaches.
GATEWAYS = [parse_addr(a)[1] for a in ("198.18.0.2", "198.18.0.3", "198.19.7.9")]
PREFIXES = [(parse_prefix(f"10.244.{i}.0/26")[1], 26) for i in range(8)]


def _path(gw: int | None) -> Path:
    if gw is None:
        return Path(Source("", 0, 0, 0, False, local=True), ATTRS, ())
    return Path(Source("198.18.0.2", gw, gw, 64513, True), ATTRS, (gw,))


def _entry(choice: tuple) -> Path | Destination | None:
    """('gone',), ('local',), ('path', i) or ('multi', [i, ...]) as the Loc-RIB holds it."""
    kind = choice[0]
    if kind == "gone":
        return None
    if kind == "local":
        return _path(None)
    if kind == "path":
        return _path(GATEWAYS[choice[1]])
    d = Destination()
    paths = tuple(_path(GATEWAYS[i]) for i in choice[1])
    d.paths.extend(paths)
    d.txs.extend(range(1, len(paths) + 1))
    if paths:
        d.best, d.multipath = paths[0], paths
    return d


choices = st.one_of(
    st.just(("gone",)),
    st.just(("local",)),
    st.tuples(st.just("path"), st.integers(0, 2)),
    st.tuples(st.just("multi"), st.lists(st.integers(0, 2), max_size=3)),
)
slices = st.lists(
    st.tuples(
        st.dictionaries(st.integers(0, len(PREFIXES) - 1), choices, min_size=1, max_size=8),
        st.integers(0, 3),  # loop turns before the next slice (writes land in between)
        # then the operator deletes our route at a prefix, if there is one (the monitor tells)
        st.none() | st.integers(0, len(PREFIXES) - 1),
    ),
    min_size=1,
    max_size=8,
)


async def _fed(
    plan: list, converge_at: int, foreign: int | None, batch: bool, write_max: int = 4
) -> tuple[FibManager, FakeFib]:
    fake = FakeFib()
    fake.external_add(Route(parse_prefix("198.18.0.0/24"), (NextHop(None, "eth0"),)), protocol=2)
    if foreign is not None:
        # Another protocol's route at our metric: the kernel refuses ours there (EEXIST).
        at = _key(PREFIXES[foreign])
        fake.external_add(Route(at, (NextHop(GATEWAYS[0]),)), protocol=4)
    mgr = FibManager(fake, slice_size=1, write_max=write_max)
    await mgr.start()
    bridge = KernelRoutes(mgr)
    for n, (changes, turns, operator) in enumerate(plan):
        if n == converge_at:
            mgr.converged()
        items = [(PREFIXES[i], _entry(c)) for i, c in changes.items()]
        if batch:
            bridge.sink_batch(FAM, items)
        else:
            for prefix, entry in items:
                best = entry is not None and entry.best is not None
                bridge.sink(FAM, prefix, entry.multipath if best else None)
        for _ in range(turns):
            await asyncio.sleep(0)
        if operator is not None:
            fake.external_delete(_key(PREFIXES[operator]), protocol=fake.protocol)
    mgr.converged()
    await mgr.settle()
    if all(step[2] is None for step in plan):
        _check_installed(mgr, fake)
    # A delete the monitor reports while the write is in flight is left to the periodic scan.
    mgr._resync_wanted = True
    mgr._kick()
    await mgr.settle()
    return mgr, fake


def _check_installed(mgr: FibManager, fake: FakeFib) -> None:
    """The manager's idea of the kernel (desired, except where it differs) is the kernel."""
    known = {p: route_of(p, h) for p, h in mgr.installed.items()}  # type: ignore[arg-type]
    assert known == fake.ours_in_kernel()
    assert mgr.routes_installed == len(known)
    assert mgr.routes_by_family() == {4: len(known), 6: 0}


def _key(prefix: tuple[int, int]) -> tuple[int, int, int]:
    return (4, prefix[0], prefix[1])


@settings(max_examples=150, deadline=None)
@given(
    plan=slices,
    converge_at=st.integers(0, 8),
    foreign=st.none() | st.integers(0, len(PREFIXES) - 1),
    write_max=st.sampled_from([1, 4]),  # 1: a busy writer holds the next slices as runs
)
def test_a_slice_in_one_call_leaves_what_one_call_per_prefix_leaves(
    plan, converge_at, foreign, write_max
):
    async def run():
        one, fake_one = await _fed(plan, converge_at, foreign, False, write_max)
        many, fake_many = await _fed(plan, converge_at, foreign, True, write_max)
        try:
            _check_installed(one, fake_one)
            _check_installed(many, fake_many)
            assert fake_many.ours_in_kernel() == fake_one.ours_in_kernel()
            assert many.desired == one.desired
            assert many.installed == one.installed
            # Next-hop bookkeeping: one reference per desired prefix, gateways tracked alike.
            assert sorted(many._refs.values()) == sorted(one._refs.values())
            assert sum(many._refs.values()) == len(many.desired)
            assert many._gw_refs == one._gw_refs
            # (Errors may differ: the queue coalesces changes that a slice decided at once writes.)
            assert many.in_sync and one.in_sync
        finally:
            await one.stop()
            await many.stop()

    asyncio.run(run())


# The modules of the path (the Loc-RIB's own decision is not counted).
FIB_PATH = ("bgpd/daemon.py", "bgpd/kernel.py", "bgpd/standalone.py", "manager.py", "kernelsync.py")


async def test_the_fib_path_makes_no_python_call_per_prefix():
    """Decided slices reach the kernel writer in one call chain per slice: per prefix there is
    no sink, want/withdraw, or helper call (it was 5-6 calls per prefix, ~2 us of the loop)."""
    n = 8000
    d, peer = _daemon()
    mgr = await _fib_sink(d)
    calls: Counter[str] = Counter()

    def count(frame, event, _arg):  # type: ignore[no-untyped-def]
        code = frame.f_code
        if event == "call" and code.co_filename.endswith(FIB_PATH):
            calls[f"{code.co_name}@{code.co_filename}:{code.co_firstlineno}"] += 1

    for load in (True, False):
        calls.clear()
        for u in _updates(n, withdraw=not load):
            d._on_update(peer, u)  # type: ignore[arg-type]
        assert d.loc_rib.pending() == n
        sys.setprofile(count)
        try:
            while d.loc_rib.pending():
                d._decide_slice()
            await mgr.settle()
        finally:
            sys.setprofile(None)
        assert mgr.routes_installed == (n if load else 0)
        per_prefix = {k: v for k, v in calls.items() if v >= n // 2}
        assert not per_prefix, f"called once per prefix or more: {per_prefix}"
        assert calls["sink"] == calls["want"] == calls["withdraw"] == 0
        assert sum(calls.values()) < n / 40, calls.most_common(12)  # ~20 per slice of 2000
    await mgr.stop()


async def test_a_load_through_the_batch_path_costs_bytes_not_objects():
    """Per route the FIB stage keeps its key, one desired entry and a share of the next hops:
    nothing for what the kernel holds once it is what desired says, and nothing of the
    in-flight tables once the load has landed, and keys shared with the RIB (148 -> 42
    bytes per route at 500k, bench_fib_path --memory; 30 at this size, 153 before)."""
    got = await fib_bytes(20_000)
    assert got["fib_stage_bytes_per_route_20000"] < 60, got


async def test_counting_the_routes_builds_nothing_per_route():
    """Metrics ask for the routes by family on every scrape: with the kernel's routes kept as
    desired-except-where-it-differs, counting must not walk (or build) a prefix per route."""
    mgr = FibManager(FakeFib(), resolve=False, watch=False)
    await mgr.start()
    bridge = KernelRoutes(mgr)
    keys = [(0x0A000000 + (i << 8), 24) for i in range(20_000)]
    bridge.sink_batch(FAM, [(k, _path(GATEWAYS[0])) for k in keys])
    await mgr.settle()
    tracemalloc.start()
    counts = mgr.routes_by_family()
    installed = mgr.routes_installed
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert counts == {4: 20_000, 6: 0} and installed == 20_000
    assert peak < 20_000, f"{peak} bytes to count 20k routes"
    await mgr.stop()


async def test_the_fib_keeps_the_ribs_own_key_objects():
    """desired is keyed by the very (addr, len) tuples the RIB holds: a (version, addr, len)
    key per route cost 64 bytes (32 MB at 500k); what the kernel holds costs nothing more."""
    fake = FakeFib()
    mgr = FibManager(fake, resolve=False, watch=False)
    await mgr.start()
    bridge = KernelRoutes(mgr)
    keys = [(0x0A000000 + (i << 8), 24) for i in range(50)]
    bridge.sink_batch(FAM, [(k, _path(GATEWAYS[0])) for k in keys])
    await mgr.settle()
    held = {id(k) for k in mgr.desired.tables[4]}
    assert held == {id(k) for k in keys}
    assert len(fake.ours_in_kernel()) == 50 and not mgr._differs
    bridge.sink_batch(FAM, [(k, None) for k in keys[:10]])
    await mgr.settle()
    assert len(fake.ours_in_kernel()) == 40 == mgr.routes_installed == len(mgr.desired)
    await mgr.stop()


@settings(max_examples=100, deadline=None)
@given(
    ops=st.lists(
        st.tuples(
            st.sampled_from(["set", "pop", "del", "get"]),
            st.sampled_from([4, 6]),
            st.integers(0, 3),
            st.integers(0, 9),
        ),
        max_size=30,
    )
)
def test_a_prefix_table_behaves_as_a_dict_of_prefixes(ops):
    table: PrefixTable[int] = PrefixTable()
    plain: dict = {}
    for op, version, addr, value in ops:
        prefix = (version, addr, 24)
        if op == "set":
            table[prefix] = plain[prefix] = value
        elif op == "pop":
            assert table.pop(prefix, None) == plain.pop(prefix, None)
        elif op == "del" and prefix in plain:
            del table[prefix], plain[prefix]
        else:
            assert table.get(prefix) == plain.get(prefix)
        assert (prefix in table) == (prefix in plain)
        assert len(table) == len(plain) and bool(table) == bool(plain)
    assert dict(table.items()) == plain and set(table) == set(plain) and table == plain
    assert sorted(table.values()) == sorted(plain.values())


async def test_slices_wait_as_runs_while_the_writer_is_busy_and_land_in_order():
    """With the kernel busy and the next write full, later slices are held as the bridge gave
    them (no per-prefix state) and decided once there is room; a per-prefix change that
    comes after them still wins, and a withdrawal held behind an announcement is kept."""

    class GatedFib(FakeFib):
        def __init__(self) -> None:
            super().__init__()
            self.gate = asyncio.Event()

        async def _write(self, writes, deletes):  # type: ignore[no-untyped-def]
            await self.gate.wait()
            return await super()._write(writes, deletes)

    fake = GatedFib()
    mgr = FibManager(fake, resolve=False, watch=False, slice_size=4, write_max=4)
    await mgr.start()
    bridge = KernelRoutes(mgr)
    keys = [(0x0A000000 + (i << 8), 24) for i in range(40)]
    gw_a, gw_b = GATEWAYS[0], GATEWAYS[1]
    for i in range(0, 40, 10):  # the first is written, the second fills the next write
        bridge.sink_batch(FAM, [(k, _path(gw_a)) for k in keys[i : i + 10]])
    assert len(mgr._held) == 2 and not mgr._pending
    bridge.sink_batch(FAM, [(k, None) for k in keys[30:35]])  # held behind its announcement
    assert len(mgr._held) == 3
    assert mgr.backlog() == 10 + 25  # the next write, and the held runs
    mgr.update(Route(_key(keys[25]), (NextHop(gw_b),)))  # after the held runs: it wins
    assert not mgr._held and len(mgr._pending) == 20
    assert mgr.backlog() == 10 + 20
    fake.gate.set()
    await mgr.settle()
    got = fake.ours_in_kernel()
    assert set(got) == {_key(k) for k in keys[:30] + keys[35:]}
    assert got[_key(keys[25])].nexthops == (NextHop(gw_b),)
    assert got[_key(keys[0])].nexthops == (NextHop(gw_a),)
    assert mgr.routes_installed == 35 and mgr.netlink_errors == 0
    await mgr.stop()


async def test_held_runs_are_decided_while_the_kernel_takes_the_last_write():
    """No per-prefix queue entry for a backlog: held runs go straight to the next write."""

    class SlowFib(FakeFib):
        async def _write(self, writes, deletes):  # type: ignore[no-untyped-def]
            for _ in range(3):
                await asyncio.sleep(0)
            return await super()._write(writes, deletes)

    fake = SlowFib()
    mgr = FibManager(fake, resolve=False, watch=False, slice_size=8, write_max=8)
    await mgr.start()
    bridge = KernelRoutes(mgr)
    keys = [(0x0A000000 + (i << 8), 24) for i in range(200)]
    queued = 0
    for i in range(0, 200, 20):
        bridge.sink_batch(FAM, [(k, _path(GATEWAYS[0])) for k in keys[i : i + 20]])
        queued = max(queued, len(mgr._pending))
    assert mgr._held
    await mgr.settle()
    assert queued == 0 and len(fake.ours_in_kernel()) == 200 == mgr.routes_installed
    assert {id(k) for k in mgr.desired.tables[4]} == {id(k) for k in keys}
    await mgr.stop()


async def test_a_scan_reads_the_kernel_without_an_entry_per_route_first():
    """A periodic scan (every scan_time) loads the kernel's dump: marking every desired
    prefix absent first cost a 3-tuple and an entry per route (135 bytes per route at 100k
    beyond the dump itself); counting the desired routes found costs nothing per route when
    none is missing. When one is, it is found and repaired."""
    n = 20_000
    fake = FakeFib()
    mgr = FibManager(fake, resolve=False, watch=False)
    await mgr.start()
    bridge = KernelRoutes(mgr)
    keys = [(0x0A000000 + (i << 8), 24) for i in range(n)]
    for i in range(0, n, 2000):
        bridge.sink_batch(FAM, [(k, _path(GATEWAYS[0])) for k in keys[i : i + 2000]])
        await asyncio.sleep(0)
    await mgr.settle()
    dump = await fake.dump()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    await mgr._load_sliced(dump)
    peak = (tracemalloc.get_traced_memory()[1] - base) / n
    tracemalloc.stop()
    assert peak < 10, f"{peak:.0f} bytes per route"
    assert mgr.routes_installed == n and not mgr._differs
    fake.external_delete(_key(keys[7]))  # unseen by the manager (no monitor)
    await mgr._load_sliced(await fake.dump())
    assert mgr.routes_installed == n - 1 and list(mgr._differs) == [_key(keys[7])]
    mgr._resync_wanted = True
    mgr._kick()
    await mgr.settle()
    assert len(fake.ours_in_kernel()) == n and mgr.repairs_by_type["added"] == 1
    await mgr.stop()
