"""The standalone bgpd process (`bgpd -f`): one Daemon and, when `[fib] enabled` says so, the
kernel FIB writer fed from its Loc-RIB (BIRD's kernel protocol next to its BGP).

The FIB is started before the first session so its dump of our old routes is what they are
compared with, told `converged()` once the daemon's initial convergence is done (End-of-RIB
or select-defer-time), and stopped after the daemon returns (`persist` decides what stays).
A FIB that cannot start is logged and the daemon runs without it: routing to peers must not
depend on the kernel accepting our writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections import deque

from bgpd.config import Config
from bgpd.daemon import Daemon, RouteBatchSink, RouteSink
from bgpd.fib.manager import FibManager, manager_from_config
from bgpd.kernel import KernelRoutes
from bgpd.speaker.rib import Entry
from bgpd.speaker.rib import Path as RibPath
from bgpd.speaker.types import Family, Prefix, prefix_to_str

log = logging.getLogger("routemesh.bgpd")


async def serve(config: Config, *, freeze_gc: bool = True) -> int:
    """Run the daemon (with its FIB when enabled) until SIGTERM/SIGINT; the exit code.

    ``freeze_gc`` moves everything alive after the initial load out of the collector's reach
    (``gc.freeze()``), so later full collections stop walking the whole table.
    """
    fib, kernel = await _start_fib(config)
    handoff: SinkQueue | None = None
    if kernel is None:
        daemon = Daemon(config)
    else:
        daemon = Daemon(config, nexthop_reachable=kernel.reachable)
        handoff = SinkQueue(daemon, kernel.sink, batch_sink=kernel.sink_batch)
        daemon.route_sink = handoff.put
        daemon.route_sink_batch = handoff.put_batch
        if fib is not None and not fib.routes_installed:
            # Nothing of ours in the kernel to keep steady: write while the table loads.
            daemon.sink_from_start()
            daemon.route_sink = live_sink(daemon, kernel.sink)
            daemon.route_sink_batch = live_batch_sink(daemon, kernel.sink_batch)
            daemon.sink_backlog = fib.backlog  # reading pauses while the kernel is behind
        kernel.reachability_changed = daemon.reachability_changed
    daemon.observer.attach_fib(fib)  # FIB metrics and the fib-synced readiness condition
    tasks = [
        asyncio.create_task(after_convergence(daemon, fib, handoff, freeze_gc), name="converged")
    ]
    if handoff is not None:
        tasks.append(asyncio.create_task(handoff.run(), name="fib-handoff"))
    try:
        return await daemon.run()
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if fib is not None:
            try:
                await fib.stop()
            except Exception:
                log.exception("fib: stop failed; routes of ours may be left in the kernel")


class SinkQueue:
    """Loc-RIB changes on their way to the FIB bridge, handed over in slices.

    The daemon calls its sink synchronously, and at initial convergence for the whole table
    at once; turning 100k paths into kernel routes took 2.5 s of one loop turn here. ``put``
    only queues, and ``run`` feeds ``sink`` ``slice_size`` changes per loop turn, in order.

    Once a stop is asked for nothing more is handed over: the shutdown's Cease flushes every
    peer's paths, and those withdrawals must not reach the kernel (`persist` keeps forwarding
    across a restart; without it, FibManager.stop removes every route of ours anyway).

    With a ``batch_sink``, ``put_batch`` queues a decided slice as one entry and hands it to
    ``batch_sink`` in pieces of at most ``slice_size`` (a Loc-RIB entry is read when handed
    over: any later change of it is queued behind, so the last word is the same).
    """

    def __init__(
        self,
        daemon: Daemon,
        sink: RouteSink,
        slice_size: int = 2000,
        batch_sink: RouteBatchSink | None = None,
    ) -> None:
        self.daemon = daemon
        self.sink = sink
        self.batch_sink = batch_sink
        self.slice_size = slice_size
        # (family, prefix, paths) one by one, or (family, [(prefix, entry), ...]) for a batch
        self._queue: deque[
            tuple[Family, Prefix, tuple[RibPath, ...] | None]
            | tuple[Family, list[tuple[Prefix, Entry | None]]]
        ] = deque()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()

    def put(self, family: Family, prefix: Prefix, paths: tuple[RibPath, ...] | None) -> None:
        if self.daemon.stopping:
            return
        self._queue.append((family, prefix, paths))
        self._idle.clear()
        self._wake.set()

    def put_batch(self, family: Family, items: list[tuple[Prefix, Entry | None]]) -> None:
        """One decided slice (see `Daemon.route_sink_batch`); needs ``batch_sink``."""
        if self.daemon.stopping or not items:
            return
        self._queue.append((family, items))
        self._idle.clear()
        self._wake.set()

    async def drained(self) -> None:
        """Wait until everything put so far has reached the sink."""
        while self._queue or not self._idle.is_set():
            await self._idle.wait()

    async def run(self) -> None:
        queue, sink = self._queue, self.sink
        while True:
            await self._wake.wait()
            self._wake.clear()
            while queue:
                if self.daemon.stopping:
                    queue.clear()
                    break
                budget = self.slice_size
                while queue and budget > 0:
                    entry = queue.popleft()
                    if len(entry) == 2:
                        family, items = entry  # type: ignore[misc]
                        if len(items) > budget:
                            queue.appendleft((family, items[budget:]))
                            items = items[:budget]
                        budget -= len(items)
                        try:
                            self.batch_sink(family, items)  # type: ignore[misc]
                        except Exception:
                            log.exception(
                                "fib: %d routes from %s not handed over",
                                len(items),
                                prefix_to_str(family.afi, items[0][0]),
                            )
                        continue
                    budget -= 1
                    family, prefix, paths = entry  # type: ignore[misc]
                    try:
                        sink(family, prefix, paths)
                    except Exception:
                        log.exception(
                            "fib: route %s not handed over", prefix_to_str(family.afi, prefix)
                        )
                await asyncio.sleep(0)
            self._idle.set()


def live_sink(daemon: Daemon, sink: RouteSink) -> RouteSink:
    """``sink`` called directly, for a daemon that hands routes over as it decides them.

    The route worker then calls it for one decided slice per loop turn, never for the whole
    table at once, so the SinkQueue's hop (a queue entry and two event calls per route, 1M
    of them for a 500k load and withdrawal) buys nothing. Like the queue, it hands nothing
    over once a stop is asked for.
    """

    def put(family: Family, prefix: Prefix, paths: tuple[RibPath, ...] | None) -> None:
        if not daemon.stopping:
            sink(family, prefix, paths)

    return put


def live_batch_sink(daemon: Daemon, sink: RouteBatchSink) -> RouteBatchSink:
    """``live_sink`` for the route worker's batches: one call per decided slice and family,
    which the bridge works through in one loop (one call chain per prefix cost ~2 us of the
    loop per route at 500k)."""

    def put(family: Family, items: list[tuple[Prefix, Entry | None]]) -> None:
        if not daemon.stopping:
            sink(family, items)

    return put


async def _start_fib(config: Config) -> tuple[FibManager | None, KernelRoutes | None]:
    section = config.fib
    if not section.enabled:
        log.info("fib: disabled; no kernel route is written")
        return None, None
    fib: FibManager | None = None
    try:
        fib = manager_from_config(section)
        if fib is None:
            return None, None
        # The bridge needs the manager and the manager's callback is the bridge's: tie late.
        kernel = KernelRoutes(fib)
        fib.on_reachability = kernel.on_reachability
        await fib.start()
    except Exception:
        log.exception(
            "fib: cannot start (table %d, protocol %d); running without kernel routes",
            section.table,
            section.protocol,
        )
        if fib is not None:
            with contextlib.suppress(Exception):
                fib.fib.close()
        return None, None
    return fib, kernel


# Full collections wait while the initial load builds the table: each one walks every route
# so far, and CPython runs one whenever the survivors grow by a quarter, so the load paid for
# its table several times over (100k one-prefix UPDATEs: 14 full collections, 1.0 of 3.4 CPU s;
# deferred: 1, 0.1 s). The freeze after the load keeps them cheap, and the thresholds come back.
LOAD_GEN2_THRESHOLD = 1000


async def after_convergence(
    daemon: Daemon, fib: FibManager | None, handoff: SinkQueue | None, freeze_gc: bool
) -> None:
    """Prune the FIB at initial convergence, then freeze what the initial load built."""
    saved = gc.get_threshold()
    if freeze_gc:
        gc.set_threshold(saved[0], saved[1], max(saved[2], LOAD_GEN2_THRESHOLD))
    try:
        await _initial_sync(daemon, fib, handoff)
        if freeze_gc:
            # Measured with 300k routes over a withdraw/re-announce churn after the load: gen-2
            # collections took 5.4 s in all instead of 7.3 s, the worst loop stall 0.8 s, not
            # 1.6. The collect first, once, so no garbage is frozen for good.
            gc.collect()
            gc.freeze()
    finally:
        gc.set_threshold(*saved)


async def _initial_sync(daemon: Daemon, fib: FibManager | None, handoff: SinkQueue | None) -> None:
    await daemon.converged.wait()
    if fib is not None and handoff is not None:
        try:
            # Pruning before the whole table is in the manager would delete routes still in
            # the hand-off, and put them back a moment later: a hit a restart must not have.
            await handoff.drained()
            fib.converged()
            await fib.settle()
            log.info(
                "fib: converged, %d routes of ours in table %d",
                fib.routes_installed,
                fib.fib.table,
            )
        except Exception:
            # The owner task logs and retries write failures itself; a dead task is a bug,
            # and the daemon's sessions must outlive it.
            log.exception("fib: initial sync failed")
