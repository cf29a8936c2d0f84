"""FibManager: the one task that owns the desired routes and keeps the kernel's copy in step.

``update``/``withdraw`` only queue (last change per prefix wins) and wake the task, which
writes in slices so 100k changes never hold the event loop long. At start it reads our routes
from the kernel and keeps them until ``converged()`` (End-of-RIB or the GR timer), then diffs.
A full resync every ``scan_time`` seconds, and the route monitor in between, repair what someone
else deleted or changed; other protocols' routes are never touched, only reported.

Next hops: a gateway that is not on a connected network is resolved through the kernel's other
routes; ``on_reachability(version, gateway, reachable)`` tells the RIB when that answer changes
(and once for a gateway that is unreachable when first used), so best-path selection can drop
or restore paths through it. The RIB then sends updates as usual.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable

from bgpd.fib.base import Fib, KernelEvent, LinkEvent, Overrun, RouteEvent
from bgpd.fib.nexthop import NextHopResolver
from bgpd.fib.reconcile import STEP, Conflict, plan_steps, same_route
from bgpd.fib.types import (
    MAIN_TABLE,
    KernelRoute,
    NextHop,
    Prefix,
    Route,
    RouteError,
    addr_str,
)

log = logging.getLogger("bgpd.fib")

ReachabilityCallback = Callable[[int, int, bool], None]
_RECHECK = object()  # queued by repairs: re-derive the prefix from desired vs installed


class FibManager:
    """Owns desired vs installed routes for one Fib; see the module docstring.

    ``persist`` keeps our routes in the kernel on stop; ``scan_time`` is the period of the
    full resync (after convergence); ``slice_size`` bounds the routes written per loop turn;
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
        resolve: bool = True,
        watch: bool = True,
        on_reachability: ReachabilityCallback | None = None,
        on_error: Callable[[RouteError], None] | None = None,
        on_batch: Callable[[float], None] | None = None,
    ) -> None:
        self.fib = fib
        self.on_batch = on_batch
        self.persist = persist
        self.scan_time = scan_time
        self.slice_size = slice_size
        self.resolver = NextHopResolver(fib.protocol) if resolve else None
        self.watch = watch
        self.on_reachability = on_reachability
        self.on_error = on_error
        self.desired: dict[Prefix, Route] = {}
        self.installed: dict[Prefix, Route | None] = {}
        self.foreign: dict[Prefix, list[tuple[int, int]]] = {}  # prefix -> (protocol, metric)
        self.conflicts: dict[Prefix, Conflict] = {}
        self.recent_errors: deque[RouteError] = deque(maxlen=256)
        # Queued changes: the latest per prefix in a dict, their order in a deque (popping the
        # front of a dict is not O(1): CPython skips the dead entries on every iteration).
        self._pending: dict[Prefix, object] = {}
        self._order: deque[Prefix] = deque()
        self._repairing: set[Prefix] = set()
        self._inflight: set[Prefix] = set()
        self._gw_users: dict[tuple[int, int], set[Prefix]] = {}
        self._gw_via: dict[tuple[int, int], int | None] = {}
        # Gateways the RIB asked about through reachable(): it must hear when they come back,
        # even though no route of ours uses them while they are unreachable.
        self._watched: set[tuple[int, int]] = set()
        self._link_up: dict[int, bool] = {}
        self._converged = False
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
        return len(self.installed)

    @property
    def is_converged(self) -> bool:
        return self._converged

    @property
    def in_sync(self) -> bool:
        """Converged, and nothing queued or known to need repair."""
        return self._converged and not self._has_work() and not self._repairing

    def routes_by_family(self) -> dict[int, int]:
        """Routes of ours installed, by IP version."""
        counts = {4: 0, 6: 0}
        for prefix in self.installed:
            counts[prefix[0]] += 1
        return counts

    def update(self, route: Route) -> None:
        """Want ``route`` in the kernel (replacing any other route of ours at its prefix)."""
        self._queue(route.prefix, route)

    def withdraw(self, prefix: Prefix) -> None:
        """Want no route of ours at ``prefix``."""
        self._queue(prefix, None)

    def _queue(self, prefix: Prefix, value: object) -> None:
        if prefix not in self._pending:
            self._order.append(prefix)
        self._pending[prefix] = value
        self._kick()

    def reachable(self, version: int, gateway: int) -> bool:
        """Whether ``gateway`` resolves through the kernel's other routes now (for the RIB's
        next-hop check; ``on_reachability`` reports changes)."""
        if self.resolver is None:
            return True
        key = (version, gateway)
        via = self.resolver.resolve(version, gateway)
        if key not in self._watched:
            self._watched.add(key)
            self._gw_via.setdefault(key, via)
        return via is not None

    def converged(self) -> None:
        """The RIB is complete (End-of-RIB from all peers, or the GR timer): prune stale routes."""
        if not self._converged:
            self._converged = True
            self._resync_wanted = True
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
        if self.watch:
            self._close_monitor = self.fib.monitor(self._on_kernel_event)
        self._task = asyncio.create_task(self._run(), name="fib-manager")
        log.info(
            "fib: %d routes of protocol %d found in table %d; kept until converged",
            len(self.installed),
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
        if not self.persist:
            kernel = await self.fib.dump()
            ours = [kr.prefix for kr in kernel if kr.protocol == self.fib.protocol]
            self._count_errors(await self.fib.apply([], ours))
            self.installed.clear()
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
                    await self._resync()
                elif self._gateways_dirty:
                    self._gateways_dirty = False
                    self._recheck_gateways()
                else:
                    await self._apply_slice()
            except Exception:
                # A bug or an unexpected socket error must not end FIB programming; the next
                # scan starts from a fresh dump.
                log.exception("fib: write cycle failed; resync scheduled")
                self._resync_wanted = True
                await asyncio.sleep(1.0)
            await asyncio.sleep(0)

    def _has_work(self) -> bool:
        return bool(self._pending) or self._resync_wanted or self._gateways_dirty

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
        writes: list[Route] = []
        deletes: list[Prefix] = []
        for _ in range(min(self.slice_size, len(self._order))):
            prefix = self._order.popleft()
            value = self._pending.pop(prefix)
            explicit = value is None
            if value is None:
                old = self.desired.pop(prefix, None)
                if old is not None:
                    self._track(old, add=False)
            elif value is not _RECHECK:
                assert isinstance(value, Route)
                old = self.desired.get(prefix)
                if old != value:
                    if old is not None:
                        self._track(old, add=False)
                    self.desired[prefix] = value
                    self._track(value, add=True)
            want = self._effective(self.desired.get(prefix))
            if want is None:
                if prefix in self.installed and (
                    explicit or prefix in self.desired or self._converged
                ):
                    deletes.append(prefix)
                else:
                    self._repairing.discard(prefix)
            elif not same_route(want, self.installed.get(prefix)):
                writes.append(want)
            else:
                self._repairing.discard(prefix)
        if writes or deletes:
            await self._write(writes, deletes)

    async def _write(
        self, writes: list[Route], deletes: list[Prefix], *, resync: bool = False
    ) -> list[RouteError]:
        """Apply one slice and account for it; everything a resync writes is a repair, and
        so is a write the monitor asked for."""
        started = time.perf_counter()
        # Echoes of these writes may arrive before apply() returns; they are not news.
        self._inflight = {r.prefix for r in writes} | set(deletes)
        try:
            errors = await self.fib.apply(writes, deletes)
        finally:
            self._inflight = set()
        elapsed = time.perf_counter() - started
        self.apply_batches += 1
        self.apply_seconds_total += elapsed
        self.last_apply_seconds = elapsed
        if self.on_batch is not None:
            self.on_batch(elapsed)
        failed = {e.prefix for e in errors}
        repairing = self._repairing
        for route in writes:
            prefix = route.prefix
            if prefix in failed:
                continue
            if resync or prefix in repairing:
                self._repaired("replaced" if prefix in self.installed else "added")
            self.installed[prefix] = route
        for prefix in deletes:
            if prefix in failed:
                continue
            if resync or prefix in repairing:
                self._repaired("removed")
            self.installed.pop(prefix, None)
        if repairing:
            repairing.difference_update(r.prefix for r in writes)
            repairing.difference_update(deletes)
        self._count_errors(errors)
        return errors

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

    async def _resync(self) -> None:
        """Dump, diff against what we want, write the difference in slices."""
        self.resyncs += 1
        loop = asyncio.get_running_loop()
        kernel = await self.fib.dump()
        if self.resolver is not None:
            main = kernel if self.fib.table == MAIN_TABLE else await self.fib.dump(MAIN_TABLE)
            self.resolver.load(main)
            self._recheck_gateways(requeue=False)
        await self._load_sliced(kernel)
        desired = {}
        for n, (prefix, route) in enumerate(self.desired.items(), 1):
            want = self._effective(route)
            if want is not None:
                desired[prefix] = want
            if n % STEP == 0:
                await asyncio.sleep(0)
        steps = plan_steps(desired, kernel, self.fib.protocol, prune=self._converged)
        while True:
            try:
                next(steps)
            except StopIteration as done:
                p = done.value
                break
            await asyncio.sleep(0)
        if not self._converged:
            # Even before convergence, a route we want but cannot reach must not stay.
            p.deletes = [x for x in self.installed if x in self.desired and x not in desired]
        # A newer change is queued for these; the slice writer will handle it.
        p.writes = [r for r in p.writes if r.prefix not in self._pending]
        p.deletes = [x for x in p.deletes if x not in self._pending]
        for c in p.conflicts:
            if c.prefix not in self.conflicts:
                log.warning("fib: conflict: %s", c)
        self.conflicts = {c.prefix: c for c in p.conflicts}
        # Where another protocol holds the prefix at our metric the kernel would refuse the
        # add again (EEXIST); the conflict is reported instead of retried every scan.
        p.writes = [
            r
            for r in p.writes
            if r.prefix in self.installed
            or (self.conflicts.get(r.prefix) is None)
            or self.conflicts[r.prefix].metric != self.fib.kernel_metric(r.version)
        ]
        repairs = len(p.writes) + len(p.deletes)
        for i in range(0, max(len(p.writes), len(p.deletes)), self.slice_size):
            await self._write(
                p.writes[i : i + self.slice_size],
                p.deletes[i : i + self.slice_size],
                resync=True,
            )
            await asyncio.sleep(0)
        if self._converged:
            self.last_sync_time = time.time()
        if self._converged and self.scan_time > 0:
            self._next_scan = loop.time() + self.scan_time
        if repairs:
            log.info(
                "fib: resync wrote %d, deleted %d, %d conflicts",
                len(p.writes),
                len(p.deletes),
                len(p.conflicts),
            )

    async def _load_sliced(self, kernel: list[KernelRoute]) -> None:
        for i in range(0, len(kernel), STEP):
            self._load(kernel[i : i + STEP], reset=i == 0)
            await asyncio.sleep(0)
        if not kernel:
            self._load((), reset=True)

    def _load(self, kernel: Iterable[KernelRoute], *, reset: bool = True) -> None:
        if reset:
            self.installed = {}
            self.foreign = {}
        for kr in kernel:
            if kr.protocol == self.fib.protocol:
                self.installed[kr.prefix] = kr.route
            else:
                self.foreign.setdefault(kr.prefix, []).append((kr.protocol, kr.metric))

    # -- next hops ---------------------------------------------------------------------------

    def _effective(self, route: Route | None) -> Route | None:
        """``route`` with each gateway resolved to a connected one; paths that cannot be
        reached are dropped, and None means no path is left."""
        if route is None or route.blackhole or self.resolver is None:
            return route
        hops: list[NextHop] = []
        changed = False
        for hop in route.nexthops:
            if hop.gateway is None or hop.device is not None:
                hops.append(hop)
                continue
            resolved = self.resolver.resolve(route.version, hop.gateway)
            if resolved is None:
                changed = True
            elif resolved != hop.gateway:
                hops.append(NextHop(resolved))
                changed = True
            else:
                hops.append(hop)
        if not changed:
            return route
        if not hops:
            return None
        return Route(route.prefix, tuple(hops))

    def _track(self, route: Route, *, add: bool) -> None:
        if self.resolver is None or route.blackhole:
            return
        for hop in route.nexthops:
            if hop.gateway is None or hop.device is not None:
                continue
            key = (route.version, hop.gateway)
            users = self._gw_users.setdefault(key, set())
            if add:
                users.add(route.prefix)
                if key not in self._gw_via:
                    via = self.resolver.resolve(*key)
                    self._gw_via[key] = via
                    if via is None:
                        self._tell(key, False)
            else:
                users.discard(route.prefix)
                if not users:
                    del self._gw_users[key]
                    if key not in self._watched:
                        self._gw_via.pop(key, None)

    def _tell(self, key: tuple[int, int], reachable: bool) -> None:
        state = "reachable" if reachable else "unreachable"
        log.info("fib: next hop %s %s", addr_str(*key), state)
        if self.on_reachability is not None:
            self.on_reachability(key[0], key[1], reachable)

    def _recheck_gateways(self, *, requeue: bool = True) -> None:
        assert self.resolver is not None
        for key in list(self._gw_via):
            users = self._gw_users.get(key, ())
            via = self.resolver.resolve(*key)
            before = self._gw_via.get(key)
            if via == before:
                continue
            self._gw_via[key] = via
            if (via is None) != (before is None):
                self._tell(key, via is not None)
            if requeue:
                for prefix in users:
                    if prefix not in self._pending:
                        self._queue(prefix, _RECHECK)

    # -- kernel events -----------------------------------------------------------------------

    def _on_kernel_event(self, event: KernelEvent) -> None:
        if isinstance(event, Overrun):
            self.monitor_overruns += 1
            self._resync_wanted = True
            self._kick()
        elif isinstance(event, LinkEvent):
            if self.resolver is not None and self.resolver.link_changed(event.index, event.up):
                self._gateways_dirty = True
                self._kick()
            before = self._link_up.get(event.index)
            if event.removed:
                self._link_up.pop(event.index, None)
            else:
                self._link_up[event.index] = event.up
            # IPv4 drops routes through a device that goes down without telling anyone, so
            # a device coming (back) up is when ours may be missing.
            if event.up and before is not True and self._converged:
                self._resync_wanted = True
                self._kick()
        elif isinstance(event, RouteEvent):
            self._on_route_event(event)

    def _on_route_event(self, event: RouteEvent) -> None:
        kr = event.route
        resolver = self.resolver
        if (
            kr.table == MAIN_TABLE
            and resolver is not None
            and resolver.route_changed(kr, event.deleted)
            and self._gw_via
        ):
            self._gateways_dirty = True
            self._kick()
        if kr.table != self.fib.table:
            return
        prefix = kr.prefix
        if kr.protocol == self.fib.protocol:
            if prefix in self._inflight:
                return  # our own write's echo (a concurrent change is left to the scan)
            if event.deleted:
                if prefix in self.installed:
                    self.installed.pop(prefix)
                    self.fib.ours.discard(prefix)
                    self._queue_repair(prefix)
            else:
                have = self.installed.get(prefix)
                if have is None or kr.route is None or not same_route(have, kr.route):
                    self.installed[prefix] = kr.route
                    self.fib.ours.add(prefix)
                    self._queue_repair(prefix)
            return
        entries = self.foreign.setdefault(prefix, [])
        entries[:] = [e for e in entries if e != (kr.protocol, kr.metric)]
        if not event.deleted:
            entries.append((kr.protocol, kr.metric))
            if prefix in self.desired:
                c = Conflict(prefix, kr.protocol, kr.metric, kr.kind)
                if prefix not in self.conflicts:
                    log.warning("fib: conflict: %s", c)
                self.conflicts[prefix] = c
            if prefix in self.installed and kr.metric == self.fib.kernel_metric(prefix[0]):
                # An IPv4 replace by someone else overwrote ours without a delete event.
                self.installed.pop(prefix)
                self.fib.ours.discard(prefix)
        else:
            if not entries:
                del self.foreign[prefix]
                self.conflicts.pop(prefix, None)
            if prefix in self.desired:
                self._queue_repair(prefix)  # a route that was refused may fit now

    def _queue_repair(self, prefix: Prefix) -> None:
        if prefix not in self._pending:
            self._queue(prefix, _RECHECK)
            self._repairing.add(prefix)


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
    )
    return FibManager(
        fib,
        persist=section.persist,  # type: ignore[attr-defined]
        scan_time=float(section.scan_time),  # type: ignore[attr-defined]
        on_reachability=on_reachability,
        on_error=on_error,
    )
