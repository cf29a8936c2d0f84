"""FibManager: the one task that owns the desired routes and keeps the kernel's copy in step.

``update``/``withdraw`` only queue (last change per prefix wins) and wake the task, which
writes in slices so 100k changes never hold the event loop long. At start it reads our routes
from the kernel and keeps them until ``converged()`` (End-of-RIB or the GR timer); once the
queue has drained it then deletes those of ours nobody wants any more.

Per prefix it keeps only the prefix and an interned next-hop set (``Hops``): 500k routes
through one gateway share one tuple, where a Route per prefix cost ~500 bytes each.
A full resync every ``scan_time`` seconds, and the route monitor in between, repair what someone
else deleted or changed; other protocols' routes are never touched, only reported.

Next hops: a gateway that is not on a connected network is resolved through the kernel's other
routes; ``on_reachability(version, gateway, reachable)`` tells the RIB when that answer changes
(and once for a gateway that is unreachable when first used), so best-path selection can drop
or restore paths through it. The RIB then sends updates as usual.

The start-up load, prune, resync and route-monitor handling are in `bgpd.fib.kernelsync`
(`KernelSync`, a base class of `FibManager`); the RIB bridge's batch path (``want_runs``,
runs decided at once or held while the writer is busy) in `bgpd.fib.batch` (`BatchPath`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from operator import itemgetter

from bgpd.fib.base import Fib
from bgpd.fib.batch import BatchPath
from bgpd.fib.kernelsync import _ABSENT, _RECHECK, _SAME, KernelSync
from bgpd.fib.nexthop import NextHopResolver
from bgpd.fib.prefixtable import PrefixTable
from bgpd.fib.reconcile import Conflict, same_hops
from bgpd.fib.types import (
    MAIN_TABLE,
    Hops,
    NextHop,
    Prefix,
    Route,
    RouteError,
    addr_str,
    hops_of,
)

log = logging.getLogger("bgpd.fib")

ReachabilityCallback = Callable[[int, int, bool], None]
# (ip version, id of an interned Hops): the same next hops mean another thing in IPv6.
HopsKey = tuple[int, int]
# The prefix of a (prefix, hops, replace) write, in C: a generator resumed per route costs more.
_first = itemgetter(0)


class FibManager(BatchPath, KernelSync):
    """Owns desired vs installed routes for one Fib; see the module docstring.

    ``persist`` keeps our routes in the kernel on stop; ``scan_time`` is the period of the
    full resync (after convergence); ``slice_size`` bounds the routes decided per loop turn;
    ``write_max`` bounds the slices gathered into one write while the last is in the kernel;
    ``resolve`` turns next-hop resolution on; ``watch`` listens to the route monitor;
    ``on_error`` sees every refused route; ``on_batch`` gets each write's seconds (for a
    histogram). Counters are plain attributes, for bgpd/metrics.py to export.
    """

    def __init__(
        self,
        fib: Fib,
        *,
        persist: bool = True,
        scan_time: float = 30.0,
        slice_size: int = 2000,
        write_max: int = 0,
        resolve: bool = True,
        watch: bool = True,
        on_reachability: ReachabilityCallback | None = None,
        on_error: Callable[[RouteError], None] | None = None,
        on_batch: Callable[[float], None] | None = None,
    ) -> None:
        self.fib = fib
        fib.track_ours = False  # ``installed`` says which writes replace a route of ours
        self.on_batch = on_batch
        self.persist = persist
        self.scan_time = scan_time
        self.slice_size = slice_size
        self.write_max = max(write_max, slice_size)
        self.resolver = NextHopResolver(fib.protocol) if resolve else None
        self.watch = watch
        self.on_reachability = on_reachability
        self.on_error = on_error
        # prefix -> interned Hops we want (as the RIB gave them, before next-hop resolution)
        # (addr, len) keys per IP version: the RIB bridge hands in the RIB's own key objects.
        self.desired: PrefixTable[Hops] = PrefixTable()
        # Our route in the kernel where it is not ``desired[prefix]`` itself: its Hops, None
        # (ours, of a kind we never write) or _ABSENT. Once written, a route costs nothing
        # here: 500k routes held a second dict entry each (~42 bytes) that only repeated
        # desired. ``installed`` puts the two back together (see KernelSync._have).
        self._differs: dict[Prefix, object] = {}
        # prefix -> (protocol, metric, type) of every other route there, in our table
        self.foreign: dict[Prefix, list[tuple[int, int, int]]] = {}
        self.conflicts: dict[Prefix, Conflict] = {}
        self.recent_errors: deque[RouteError] = deque(maxlen=256)
        # Queued changes: the latest per prefix in a dict, their order in a deque (popping the
        # front of a dict is not O(1): CPython skips the dead entries on every iteration).
        self._pending: dict[Prefix, object] = {}
        self._order: deque[Prefix] = deque()
        self._repairing: set[Prefix] = set()
        # Prefixes decided and on their way to the kernel (buffered or being written).
        self._inflight: set[Prefix] = set()
        # The write the kernel is taking now, and the slices decided since (see _apply_slice).
        self._flight: asyncio.Future[list[RouteError]] | None = None
        # A second write queued behind it in the writer thread (see _launch).
        self._flight_next: asyncio.Future[list[RouteError]] | None = None
        self._next_writes: list[tuple[Prefix, Hops, bool]] = []
        self._next_deletes: list[Prefix] = []
        # Runs from the RIB bridge waiting for room in the next write (see want_runs).
        self._held: deque[tuple[int, Iterable[tuple[Hops | None, list[tuple[int, int]]]]]] = deque()
        # One tuple per distinct next-hop set. Caches below are keyed by (ip version, id()) of
        # these, which stay alive here: hashing a Hops hashes each NextHop in Python, per route.
        self._interned: dict[Hops, Hops] = {(): ()}
        self._last_hops: tuple[object, Hops] = ((), ())
        self._refs: dict[HopsKey, int] = {}  # desired prefixes using each Hops
        self._by_key: dict[HopsKey, Hops] = {}
        self._eff: dict[HopsKey, Hops | None] = {}  # Hops after next-hop resolution
        self._gw_refs: dict[tuple[int, int], int] = {}  # gateway -> distinct Hops using it
        self._gw_via: dict[tuple[int, int], int | None] = {}
        self._reach: dict[tuple[int, int], bool] = {}
        # Gateways the RIB asked about through reachable(): it must hear when they come back,
        # even though no route of ours uses them while they are unreachable.
        self._watched: set[tuple[int, int]] = set()
        self._link_up: dict[int, bool] = {}
        self._converged = False
        self._syncing = False  # a prune or resync is under way (works from a snapshot)
        self._prune_wanted = False
        self._resync_wanted = False
        self._gateways_dirty = False
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._close_monitor: Callable[[], None] | None = None
        self._next_scan = float("inf")
        # Counters, for metrics.
        self.netlink_errors = 0
        self.reconcile_repairs = 0
        self.repairs_by_type = {"added": 0, "removed": 0, "replaced": 0}
        self.last_sync_time: float | None = None  # wall clock of the last full resync
        self.resyncs = 0
        self.apply_batches = 0
        self.apply_seconds_total = 0.0
        self.last_apply_seconds = 0.0
        self.monitor_overruns = 0

    # -- the daemon's side -------------------------------------------------------------------

    @property
    def routes_installed(self) -> int:
        """Routes of ours in the kernel, as far as we know."""
        desired = self.desired
        n = len(desired)
        for prefix, have in self._differs.items():
            if have is _ABSENT:
                n -= prefix in desired
            else:
                n += prefix not in desired
        return n

    @property
    def is_converged(self) -> bool:
        return self._converged

    @property
    def in_sync(self) -> bool:
        """Converged, and nothing queued or known to need repair."""
        return self._converged and not self._has_work() and not self._repairing

    def routes_by_family(self) -> dict[int, int]:
        """Routes of ours installed, by IP version."""
        # Per metrics scrape: from the table sizes and _differs, nothing built per route.
        tables = self.desired.tables
        counts = {4: len(tables[4]), 6: len(tables[6])}
        for prefix, have in self._differs.items():
            wanted = (prefix[1], prefix[2]) in tables[prefix[0]]
            if have is _ABSENT:
                counts[prefix[0]] -= wanted
            else:
                counts[prefix[0]] += not wanted
        return counts

    def desired_route(self, prefix: Prefix) -> Route | None:
        """The route we want at ``prefix`` (before next-hop resolution), if any."""
        hops = self.desired.get(prefix)
        return None if hops is None else Route(prefix, hops, blackhole=not hops)

    def update(self, route: Route) -> None:
        """Want ``route`` in the kernel (replacing any other route of ours at its prefix)."""
        self.want(route.prefix, hops_of(route))

    def want(self, prefix: Prefix, hops: Hops) -> None:
        """``update`` without a Route: ``hops`` as a Route holds them (sorted, deduplicated;
        () for a blackhole). The RIB bridge's path, one call per prefix."""
        if self._held:
            self._unhold()  # they were asked for first
        last = self._last_hops
        if hops is last[0]:
            interned = last[1]
        else:
            interned = self._interned.get(hops)  # type: ignore[assignment]
            if interned is None:
                interned = self._interned[hops] = hops
            self._last_hops = (hops, interned)
        # _queue, inlined: the RIB bridge calls this once per prefix.
        pending = self._pending
        if prefix not in pending:
            self._order.append(prefix)
            if not pending:
                self._kick()
        pending[prefix] = interned

    def latest_hops(self, prefix: Prefix) -> Hops | None:
        """The next hops last asked for at ``prefix`` (queued or applied), None if none."""
        if self._held:
            self._unhold()
        value = self._pending.get(prefix, _RECHECK)
        if value is _RECHECK:
            return self.desired.get(prefix)
        return value  # type: ignore[return-value]

    def latest_routes(self) -> list[tuple[Prefix, Hops]]:
        """(prefix, next hops) of every route last asked for, queued or applied."""
        if self._held:
            self._unhold()
        pending = self._pending
        out = [(p, h) for p, h in self.desired.items() if pending.get(p, _RECHECK) is _RECHECK]
        out.extend(
            (p, v)  # type: ignore[misc]
            for p, v in pending.items()
            if v is not None and v is not _RECHECK
        )
        return out

    def withdraw(self, prefix: Prefix) -> None:
        """Want no route of ours at ``prefix``."""
        if self._held:
            self._unhold()
        pending = self._pending  # _queue, inlined as in want()
        if prefix not in pending:
            self._order.append(prefix)
            if not pending:
                self._kick()
        pending[prefix] = None

    def _queue(self, prefix: Prefix, value: object) -> None:
        pending = self._pending
        if prefix not in pending:
            self._order.append(prefix)
            if not pending:
                self._kick()  # while anything is queued the task is awake or about to be
        pending[prefix] = value

    def reachable(self, version: int, gateway: int) -> bool:
        """Whether ``gateway`` resolves through the kernel's other routes now (for the RIB's
        next-hop check; ``on_reachability`` reports changes)."""
        if self.resolver is None:
            return True
        key = (version, gateway)
        known = self._reach.get(key)
        if known is not None:
            return known
        via = self.resolver.resolve(version, gateway)
        if key not in self._watched:
            self._watched.add(key)
            self._gw_via.setdefault(key, via)
        self._reach[key] = via is not None
        return via is not None

    def converged(self) -> None:
        """The RIB is complete (End-of-RIB from all peers, or the GR timer): prune stale routes
        once what is queued now has been written."""
        if not self._converged:
            self._converged = True
            self._prune_wanted = True
            self._kick()

    async def start(self) -> None:
        """Read the kernel (our routes stay until converged), start monitor and owner task."""
        kernel = await self.fib.dump()
        self._load(kernel)
        if self.resolver is not None:
            main = kernel if self.fib.table == MAIN_TABLE else await self.fib.dump(MAIN_TABLE)
            self.resolver.load(main)
            for index, up in getattr(self.fib, "link_up", {}).items():
                self.resolver.link_changed(index, up)
                self._link_up[index] = up
            self._resolver_changed()
        if self.watch:
            self._close_monitor = self.fib.monitor(self._on_kernel_event)
        self._task = asyncio.create_task(self._run(), name="fib-manager")
        log.info(
            "fib: %d routes of protocol %d found in table %d; kept until converged",
            self.routes_installed,
            self.fib.protocol,
            self.fib.table,
        )

    async def stop(self) -> None:
        """Stop the task; with ``persist`` off, remove every route of ours first."""
        if self._close_monitor is not None:
            self._close_monitor()
            self._close_monitor = None
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        if self._flight is not None or self._next_writes or self._next_deletes:
            # The write the kernel is being handed now, and the slices decided after it: let
            # them finish, so the writer thread is done with the socket before it closes.
            try:
                await self._land()
            except (asyncio.CancelledError, Exception):
                log.exception("fib: the last write failed at stop")
        if not self.persist:
            kernel = await self.fib.dump()
            ours = [kr.prefix for kr in kernel if kr.protocol == self.fib.protocol]
            self._count_errors(await self.fib.write([], ours))
            self._differs = dict.fromkeys(self.desired, _ABSENT)
        self.fib.close()

    async def settle(self) -> None:
        """Wait until every queued change and repair has been written (tests, shutdown)."""
        while True:
            self._check_task()
            if self._idle.is_set() and not self._has_work():
                return
            await self._idle_or_task()

    # -- the owner task ----------------------------------------------------------------------

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._has_work():
                self._idle.set()
                timeout = max(0.0, self._next_scan - loop.time())
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout=min(timeout, 3600.0))
                except TimeoutError:
                    pass
                if loop.time() >= self._next_scan:
                    self._resync_wanted = True
                continue
            self._idle.clear()
            try:
                if self._resync_wanted:
                    self._resync_wanted = False
                    self._unhold()  # the scan must see them as asked for
                    self._syncing = True
                    try:
                        await self._resync()
                    finally:
                        self._syncing = False
                elif self._gateways_dirty:
                    self._gateways_dirty = False
                    self._recheck_gateways()
                elif self._pending:
                    await self._apply_slice()
                elif self._prune_wanted:
                    self._prune_wanted = False
                    self._unhold()
                    self._syncing = True
                    try:
                        await self._land()
                        await self._prune()
                    finally:
                        self._syncing = False
                elif (
                    self._flight is not None
                    or self._next_writes
                    or self._next_deletes
                    or self._held
                ):
                    await self._land_flight()
                    self._launch()
                    # The next write is prepared while the kernel takes this one, and queued
                    # behind it at once.
                    self._decide_held()
                    self._launch()
            except Exception:
                # A bug or an unexpected socket error must not end FIB programming; the next
                # scan starts from a fresh dump.
                log.exception("fib: write cycle failed; resync scheduled")
                self._resync_wanted = True
                await asyncio.sleep(1.0)
            await asyncio.sleep(0)

    def _has_work(self) -> bool:
        return (
            bool(self._pending)
            or self._resync_wanted
            or self._gateways_dirty
            or self._prune_wanted
            or self._flight is not None
            or bool(self._next_writes)
            or bool(self._next_deletes)
            or bool(self._held)
        )

    def _kick(self) -> None:
        self._idle.clear()
        self._wake.set()

    def _check_task(self) -> None:
        if self._task is None:
            raise RuntimeError("FibManager not started")
        if self._task.done():
            self._task.result()

    async def _idle_or_task(self) -> None:
        assert self._task is not None
        idle = asyncio.ensure_future(self._idle.wait())
        await asyncio.wait({idle, self._task}, return_when=asyncio.FIRST_COMPLETED)
        idle.cancel()
        await asyncio.sleep(0)

    # -- writing -----------------------------------------------------------------------------

    async def _apply_slice(self) -> None:
        """Turn up to ``slice_size`` queued changes into writes, then hand them to the kernel
        and return without waiting: the next slice is prepared while the writer thread and
        the kernel work on this one. A prefix still in flight waits for the next slice, so
        each is decided against what the kernel really holds."""
        writes: list[tuple[Prefix, Hops, bool]] = []
        deletes: list[Prefix] = []
        flying = self._inflight
        deferred: list[tuple[Prefix, object]] = []
        tables, differs, pending, order = (
            self.desired.tables,
            self._differs,
            self._pending,
            self._order,
        )
        repairing = self._repairing
        converged = self._converged
        effective = self._effective
        refs = self._refs
        # Most prefixes of a slice share one Hops: remember its resolution across the loop.
        last: tuple[int, object, Hops | None] = (0, None, None)
        for _ in range(min(self.slice_size, len(order))):
            prefix = order.popleft()
            value = pending.pop(prefix)
            if flying and prefix in flying:
                deferred.append((prefix, value))
                continue
            version = prefix[0]
            desired = tables[version]
            key = (prefix[1], prefix[2])
            explicit = value is None
            want: Hops | None
            # What the kernel holds, taken before desired changes (it may stand for it).
            have = differs.get(prefix, _SAME)
            if have is _SAME:
                have = desired.get(key, _ABSENT)
            if value is None:
                old = desired.pop(key, None)
                if old is not None:
                    self._unref(version, old)
                    if have is _ABSENT:
                        differs.pop(prefix, None)
                    else:
                        differs[prefix] = have
                want = None
            elif value is _RECHECK:
                cur = desired.get(key)
                want = None if cur is None else effective(version, cur)
            else:
                hops: Hops = value  # type: ignore[assignment]
                old = desired.get(key)
                if old is not hops:
                    desired[key] = hops
                    hkey = (version, id(hops))
                    n = refs.get(hkey)
                    if n is None:
                        self._ref_new(version, hops)
                    else:
                        refs[hkey] = n + 1
                    if old is not None:
                        self._unref(version, old)
                    if have is hops:
                        differs.pop(prefix, None)
                    else:
                        differs[prefix] = have
                if hops is last[1] and version == last[0]:
                    want = last[2]
                else:
                    want = effective(version, hops)
                    last = (version, hops, want)
            if want is None:
                if have is not _ABSENT and (explicit or key in desired or converged):
                    deletes.append(prefix)
                elif repairing:
                    repairing.discard(prefix)
            elif have is want or (
                have is not _ABSENT and same_hops(want, have)  # type: ignore[arg-type]
            ):
                if repairing:
                    repairing.discard(prefix)
            else:
                writes.append((prefix, want, have is not _ABSENT))
        for prefix, value in deferred:
            if prefix not in pending:
                order.append(prefix)
                pending[prefix] = value
        if writes or deletes:
            # Decided now against ``installed``: changes to these wait until they are written.
            flying.update(map(_first, writes))
            flying.update(deletes)
            self._next_writes.extend(writes)
            self._next_deletes.extend(deletes)
        flight = self._flight
        if flight is not None and (
            flight.done()
            or len(self._next_writes) + len(self._next_deletes) >= self.write_max
            or (deferred and not (writes or deletes))  # only waiting: don't spin
        ):
            await self._land_flight()
        self._launch()

    def _launch(self) -> None:
        """Hand the slices decided since the last write to the kernel, without waiting: the
        writer thread takes them in one go while the loop decides the next ones. With a write
        already in the kernel this one queues behind it in the writer thread (one at most),
        which goes on to it without waiting for a loop turn: with 64k routes per read to
        import, a turn can take longer than a write (the writer idled 10-35% of a 500k load)."""
        writes, deletes = self._next_writes, self._next_deletes
        if (writes or deletes) and self._flight_next is None:
            self._next_writes, self._next_deletes = [], []
            started = time.perf_counter()
            written = self.fib.submit(writes, deletes)  # FIFO: one writer thread
            flight = asyncio.ensure_future(
                self._finish_write(written, writes, deletes, False, started)
            )
            if self._flight is None:
                self._flight = flight
            else:
                self._flight_next = flight

    async def _land_flight(self) -> None:
        """Wait for the oldest write in flight and account for it."""
        flight = self._flight
        if flight is not None:
            try:
                await flight
            finally:
                self._flight, self._flight_next = self._flight_next, None

    async def _land(self) -> None:
        """Wait until everything decided so far has been written and accounted for."""
        while self._flight is not None or self._next_writes or self._next_deletes:
            await self._land_flight()
            self._launch()

    async def _write(
        self,
        writes: list[tuple[Prefix, Hops, bool]],
        deletes: list[Prefix],
        *,
        resync: bool = False,
    ) -> list[RouteError]:
        """Apply one slice and account for it; everything a resync writes is a repair, and
        so is a write the monitor asked for."""
        await self._land()
        return await self._start_write(writes, deletes, resync=resync)

    def _start_write(
        self,
        writes: list[tuple[Prefix, Hops, bool]],
        deletes: list[Prefix],
        *,
        resync: bool = False,
    ) -> Coroutine[None, None, list[RouteError]]:
        # Echoes of these writes may arrive before write() returns; they are not news. Set
        # now, not when the coroutine first runs: the next slice is prepared against it.
        self._inflight.update(map(_first, writes))
        self._inflight.update(deletes)
        started = time.perf_counter()
        return self._finish_write(
            self.fib.submit(writes, deletes), writes, deletes, resync, started
        )

    async def _finish_write(
        self,
        written: Awaitable[list[RouteError]],
        writes: list[tuple[Prefix, Hops, bool]],
        deletes: list[Prefix],
        resync: bool,
        started: float,
    ) -> list[RouteError]:
        try:
            errors = await written
        finally:
            inflight = self._inflight
            inflight.difference_update(map(_first, writes))
            inflight.difference_update(deletes)
        elapsed = time.perf_counter() - started
        self.apply_batches += 1
        self.apply_seconds_total += elapsed
        self.last_apply_seconds = elapsed
        if self.on_batch is not None:
            self.on_batch(elapsed)
        differs, tables = self._differs, self.desired.tables
        repairing = self._repairing
        if not errors and not resync and not repairing:
            # _set_have, inlined: once written, a route is what desired says (most often).
            for prefix, hops, _replace in writes:
                if tables[prefix[0]].get((prefix[1], prefix[2])) is hops:
                    differs.pop(prefix, None)
                else:
                    differs[prefix] = hops
            for prefix in deletes:
                if (prefix[1], prefix[2]) in tables[prefix[0]]:
                    differs[prefix] = _ABSENT
                else:
                    differs.pop(prefix, None)
            self._shrink()
            return errors
        failed = {e.prefix for e in errors}
        for prefix, hops, _replace in writes:
            if prefix in failed:
                continue
            if resync or prefix in repairing:
                self._repaired("replaced" if self._have(prefix) is not _ABSENT else "added")
            self._set_have(prefix, hops)
        for prefix in deletes:
            if prefix in failed:
                continue
            if resync or prefix in repairing:
                self._repaired("removed")
            self._set_have(prefix, _ABSENT)
        if repairing:
            repairing.difference_update(map(_first, writes))
            repairing.difference_update(deletes)
        self._shrink()
        self._count_errors(errors)
        return errors

    def _shrink(self) -> None:
        """A dict or set never shrinks as entries leave: one that held a load's routes in
        flight (up to write_max and the queue behind it) kept its table after they landed,
        at 500k some 10 MiB for nothing. Let the emptied ones go."""
        if not self._differs:
            self._differs = {}
        if not self._inflight:
            self._inflight = set()
        if not self._pending:
            self._pending = {}

    def _repaired(self, kind: str) -> None:
        self.reconcile_repairs += 1
        self.repairs_by_type[kind] += 1

    def _count_errors(self, errors: Iterable[RouteError]) -> None:
        for e in errors:
            self.netlink_errors += 1
            self.recent_errors.append(e)
            log.warning("fib: %s", e)
            if self.on_error is not None:
                self.on_error(e)

    # -- next hops ---------------------------------------------------------------------------

    def _resolver_changed(self) -> None:
        self._eff.clear()
        self._reach.clear()

    def _effective(self, version: int, hops: Hops) -> Hops | None:
        """``hops`` with each gateway resolved to a connected one; paths that cannot be
        reached are dropped, and None means no path is left. Cached per interned Hops."""
        if not hops or self.resolver is None:
            return hops
        key = (version, id(hops))
        eff = self._eff
        if key in eff:
            return eff[key]
        out: list[NextHop] = []
        changed = False
        for hop in hops:
            if hop.gateway is None or hop.device is not None:
                out.append(hop)
                continue
            resolved = self.resolver.resolve(version, hop.gateway)
            if resolved is None:
                changed = True
            elif resolved != hop.gateway:
                out.append(NextHop(resolved))
                changed = True
            else:
                out.append(hop)
        result: Hops | None
        if not changed:
            result = hops
        elif not out:
            result = None
        else:
            made = Route((version, 0, 0), tuple(out)).nexthops  # sorted, deduplicated
            result = self._interned.setdefault(made, made)
        eff[key] = result
        return result

    def _ref_new(self, version: int, hops: Hops) -> None:
        """The first desired prefix with ``hops``: track its gateways."""
        self._refs[(version, id(hops))] = 1
        self._by_key[(version, id(hops))] = hops
        if self.resolver is None:
            return
        for key in _gateways(version, hops):
            n = self._gw_refs.get(key, 0)
            self._gw_refs[key] = n + 1
            if n == 0 and key not in self._gw_via:
                via = self.resolver.resolve(*key)
                self._gw_via[key] = via
                if via is None:
                    self._tell(key, False)

    def _unref(self, version: int, hops: Hops, count: int = 1) -> None:
        hkey = (version, id(hops))
        n = self._refs[hkey] - count
        if n:
            self._refs[hkey] = n
            return
        del self._refs[hkey]
        del self._by_key[hkey]
        if self.resolver is None:
            return  # _ref_new tracked no gateways
        for key in _gateways(version, hops):
            left = self._gw_refs[key] - 1
            if left:
                self._gw_refs[key] = left
                continue
            del self._gw_refs[key]
            if key not in self._watched:
                self._gw_via.pop(key, None)

    def _tell(self, key: tuple[int, int], reachable: bool) -> None:
        state = "reachable" if reachable else "unreachable"
        log.info("fib: next hop %s %s", addr_str(*key), state)
        if self.on_reachability is not None:
            self.on_reachability(key[0], key[1], reachable)

    def _recheck_gateways(self, *, requeue: bool = True) -> None:
        assert self.resolver is not None
        self._resolver_changed()
        moved: set[tuple[int, int]] = set()
        for key in list(self._gw_via):
            via = self.resolver.resolve(*key)
            before = self._gw_via.get(key)
            if via == before:
                continue
            self._gw_via[key] = via
            if (via is None) != (before is None):
                self._tell(key, via is not None)
            if key in self._gw_refs:
                moved.add(key)
        if not requeue or not moved:
            return
        # Rare (a gateway moved): find the prefixes through it with one pass over desired.
        affected = {
            hkey
            for hkey, hops in self._by_key.items()
            if any(k in moved for k in _gateways(hkey[0], hops))
        }
        pending = self._pending
        for prefix, hops in self.desired.items():
            if (prefix[0], id(hops)) in affected and prefix not in pending:
                self._queue(prefix, _RECHECK)


def _gateways(version: int, hops: Hops) -> list[tuple[int, int]]:
    """(version, gateway) of the hops that need resolving (a gateway without a device)."""
    return [(version, h.gateway) for h in hops if h.gateway is not None and h.device is None]


# The daemon's slice: changes decided per loop turn.
DAEMON_SLICE = 4096
# Messages per sendmsg. While the RIB keeps the loop busy, the writer thread waits for the GIL
# after each syscall (up to the 5 ms switch interval), so fewer, bigger batches keep the
# kernel fed; 16k v4 routes are ~0.9 MB of a 4 MB send buffer.
DAEMON_SENDMSG = 16384
# Slices gathered into one write while the kernel takes the last: one sendmsg's worth. With
# the reader throttle (bgpd.throttle) holding the rest back, a deeper write only held more
# routes in flight, at ~190 bytes each: 500k shared, 4 sendmsgs vs 1 (2 runs each, same
# machine and hour): peak RSS 145.6-146.5 vs 135-136.7 MiB, time to FIB 4.4-4.6 vs 4.3-4.35 s.
DAEMON_WRITE_MAX = DAEMON_SENDMSG


def manager_from_config(
    section: object,
    *,
    metric: int = 0,
    netns: str | None = None,
    on_reachability: ReachabilityCallback | None = None,
    on_error: Callable[[RouteError], None] | None = None,
) -> FibManager | None:
    """A FibManager over the kernel for a `[fib]` section (anything with ``enabled``,
    ``table``, ``protocol``, ``persist``, ``scan_time``), or None when it is disabled.
    Call ``await start()``, feed ``update``/``withdraw``, ``converged()``, ``await stop()``."""
    if not section.enabled:  # type: ignore[attr-defined]
        return None
    from bgpd.fib.netlink import NetlinkFib

    fib = NetlinkFib(
        section.protocol,  # type: ignore[attr-defined]
        section.table,  # type: ignore[attr-defined]
        metric,
        netns=netns,
        batch=DAEMON_SENDMSG,
    )
    return FibManager(
        fib,
        slice_size=DAEMON_SLICE,
        write_max=DAEMON_WRITE_MAX,
        persist=section.persist,  # type: ignore[attr-defined]
        scan_time=float(section.scan_time),  # type: ignore[attr-defined]
        on_reachability=on_reachability,
        on_error=on_error,
    )
