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

from bgpd.config import Config
from bgpd.daemon import Daemon, RouteSink
from bgpd.fib.manager import FibManager, manager_from_config
from bgpd.kernel import KernelRoutes
from bgpd.speaker.rib import Path as RibPath
from bgpd.speaker.types import Family, Prefix

log = logging.getLogger("routemesh.bgpd")


async def serve(config: Config, *, freeze_gc: bool = True) -> int:
    """Run the daemon (with its FIB when enabled) until SIGTERM/SIGINT; the exit code.

    ``freeze_gc`` moves everything alive after the initial load out of the collector's reach
    (``gc.freeze()``), so later full collections stop walking the whole table.
    """
    fib, kernel = await _start_fib(config)
    if kernel is None:
        daemon = Daemon(config)
    else:
        daemon = Daemon(config, nexthop_reachable=kernel.reachable)
        daemon.route_sink = _until_stopping(daemon, kernel.sink)
        kernel.reachability_changed = daemon.reachability_changed
    daemon.observer.attach_fib(fib)  # FIB metrics and the fib-synced readiness condition
    settled = asyncio.create_task(_after_convergence(daemon, fib, freeze_gc), name="converged")
    try:
        return await daemon.run()
    finally:
        settled.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await settled
        if fib is not None:
            try:
                await fib.stop()
            except Exception:
                log.exception("fib: stop failed; routes of ours may be left in the kernel")


def _until_stopping(daemon: Daemon, sink: RouteSink) -> RouteSink:
    """``sink`` until a stop is asked for: the shutdown's Cease flushes every peer's routes,
    and those withdrawals must not reach the kernel (`persist` keeps forwarding across a
    restart; without it, FibManager.stop removes everything of ours anyway)."""

    def gated(family: Family, prefix: Prefix, paths: tuple[RibPath, ...] | None) -> None:
        if not daemon.stopping:
            sink(family, prefix, paths)

    return gated


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


async def _after_convergence(daemon: Daemon, fib: FibManager | None, freeze_gc: bool) -> None:
    """Prune the FIB at initial convergence, then freeze what the initial load built."""
    await daemon.converged.wait()
    if fib is not None:
        try:
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
    if freeze_gc:
        gc.collect()
        gc.freeze()
