"""What a running `Daemon` shows the outside: Prometheus metrics, `/livez` `/readyz`, sd_notify.

The daemon feeds `Observer.on_event` with every speaker event and calls `start`/`stopping`/
`close` around its run; everything else is read from the daemon before each scrape, so the hot
paths carry no metrics code. A FIB writer, when there is one, is attached with `attach_fib`
(its counters are plain attributes, read at scrape time too). A composition root that runs more
than the speaker (the node) adds metric areas, readiness checks and exporters of its own.

Readiness, re-evaluated on session events and once a second:
- `bgp-sessions`: at least one session Established, or no neighbor configured. Not "all of
  them": a mesh node whose peers boot after it, or a reflector whose passive clients are
  drained, would otherwise never report ready and systemd would kill it at TimeoutStartSec.
  `/readyz?verbose` shows how many of how many are up.
- `fib-synced`: the first full sync with the kernel after initial convergence (End-of-RIB or
  select-defer-time) is done, or there is no FIB. It stays true once reached: later syncs
  in progress are normal work, and `routemesh_fib_in_sync` reports them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from bgpd.health import BGP_SESSIONS, FIB_SYNCED, HealthServer, Readiness
from bgpd.metrics import BgpMetrics, Metrics
from bgpd.sdnotify import Notifier
from bgpd.speaker.events import Event, SessionDown, State, StateChanged
from bgpd.speaker.rib import Path as RibPath
from bgpd.speaker.types import Family

if TYPE_CHECKING:
    from bgpd.daemon import Daemon
    from bgpd.fib.manager import FibManager
    from bgpd.speaker.messages import Update

log = logging.getLogger("routemesh.metrics")

Check = Callable[[], tuple[bool, str]]
READINESS_PERIOD = 1.0


class Observer:
    """Metrics, readiness and service-manager notifications of one daemon."""

    def __init__(self, daemon: Daemon, areas: Iterable[str] | None = None) -> None:
        self.daemon = daemon
        if areas is None:
            areas = ("bgp", "rib", "fib") if daemon.config.fib.enabled else ("bgp", "rib")
        self.metrics = Metrics(areas=areas, process=True)
        self.checks: dict[str, Check] = {BGP_SESSIONS: self._sessions, FIB_SYNCED: self._fib}
        self.readiness = Readiness(self.checks)
        self.exporters: list[Callable[[], None]] = [self.export_daemon]
        self.notifier = Notifier(None)
        self.server: HealthServer | None = None
        self.fib: FibManager | None = None
        self._latched: set[str] = {FIB_SYNCED}
        self._peers: set[str] = set()
        self._decisions: dict[Family, int] = {}
        self._decisions_seen: dict[Family, int] = {}
        self._fib_seen = {"added": 0, "removed": 0, "replaced": 0, "errors": 0}
        self._status = ""
        self._task: asyncio.Task[None] | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._count_decisions()

    # -- wiring ------------------------------------------------------------------------------

    def add_check(self, name: str, check: Check, *, latch: bool = False) -> None:
        """Another readiness condition; `latch` keeps it true once it was true."""
        self.checks[name] = check
        self.readiness.add(name)
        if latch:
            self._latched.add(name)

    def attach_fib(self, fib: FibManager | None) -> None:
        """The daemon's FIB writer, whose counters become the `fib` metrics."""
        self.fib = fib
        if fib is not None and self.metrics.fib is not None:
            hist = self.metrics.fib.apply_duration
            previous = fib.on_batch

            def on_batch(seconds: float) -> None:
                hist.observe(seconds)
                if previous is not None:
                    previous(seconds)

            fib.on_batch = on_batch

    def _count_decisions(self) -> None:
        # The Loc-RIB counts its decisions itself (most never reach the decider: a prefix with
        # one path is decided as it is stored), so the route worker needs no metrics code; the
        # count is read at scrape time. A replacing observer (the node's) starts from the count
        # so far, as the one it replaces had.
        self._decisions = self.daemon.loc_rib.decisions
        self._decisions_seen = dict(self._decisions)

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self, host: str, port: int) -> bool:
        """Serve metrics and health (port 0 in the config means off) and start notifying.

        False when the port cannot be bound; the daemon then exits with a clear error.
        """
        self.notifier = Notifier.from_env(unset=True)
        if port:
            server = HealthServer(
                self.metrics, self.readiness, host=host, port=port, before_scrape=self.exporters
            )
            try:
                await server.start()
            except OSError as err:
                log.error("cannot serve metrics on [%s]:%d: %s", host, port, err.strerror or err)
                return False
            self.server = server
        self.readiness.on_change(self._on_ready_change)
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self._readiness_loop())
        self._watchdog = self.notifier.start_watchdog()
        self.refresh()
        return True

    def stopping(self) -> None:
        self.notifier.stopping("shutting down: sending Cease to every peer")

    async def close(self) -> None:
        for task in (self._task, self._watchdog):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._task = self._watchdog = None
        if self.server is not None:
            await self.server.close()
            self.server = None

    # -- readiness ---------------------------------------------------------------------------

    def on_event(self, peer: str, event: Event) -> None:
        """Every event a PeerDriver reports (the daemon's first line of `_on_event`)."""
        bgp = self._bgp_for(peer)
        if bgp is not None:
            bgp.on_event(peer, event)
        if isinstance(event, (StateChanged, SessionDown)):
            self.refresh()

    def on_updates(self, peer: str, updates: list[Update]) -> None:
        """The UPDATEs of one read from `peer`, as a PeerDriver batches them (see on_event)."""
        bgp = self._bgp_for(peer)
        if bgp is not None:
            bgp.on_updates(peer, updates)

    def on_announced(self, peer: str, family: Family, count: int) -> None:
        """`count` prefixes of `family` announced by `peer` (a run of one-prefix UPDATEs that
        the import counted itself, instead of handing each UPDATE to `on_updates`)."""
        bgp = self._bgp_for(peer)
        if bgp is not None:
            bgp.on_prefix_updates(peer, "in", family, count, 0)

    def _bgp_for(self, peer: str) -> BgpMetrics | None:
        """The BGP metrics, with `peer`'s rows created the first time it reports anything."""
        bgp = self.metrics.bgp
        if bgp is not None and peer not in self._peers:
            self._peers.add(peer)
            bgp.add_peer(peer)
        return bgp

    def refresh(self) -> None:
        """Re-evaluate every readiness condition."""
        for name, check in self.checks.items():
            if name in self._latched and self._is_ok(name):
                continue
            try:
                ok, detail = check()
            except Exception:
                log.exception("readiness check %s failed", name)
                ok, detail = False, "check failed (see the log)"
            self.readiness.set(name, ok, detail)
        failing = self.readiness.failing()
        status = "ready" if not failing else "waiting for " + ", ".join(failing)
        if status != self._status:
            self._status = status
            if failing:
                self.notifier.status(status)

    def _is_ok(self, name: str) -> bool:
        return name not in self.readiness.failing()

    async def _readiness_loop(self) -> None:
        while True:
            await asyncio.sleep(READINESS_PERIOD)
            self.refresh()

    def _on_ready_change(self, ready: bool) -> None:
        if ready:
            text = "ready: " + self._sessions()[1]
            if self.notifier.ready(text):
                log.info("sd_notify READY=1 (%s)", text)
            else:
                log.info("%s", text)
        else:
            log.warning("not ready any more: %s", ", ".join(self.readiness.failing()))

    def _sessions(self) -> tuple[bool, str]:
        peers = self.daemon.peers
        if not peers:
            return True, "no BGP neighbors configured"
        up = sum(1 for p in peers.values() if p.session.state is State.ESTABLISHED)
        return up > 0, f"{up}/{len(peers)} BGP sessions Established"

    def _fib(self) -> tuple[bool, str]:
        fib = self.fib
        if fib is None:
            return True, "no FIB"
        if not fib.is_converged:
            return False, "waiting for initial BGP convergence (End-of-RIB)"
        if fib.last_sync_time is None:
            return False, "first sync with the kernel in progress"
        return True, f"{fib.routes_installed} routes in the kernel"

    # -- export (before each scrape) ---------------------------------------------------------

    def export_daemon(self) -> None:
        """Copy the sessions', RIB's and FIB's counts into the metrics."""
        m = self.metrics
        daemon = self.daemon
        if m.bgp is not None:
            current = set(daemon.peers)
            for gone in self._peers - current:
                m.bgp.remove_peer(gone)
            for new in current - self._peers:
                m.bgp.add_peer(new, daemon.peers[new].session.state.value)
            self._peers = current
            for address, peer in daemon.peers.items():
                m.bgp.observe_session(address, peer.session)
                rib_out = peer.out.rib_out if peer.out is not None else None
                for fam in sorted(peer.config.families):
                    m.bgp.set_prefixes(
                        address,
                        fam,
                        peer.rib_in.received_count(fam),
                        peer.rib_in.accepted_count(fam),
                        rib_out.count(fam) if rib_out is not None else 0,
                    )
        if m.rib is not None:
            for fam, table in daemon.loc_rib.tables.items():
                # A bare Path is a prefix with one path, its best; only Destinations vary.
                best = paths = len(table)
                for entry in table.values():
                    if entry.__class__ is not RibPath:
                        paths += len(entry.paths) - 1
                        if entry.best is None:
                            best -= 1
                m.rib.set_counts(fam, best, paths)
            m.rib.set_attribute_sets(len(daemon.interner))
            for fam, count in self._decisions.items():
                delta = count - self._decisions_seen.get(fam, 0)
                m.rib.on_best_path_runs(fam, delta)
                self._decisions_seen[fam] = count
        if m.fib is not None and self.fib is not None:
            self._export_fib(self.fib)

    def _export_fib(self, fib: FibManager) -> None:
        m = self.metrics.fib
        assert m is not None
        by_version = fib.routes_by_family()
        m.set_routes("ipv4-unicast", by_version.get(4, 0))
        m.set_routes("ipv6-unicast", by_version.get(6, 0))
        seen = self._fib_seen
        repairs = {
            k: fib.repairs_by_type.get(k, 0) - seen[k] for k in ("added", "removed", "replaced")
        }
        m.on_reconcile(**repairs)
        errors = fib.netlink_errors - seen["errors"]
        if errors:
            m.netlink_errors.inc(errors)
        seen.update(fib.repairs_by_type)
        seen["errors"] = fib.netlink_errors
        m.in_sync.set(1 if fib.in_sync else 0)
        if fib.last_sync_time is not None:
            m.last_sync.set(fib.last_sync_time)
