"""FibManager's view of the kernel: the start-up load of our routes, the prune at convergence,
the periodic full resync and the route monitor's events (repairs, conflicts, resolution)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable

from bgpd.fib.base import Fib, KernelEvent, LinkEvent, Overrun, RouteEvent
from bgpd.fib.nexthop import NextHopResolver
from bgpd.fib.prefixtable import PrefixTable
from bgpd.fib.reconcile import STEP, Conflict, same_hops
from bgpd.fib.types import MAIN_TABLE, Hops, KernelRoute, Prefix, Route, hops_of

# The manager's logger: these lines are the manager's, wherever the code lives.
log = logging.getLogger("bgpd.fib")

_RECHECK = object()  # queued by repairs: re-derive the prefix from desired vs installed
_ABSENT = object()  # no route of ours at the prefix (installed maps to None for unparsed ones)
_SAME = object()  # not in _differs: the kernel holds what desired says (or nothing, as it does)


class KernelSync:
    """The kernel-facing half of `bgpd.fib.manager.FibManager` (its base class); the
    attributes are the manager's."""

    fib: Fib
    resolver: NextHopResolver | None
    scan_time: float
    slice_size: int
    desired: PrefixTable[Hops]
    _differs: dict[Prefix, object]
    foreign: dict[Prefix, list[tuple[int, int, int]]]
    conflicts: dict[Prefix, Conflict]
    resyncs: int
    last_sync_time: float | None
    monitor_overruns: int
    _pending: dict[Prefix, object]
    _repairing: set[Prefix]
    _inflight: set[Prefix]
    _interned: dict[Hops, Hops]
    _by_key: dict[tuple[int, int], Hops]
    _gw_via: dict[tuple[int, int], int | None]
    _link_up: dict[int, bool]
    _converged: bool
    _resync_wanted: bool
    _gateways_dirty: bool
    _next_scan: float

    # -- what the kernel holds: desired, except where _differs says otherwise ----------------

    @property
    def installed(self) -> dict[Prefix, Hops | None]:
        """Our routes in the kernel as far as we know: prefix -> Hops (None: ours, of a kind
        we never write). Built on each access (tests, start-up); the manager keeps only the
        prefixes where the kernel is not what desired says."""
        differs = self._differs
        out: dict[Prefix, Hops | None] = {p: h for p, h in self.desired.items() if p not in differs}
        out.update((p, h) for p, h in differs.items() if h is not _ABSENT)  # type: ignore[misc]
        return out

    def _installed_prefixes(self) -> list[Prefix]:
        differs = self._differs
        out = [p for p in self.desired if p not in differs]
        out.extend(p for p, h in differs.items() if h is not _ABSENT)
        return out

    def _have(self, prefix: Prefix) -> object:
        """Our route in the kernel at ``prefix``: its Hops, None (ours, never written by us)
        or _ABSENT."""
        have = self._differs.get(prefix, _SAME)
        return self.desired.get(prefix, _ABSENT) if have is _SAME else have

    def _set_have(self, prefix: Prefix, have: object) -> None:
        """The kernel now holds ``have`` at ``prefix`` (Hops, None or _ABSENT)."""
        if have is self.desired.get(prefix, _ABSENT):
            self._differs.pop(prefix, None)
        else:
            self._differs[prefix] = have

    def _stale(self) -> list[Prefix]:
        """Our routes in the kernel that must go, unless a change for them is queued: nobody
        wants them (once converged), or what is wanted there cannot be reached."""
        desired, pending, converged = self.desired, self._pending, self._converged
        # Resolve each distinct next-hop set once, not each prefix.
        dead = {k for k, hops in self._by_key.items() if self._effective(k[0], hops) is None}
        if not dead:
            if not converged:
                return []
            # Not desired yet in the kernel: only _differs can say so.
            return [
                p
                for p, h in self._differs.items()
                if h is not _ABSENT and p not in desired and p not in pending
            ]
        out = []
        for p in self._installed_prefixes():
            if p in pending:
                continue
            hops = desired.get(p)
            if converged if hops is None else (p[0], id(hops)) in dead:
                out.append(p)
        return out

    async def _prune(self) -> None:
        """At convergence: delete the routes of ours nobody wants any more (from before a
        restart), and report the conflicts found since the start. What the start's dump and
        the monitor told us is the kernel's state; the periodic scan re-reads it."""
        self.resyncs += 1
        stale = self._stale()
        self._set_conflicts(
            Conflict(prefix, proto, metric, kind)
            for prefix, entries in self.foreign.items()
            if prefix in self.desired
            for proto, metric, kind in entries
        )
        for i in range(0, len(stale), self.slice_size):
            await self._write([], stale[i : i + self.slice_size], resync=True)
            await asyncio.sleep(0)
        self._synced(asyncio.get_running_loop())
        if stale:
            log.info("fib: converged; %d stale routes of ours deleted", len(stale))

    def _synced(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._converged:
            self.last_sync_time = time.time()
            if self.scan_time > 0:
                self._next_scan = loop.time() + self.scan_time

    def _set_conflicts(self, found: Iterable[Conflict]) -> None:
        conflicts: dict[Prefix, Conflict] = {}
        for c in found:
            if c.prefix not in self.conflicts and c.prefix not in conflicts:
                log.warning("fib: conflict: %s", c)
            conflicts[c.prefix] = c
        self.conflicts = conflicts

    async def _resync(self) -> None:
        """Dump, diff against what we want, write the difference in slices."""
        await self._land()  # the dump must see the writes in flight
        self.resyncs += 1
        loop = asyncio.get_running_loop()
        kernel = await self.fib.dump()
        if self.resolver is not None:
            other = None if self.fib.table == MAIN_TABLE else await self.fib.dump(MAIN_TABLE)
            self.resolver.load(kernel if other is None else other)
            del other
            self._resolver_changed()
            self._recheck_gateways(requeue=False)
        await self._load_sliced(kernel)
        del kernel  # the dump's objects are the biggest thing a scan holds
        differs, pending = self._differs, self._pending
        writes: list[tuple[Prefix, Hops, bool]] = []
        replaced = 0
        # A newer change is queued for some; the slice writer will handle those.
        for n, (prefix, hops) in enumerate(self.desired.items(), 1):
            if n % STEP == 0:
                await asyncio.sleep(0)  # only this task changes desired
            if prefix in pending:
                continue
            want = self._effective(prefix[0], hops)
            if want is None:
                continue
            have = differs.get(prefix, hops)  # desired stands for the kernel unless it differs
            if have is _ABSENT:
                writes.append((prefix, want, False))
            elif not same_hops(want, have):  # type: ignore[arg-type]
                writes.append((prefix, want, True))
                replaced += 1
        deletes = self._stale()
        self._set_conflicts(
            Conflict(prefix, proto, metric, kind)
            for prefix, entries in self.foreign.items()
            if prefix in self.desired
            for proto, metric, kind in entries
        )
        # Where another protocol holds the prefix at our metric the kernel would refuse the
        # add again (EEXIST); the conflict is reported instead of retried every scan.
        if self.conflicts:
            writes = [
                w
                for w in writes
                if w[2]
                or (c := self.conflicts.get(w[0])) is None
                or c.metric != self.fib.kernel_metric(w[0][0])
            ]
        step = self.slice_size
        for i in range(0, max(len(writes), len(deletes)), step):
            await self._write(writes[i : i + step], deletes[i : i + step], resync=True)
            await asyncio.sleep(0)
        self._synced(loop)
        if writes or deletes:
            log.info(
                "fib: resync wrote %d (%d replaced), deleted %d, %d conflicts",
                len(writes),
                replaced,
                len(deletes),
                len(self.conflicts),
            )

    async def _load_sliced(self, kernel: list[KernelRoute]) -> None:
        """``_load`` of a scan's dump, a slice per loop turn. Rather than first marking every
        desired prefix absent (a (version, addr, len) tuple and an entry per route, ~50 MB at
        500k on every scan), the routes of ours that are desired are counted as they load;
        only when the count falls short are the desired ones the dump lacks looked for."""
        self._differs = {}
        self.foreign = {}
        matched = 0
        for i in range(0, len(kernel), STEP):
            matched += self._load(kernel[i : i + STEP], reset=False)
            await asyncio.sleep(0)
        if matched != len(self.desired):
            protocol = self.fib.protocol
            seen = {kr.prefix for kr in kernel if kr.protocol == protocol}
            differs = self._differs
            for prefix in self.desired:
                if prefix not in seen and prefix not in differs:
                    differs[prefix] = _ABSENT

    def _load(self, kernel: Iterable[KernelRoute], *, reset: bool = True) -> int:
        """Take what the kernel holds; the number of our routes found that are desired."""
        if reset:
            # Nothing of ours known in the kernel until the dump says so.
            self._differs = dict.fromkeys(self.desired, _ABSENT)
            self.foreign = {}
        tables, differs, protocol = self.desired.tables, self._differs, self.fib.protocol
        matched = 0
        for kr in kernel:
            prefix = kr.prefix
            if kr.protocol == protocol:
                hops = self._intern_route(kr.route)
                # _set_have, inlined: a scan reads every route of ours.
                want = tables[prefix[0]].get((prefix[1], prefix[2]), _ABSENT)
                if want is not _ABSENT:
                    matched += 1
                if hops is want:
                    differs.pop(prefix, None)
                else:
                    differs[prefix] = hops
            else:
                self.foreign.setdefault(prefix, []).append((kr.protocol, kr.metric, kr.kind))
        return matched

    def _intern_route(self, route: Route | None) -> Hops | None:
        if route is None:
            return None
        hops = hops_of(route)
        return self._interned.setdefault(hops, hops)

    # -- kernel events -----------------------------------------------------------------------

    def _on_kernel_event(self, event: KernelEvent) -> None:
        if isinstance(event, Overrun):
            self.monitor_overruns += 1
            self._resync_wanted = True
            self._kick()
        elif isinstance(event, LinkEvent):
            if self.resolver is not None and self.resolver.link_changed(event.index, event.up):
                self._resolver_changed()
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
        ):
            self._resolver_changed()
            if self._gw_via:
                self._gateways_dirty = True
                self._kick()
        if kr.table != self.fib.table:
            return
        prefix = kr.prefix
        if kr.protocol == self.fib.protocol:
            if prefix in self._inflight:
                return  # our own write's echo (a concurrent change is left to the scan)
            if event.deleted:
                if self._have(prefix) is not _ABSENT:
                    self._set_have(prefix, _ABSENT)
                    self._queue_repair(prefix)
            else:
                have = self._have(prefix)
                got = self._intern_route(kr.route)
                known = have is not _ABSENT and have is not None and got is not None
                if not known or not same_hops(have, got):  # type: ignore[arg-type]
                    self._set_have(prefix, got)
                    self._queue_repair(prefix)
            return
        entries = self.foreign.setdefault(prefix, [])
        entries[:] = [e for e in entries if e[:2] != (kr.protocol, kr.metric)]
        if not event.deleted:
            entries.append((kr.protocol, kr.metric, kr.kind))
            if prefix in self.desired:
                c = Conflict(prefix, kr.protocol, kr.metric, kr.kind)
                if prefix not in self.conflicts:
                    log.warning("fib: conflict: %s", c)
                self.conflicts[prefix] = c
            if self._have(prefix) is not _ABSENT and kr.metric == self.fib.kernel_metric(prefix[0]):
                # An IPv4 replace by someone else overwrote ours without a delete event.
                self._set_have(prefix, _ABSENT)
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
