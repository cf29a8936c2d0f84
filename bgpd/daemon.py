"""The standalone BGP daemon: one task owns every session, the RIB and what we announce.

Received routes go through the import checks and filters into each peer's Adj-RIB-In and the
Loc-RIB (`bgpd.route_import`, the base class of `Daemon`). A single route worker decides dirty prefixes in slices, yielding to the loop between
slices so keepalives are never starved, and hands the changes to the update groups
(`bgpd.reflector.groups`), which diff every peer's Adj-RIB-Out and share encoded UPDATEs.

FIB hook: `Daemon.route_sink(family, prefix, paths | None)` (optional) is called for every
Loc-RIB change of a prefix with its multipath set, best first, or None when the prefix is gone.
Calls start once initial convergence is done (`Daemon.converged` is set then), beginning with
the whole table, or from the first route when `sink_from_start()` was called before `run()`
(the FIB found nothing of ours in the kernel, so there is nothing a partial table could hurt).
`Daemon.route_sink_batch(family, [(prefix, entry or None), ...])`, when set as well, is called
instead, once per family per decided slice (a Loc-RIB entry stands for its multipath set; None,
or an entry without a best path, for gone), so a sink can work through a slice in one loop
rather than one call chain per prefix. `Daemon.nexthop_reachable(family, nh)` feeds the
decision's first step; call `Daemon.reachability_changed()` to re-run the decision
everywhere when it changes.
`run_daemon` wires the kernel FIB (`bgpd.standalone`) only when `[fib] enabled` says so
(it defaults to false on a dedicated reflector, i.e. with `cluster-id` set).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from bgpd.config import Config, ConfigError, NeighborConfig, load_config
from bgpd.control import ControlServer
from bgpd.neighbors import Peer, SyncJob, global_ipv6_address, status_row
from bgpd.observe import Observer
from bgpd.reflector.export import ExportPolicy, LocalView
from bgpd.reflector.groups import EncodeCache, Outbound, export_changes
from bgpd.route_import import RouteImport
from bgpd.speaker import gr
from bgpd.speaker.attributes import PathAttributes
from bgpd.speaker.bestpath import DecisionConfig, make_decider
from bgpd.speaker.capabilities import Negotiated
from bgpd.speaker.events import (
    Event,
    RouteRefreshReceived,
    SessionDown,
    SessionEstablished,
    StateChanged,
    UpdateReceived,
)
from bgpd.speaker.fsm import Session, SessionConfig, build_open
from bgpd.speaker.messages import (
    ROUTE_REFRESH_BORR,
    ROUTE_REFRESH_EORR,
    Update,
    encode_end_of_rib,
)
from bgpd.speaker.rib import AttrInterner, Entry, LocRib, Source
from bgpd.speaker.rib import Path as RibPath
from bgpd.speaker.ribview import route_rows
from bgpd.speaker.transport import Listener, PeerDriver, PeerEndpoint
from bgpd.speaker.types import (
    AFI_IPV4,
    IPV4_UNICAST,
    Family,
    Prefix,
    prefix_to_str,
)
from bgpd.throttle import ReadThrottle

log = logging.getLogger("routemesh.bgpd")

ORIGIN_IGP = 0
SLICE = 2000  # prefixes decided/exported per worker step before yielding to the loop
LOCAL_SOURCE = Source("", 0, 0, 0, False, local=True)

RouteSink = Callable[[Family, Prefix, tuple[RibPath, ...] | None], None]
# (family, [(prefix, Loc-RIB entry or None), ...]): one decided slice's changes of one family.
RouteBatchSink = Callable[[Family, list[tuple[Prefix, Entry | None]]], None]


class Daemon(RouteImport):
    """Owns sessions and routes; every mutation happens on the event loop's one thread."""

    def __init__(
        self,
        config: Config,
        *,
        route_sink: RouteSink | None = None,
        nexthop_reachable: Callable[[Family, int], bool] | None = None,
    ) -> None:
        self.config = config
        gl = config.global_
        self.router_id = int(ipaddress.IPv4Address(gl.router_id))
        self.cluster_id = (
            int(ipaddress.IPv4Address(gl.cluster_id)) if gl.cluster_id is not None else None
        )
        self.local = LocalView(gl.asn, self.router_id, self.cluster_id, gl.client_to_client)
        self.peers: dict[str, Peer] = {}
        self.listener = Listener(self._lookup)
        self.control: ControlServer | None = None
        self.started = time.time()
        self._stopping = asyncio.Event()
        self.route_sink = route_sink
        # Used in place of route_sink when both are set (route_sink says that a sink exists).
        self.route_sink_batch: RouteBatchSink | None = None
        self.decision = DecisionConfig(
            router_id=self.router_id,
            always_compare_med=gl.always_compare_med,
            multipath=gl.multipath,
        )
        if nexthop_reachable is not None:
            self.decision = replace(self.decision, nexthop_reachable=nexthop_reachable)
        self.loc_rib = LocRib(make_decider(self.decision), nexthop_reachable)
        self.interner = AttrInterner()
        self.converged = asyncio.Event()
        self.sink_live = False
        # RFC 4724 restarting speaker: with GR configured we hold our updates (and the FIB's
        # view) until every peer sent End-of-RIB or select-defer-time passed.
        self.restarting = any(nb.graceful_restart for nb in config.neighbors)
        self._export_enabled = not self.restarting
        self._awaiting_eor = {nb.address for nb in config.neighbors}
        self._sync_jobs: list[SyncJob] = []
        self._sync_encoder = EncodeCache(maxsize=256)
        self._work = asyncio.Event()
        # Routes the FIB sink holds that have not reached the kernel (None: no FIB).
        self.sink_backlog: Callable[[], int] | None = None
        self.throttle = ReadThrottle(self._backlog)
        self._worker: asyncio.Task[None] | None = None
        self._defer_timer: asyncio.TimerHandle | None = None
        self._converging = False
        self.observer = Observer(self)  # metrics, /readyz, sd_notify (bgpd/observe.py)
        for org in config.originate:
            self.originate(org.family, [org.prefix])

    # -- lifecycle ---------------------------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        gl = self.config.global_
        for nb in self.config.neighbors:
            self.peers[nb.address] = Peer(nb, self._make_driver(nb, loop))
        md5 = {nb.address: nb.password for nb in self.config.neighbors if nb.password}
        gtsm = {nb.address: nb.ttl_security for nb in self.config.neighbors}
        for addr in gl.listen_addresses:
            try:
                await self.listener.listen(addr, gl.listen_port, md5, gtsm)
            except OSError as err:
                log.error("cannot listen on [%s]:%d: %s", addr, gl.listen_port, err.strerror)
                await self.listener.close()
                return 1
        self.control = ControlServer(gl.control_socket, self.handle_request)
        try:
            await self.control.start()
        except OSError as err:
            log.error("cannot open control socket %s: %s", gl.control_socket, err.strerror)
            await self.listener.close()
            return 1
        if not await self.observer.start(gl.metrics_address, gl.metrics_port):
            await self.control.close()
            await self.listener.close()
            return 1
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stopping.set)
        loop.add_signal_handler(signal.SIGHUP, self._reload_logged)
        log.info(
            "bgpd started: AS %d router-id %s%s, %d neighbors, listening on %s port %d",
            gl.asn,
            gl.router_id,
            f" cluster-id {gl.cluster_id}" if gl.cluster_id else "",
            len(self.peers),
            ", ".join(gl.listen_addresses) or "(nothing)",
            gl.listen_port,
        )
        self._worker = loop.create_task(self._route_worker())
        self._defer_timer = loop.call_later(gl.select_defer_time, self._defer_expired)
        if not self._awaiting_eor:
            self._converge("no neighbors")
        self._work.set()
        for peer in self.peers.values():
            peer.driver.start()
        await self._stopping.wait()
        await self.shutdown()
        return 0

    def request_stop(self) -> None:
        self._stopping.set()

    @property
    def stopping(self) -> bool:
        """A stop was asked for: what the shutdown withdraws is not news for the kernel FIB."""
        return self._stopping.is_set()

    async def shutdown(self) -> None:
        """Cease every session (RFC 4486 Administrative Shutdown) and close what we opened."""
        log.info("shutting down: sending Cease to every peer")
        self.observer.stopping()
        self.throttle.release()  # the Ceases and what answers them must be read
        for peer in self.peers.values():
            peer.driver.stop()
        # Give the transports a moment to flush the NOTIFICATIONs before the loop ends.
        await asyncio.sleep(0.1)
        for peer in self.peers.values():
            peer.driver.close_all()
            for handle in (peer.stale_timer, peer.restart_timer):
                if handle is not None:
                    handle.cancel()
        if self._defer_timer is not None:
            self._defer_timer.cancel()
        if self._worker is not None:
            self._worker.cancel()
        # Leave the loop as we found it: several daemons may share one process (tests, bench).
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        await self.listener.close()
        if self.control is not None:
            await self.control.close()
        await self.observer.close()

    # -- sessions ----------------------------------------------------------------------------

    def _make_driver(self, nb: NeighborConfig, loop: asyncio.AbstractEventLoop) -> PeerDriver:
        gl = self.config.global_
        add_path = {fam: nb.add_path for fam in nb.families} if nb.add_path else {}
        scfg = SessionConfig(
            local_asn=gl.asn,
            router_id=self.router_id,
            remote_asn=nb.remote_asn,
            families=nb.families,
            passive=nb.passive,
            hold_time=nb.hold_time if nb.hold_time is not None else gl.hold_time,
            connect_retry=gl.connect_retry,
            connect_retry_max=gl.connect_retry_max,
            add_path=add_path,
            hostname=gl.hostname,
            graceful_restart=nb.graceful_restart,
            restart_time=gl.graceful_restart_time,
            restarting=self.restarting and nb.graceful_restart,
            # Forwarding survives our restart only when the FIB writer keeps our routes.
            forwarding_preserved=self.config.fib.enabled and self.config.fib.persist,
        )
        endpoint = PeerEndpoint(
            address=nb.address,
            port=nb.port,
            source_address=nb.source_address,
            password=nb.password,
            ttl_security=nb.ttl_security,
        )
        return PeerDriver(Session(scfg), endpoint, self._on_event, loop, self._on_read)

    def _lookup(self, address: str) -> PeerDriver | None:
        peer = self.peers.get(address)
        return peer.driver if peer is not None else None

    def _on_event(self, driver: PeerDriver, event: Event) -> None:
        self.observer.on_event(driver.endpoint.address, event)
        peer = self.peers[driver.endpoint.address]
        if isinstance(event, UpdateReceived):
            self._on_update(peer, event.update)
        elif isinstance(event, StateChanged):
            log.info("peer %s: %s -> %s", peer.config.address, event.old.value, event.new.value)
        elif isinstance(event, SessionEstablished):
            self._on_established(peer, event.negotiated)
        elif isinstance(event, SessionDown):
            self._on_down(peer, event)
        elif isinstance(event, RouteRefreshReceived):
            self._on_route_refresh(peer, event)

    def _on_established(self, peer: Peer, neg: Negotiated) -> None:
        nb = self.config.global_
        peer.gen += 1
        peer.negotiated = neg
        peer.wall_established = time.time()
        peer.eor_received.clear()
        peer.hard_reset = False
        peer.max_prefix_warned = False
        log.info(
            "peer %s: established (AS %d, hold %ds, families %s)",
            peer.config.address,
            neg.remote_asn,
            neg.hold_time,
            ",".join(sorted(f.name for f in neg.families)),
        )
        peer.source = Source(
            key=peer.config.address,
            address=int(ipaddress.ip_address(peer.config.address)),
            router_id=neg.remote_router_id,
            asn=neg.remote_asn,
            ebgp=neg.remote_asn != nb.asn,
            rr_client=peer.config.route_reflector_client,
        )
        if peer.restart_timer is not None:
            peer.restart_timer.cancel()
            peer.restart_timer = None
        if peer.stale:
            flush = gr.flush_on_return(frozenset(peer.stale), neg)
            for fam in flush:
                log.info("peer %s: %s forwarding not preserved, stale routes flushed",
                         peer.config.address, fam.name)  # fmt: skip
                self._flush_peer(peer, fam, only_stale=True)
            peer.stale -= flush
            if peer.stale:
                # Keep the rest until the peer's End-of-RIB, bounded by our own timer.
                loop = asyncio.get_running_loop()
                peer.stale_timer = loop.call_later(
                    nb.graceful_restart_time, self._stale_expired, peer, "End-of-RIB wait"
                )
        peer.out = Outbound(
            key=peer.config.address,
            router_id=neg.remote_router_id,
            ctx=peer.session.context,
            policies={},
        )
        if self._export_enabled:
            for fam in sorted(neg.families):
                self._start_sync(peer, fam)
        elif neg.remote_gr is None or neg.remote_gr.restarting:
            # RFC 4724 §4.1: don't wait for End-of-RIB from a peer without GR, or from one
            # that is restarting too; it waits for ours, and two restarting speakers would
            # otherwise hold each other until select-defer-time (nodes that boot together).
            self._owes_no_eor(peer, "End-of-RIB from every neighbor that owes one")
        self._work.set()

    def _export_policy(self, peer: Peer, fam: Family) -> ExportPolicy:
        nb = peer.config
        assert peer.source is not None
        nh = self._next_hop(peer, fam)
        if nh is None:
            log.error(
                "peer %s: no %s next hop to announce with; set next-hop-%s",
                nb.address,
                fam.name,
                "ipv4" if fam.afi == AFI_IPV4 else "ipv6",
            )
        return ExportPolicy(
            family=fam,
            ebgp=peer.source.ebgp,
            remote_asn=peer.source.asn,
            rr_client=nb.route_reflector_client,
            next_hop_mode=nb.next_hop,
            self_next_hop=nh or (),
            remove_private_as=nb.remove_private_as,
            export_filter=nb.export_filter,
            addpath=fam in peer.session.context.addpath_tx,
        )

    def _start_sync(
        self, peer: Peer, fam: Family, *, force: bool = False, enhanced: bool = False
    ) -> None:
        if peer.out is None:
            return
        peer.out.policies[fam] = self._export_policy(peer, fam)
        # Earlier unfinished jobs for the same peer/family are superseded.
        self._sync_jobs = [j for j in self._sync_jobs if not (j.peer is peer and j.fam == fam)]
        prefixes = list(self.loc_rib.table(fam))
        if enhanced:
            # RFC 7313: BoRR goes ahead of the re-sent routes on the same connection.
            peer.session.send_route_refresh(fam, peer.driver.now(), ROUTE_REFRESH_BORR)
        self._sync_jobs.append(
            SyncJob(peer, fam, peer.gen, prefixes, force=force, enhanced=enhanced)
        )
        self._work.set()

    def _on_down(self, peer: Peer, event: SessionDown) -> None:
        log.warning("peer %s: session down: %s", peer.config.address, event.reason)
        keep = gr.retained_families(
            peer.config.graceful_restart, peer.negotiated, event, peer.hard_reset
        )
        peer.gen += 1
        peer.out = None
        peer.wall_established = None
        peer.eor_received.clear()
        if peer.stale_timer is not None:
            peer.stale_timer.cancel()
            peer.stale_timer = None
        if keep:
            neg = peer.negotiated
            assert neg is not None and neg.remote_gr is not None
            log.info(
                "peer %s: graceful restart, keeping %s routes stale for %ds",
                peer.config.address,
                ",".join(sorted(f.name for f in keep)),
                neg.remote_gr.restart_time,
            )
            for fam in peer.rib_in.families():
                if fam in keep:
                    self._mark_stale(peer, fam)
                else:
                    self._flush_peer(peer, fam)
            peer.stale |= set(keep)
            loop = asyncio.get_running_loop()
            peer.restart_timer = loop.call_later(
                neg.remote_gr.restart_time, self._stale_expired, peer, "restart time"
            )
        else:
            peer.stale.clear()
            for fam in peer.rib_in.families():
                self._flush_peer(peer, fam)
            peer.rib_in.clear()
        peer.negotiated = None
        self._work.set()

    def _mark_stale(self, peer: Peer, fam: Family) -> None:
        for _, path in self.loc_rib.paths_of(fam, peer.config.address):
            path.stale = True
        peer.rib_in.rejected.pop(fam, None)

    def _flush_peer(self, peer: Peer, fam: Family, *, only_stale: bool = False) -> int:
        key = peer.config.address
        gone = [
            (prefix, p.path_id)
            for prefix, p in self.loc_rib.paths_of(fam, key)
            if p.stale or not only_stale
        ]
        n = self.loc_rib.withdraw_many(fam, key, gone, track=self._changes_wanted(peer, fam))
        peer.rib_in.counted(fam, -n)
        if not only_stale:
            peer.rib_in.rejected.pop(fam, None)
        self._work.set()
        return n

    def _stale_expired(self, peer: Peer, why: str) -> None:
        n = sum(self._flush_peer(peer, fam, only_stale=True) for fam in list(peer.stale))
        log.info("peer %s: %s over, %d stale routes removed", peer.config.address, why, n)
        peer.stale.clear()
        peer.stale_timer = peer.restart_timer = None

    # -- convergence -------------------------------------------------------------------------

    def _defer_expired(self) -> None:
        self._defer_timer = None
        if not self.converged.is_set():
            self._converge(
                f"select-defer-time over, no End-of-RIB from {', '.join(sorted(self._awaiting_eor))}"
            )

    def _converge(self, why: str) -> None:
        if self.converged.is_set():
            return
        log.info("initial convergence: %s", why)
        if self._defer_timer is not None:
            self._defer_timer.cancel()
            self._defer_timer = None
        if not self._export_enabled:
            self._export_enabled = True
            for peer in self.peers.values():
                self._clear_restart_bit(peer)
                if peer.out is not None and peer.negotiated is not None:
                    for fam in sorted(peer.negotiated.families):
                        self._start_sync(peer, fam)
        # The worker sets `converged` once the decisions pending now are done.
        self._converging = True
        self._work.set()

    def _on_read(self, driver: PeerDriver, updates: list[Update]) -> None:
        """The UPDATEs of one read imported; reading that peer pauses if the routes read
        so far wait too deep in our queues (`bgpd.throttle`)."""
        self._on_updates(driver, updates)
        addr = driver.endpoint.address
        if self.throttle.after_read(addr, list(driver.transports.values())):
            self.peers[addr].read_pauses += 1

    def _backlog(self) -> int:
        """Routes read and not yet decided, or decided and not yet on their way to the kernel."""
        n = self.loc_rib.pending()
        if self.sink_backlog is not None:
            n += self.sink_backlog()
        return n

    def sink_from_start(self) -> None:
        """Hand every Loc-RIB change to `route_sink` as it is decided, from the first route on.

        For a FIB that holds nothing of ours: as BIRD's kernel protocol, routes reach the kernel
        while the table loads instead of after initial convergence. With routes of ours in the
        kernel (a restart), the sink waits for convergence so that they are compared with the
        whole table, not with the part learnt so far.
        """
        self.sink_live = True

    def _clear_restart_bit(self, peer: Peer) -> None:
        """After our restart is over, later OPENs must not claim we are restarting."""
        s = peer.session
        if s.config.restarting:
            s.config = replace(s.config, restarting=False)
            s.local_open = build_open(s.config)

    def originate(self, fam: Family, prefixes: list[Prefix]) -> None:
        """Announce locally originated prefixes (as [[originate]] does), at run time."""
        attrs = self.interner.intern(PathAttributes(origin=ORIGIN_IGP))
        for prefix in prefixes:
            self.loc_rib.update(fam, prefix, RibPath(LOCAL_SOURCE, attrs, ()))
        self._work.set()

    def withdraw_origin(self, fam: Family, prefixes: list[Prefix]) -> None:
        """Stop originating prefixes announced with `originate` or [[originate]]."""
        for prefix in prefixes:
            self.loc_rib.withdraw(fam, prefix, LOCAL_SOURCE.key, 0)
        self._work.set()

    def reachability_changed(self) -> None:
        """Re-run the decision for every prefix (next-hop reachability changed)."""
        self.loc_rib.mark_all()
        self._work.set()

    # -- the route worker --------------------------------------------------------------------

    async def _route_worker(self) -> None:
        while True:
            await self._work.wait()
            self._work.clear()
            while True:
                try:
                    if self.loc_rib.pending():
                        self._decide_slice()
                    elif self._converging:
                        self._converging = False
                        if not self.sink_live:
                            self._sink_everything()
                        self.converged.set()
                        continue
                    elif self._sync_jobs:
                        self._sync_slice()
                    else:
                        break
                except Exception:
                    # One bad slice must not stop routing for good; what it held is logged
                    # and the next slice goes on.
                    log.exception("route worker: a slice failed and was skipped")
                await asyncio.sleep(0)

    def _decide_slice(self) -> None:
        changes = self.loc_rib.decide(self.loc_rib.take_dirty(SLICE))
        by_fam: dict[Family, list[tuple[Prefix, Entry | None]]] = {}
        sinking = self.route_sink is not None and (self.sink_live or self.converged.is_set())
        # The FIB gets one list per family per slice; a slice holds one family or few.
        to_fib: dict[Family, list[tuple[Prefix, Entry | None]]] = {}
        last: Family | None = None
        items: list[tuple[Prefix, Entry | None]] = []
        fib_items: list[tuple[Prefix, Entry | None]] = []
        for fam, prefix, dest, fib_changed in changes:
            if fam is not last:
                items = by_fam.setdefault(fam, [])
                fib_items = to_fib.setdefault(fam, [])
                last = fam
            item = (prefix, dest)
            items.append(item)
            if fib_changed and sinking:
                fib_items.append(item)
        for fam, fib_items in to_fib.items():
            if fib_items:
                self._sink_batch(fam, fib_items)
        if not self._export_enabled:
            return
        encoder: EncodeCache | None = None
        outs = [p.out for p in self.peers.values() if p.out is not None]
        for fam, items in by_fam.items():
            members = _receivers(fam, items, outs)
            if members:
                encoder = encoder or EncodeCache()
                self._send_all(
                    export_changes(fam, items, members, self.local, self.interner, encoder)
                )

    def _sync_slice(self) -> None:
        job = self._sync_jobs[0]
        peer = job.peer
        if peer.gen != job.gen or peer.out is None:
            self._sync_jobs.pop(0)
            return
        table = self.loc_rib.table(job.fam)
        chunk = job.prefixes[job.pos : job.pos + SLICE]
        job.pos += len(chunk)
        items = [(p, table.get(p)) for p in chunk]
        # Peers that connect together walk the same table snapshot in the same slices, so a
        # long-lived encoder lets them share the UPDATE bytes as an update group does.
        self._send_all(
            export_changes(
                job.fam,
                items,
                [peer.out],
                self.local,
                self.interner,
                self._sync_encoder,
                force=job.force,
            )
        )
        if job.pos >= len(job.prefixes):
            self._sync_jobs.pop(0)
            if job.enhanced:
                peer.session.send_route_refresh(job.fam, peer.driver.now(), ROUTE_REFRESH_EORR)
                peer.driver.pump()
            else:
                self._send(peer, [encode_end_of_rib(job.fam)])

    def _send_all(self, batches: list[tuple[Outbound, list[bytes]]]) -> None:
        for out, msgs in batches:
            peer = self.peers.get(out.key)
            if peer is not None and peer.out is out:
                self._send(peer, msgs)

    def _send(self, peer: Peer, msgs: list[bytes]) -> None:
        peer.session.send_updates(msgs, peer.driver.now())
        peer.driver.pump()

    def _sink_everything(self) -> None:
        if self.route_sink is None:
            return
        for fam in list(self.loc_rib.tables):
            chunk: list[tuple[Prefix, Entry | None]] = []
            for prefix, dest in self.loc_rib.destinations(fam):
                if dest.best is not None:
                    chunk.append((prefix, dest))
                    if len(chunk) >= SLICE:
                        self._sink_batch(fam, chunk)
                        chunk = []
            if chunk:
                self._sink_batch(fam, chunk)

    def _sink_batch(self, fam: Family, items: list[tuple[Prefix, Entry | None]]) -> None:
        batch = self.route_sink_batch
        if batch is not None:
            try:
                batch(fam, items)
            except Exception:
                log.exception(
                    "route sink failed for %d routes from %s",
                    len(items),
                    prefix_to_str(fam.afi, items[0][0]),
                )
            return
        sink = self.route_sink
        if sink is not None:
            for prefix, dest in items:
                self._sink(sink, fam, prefix, dest)

    @staticmethod
    def _sink(sink: RouteSink, fam: Family, prefix: Prefix, dest: Entry | None) -> None:
        try:
            sink(fam, prefix, dest.multipath if dest is not None and dest.best else None)
        except Exception:
            log.exception("route sink failed for %s", prefix_to_str(fam.afi, prefix))

    def _next_hop(self, peer: Peer, fam: Family) -> tuple[int, ...] | None:
        """Next hop self: the session's own address when it is of the family, else configured."""
        gl, nb = self.config.global_, peer.config
        local = peer.driver.local_address
        if fam == IPV4_UNICAST:
            text = nb.next_hop_ipv4 or gl.next_hop_ipv4
            if text is None and local is not None and ":" not in local:
                text = local
            text = text or gl.router_id
        else:
            text = nb.next_hop_ipv6 or gl.next_hop_ipv6
            if text is None and local is not None and ":" in local:
                text = local
            text = text or global_ipv6_address()
        if text is None:
            return None
        return (int(ipaddress.ip_address(text)),)

    # -- operator actions --------------------------------------------------------------------

    def refresh(self, address: str, direction: str = "both") -> dict[str, Any]:
        """`routemesh bgp refresh PEER [in|out]`: ask for routes again, or send ours again."""
        peer = self.peers.get(address)
        if peer is None:
            raise ValueError(f"no neighbor {address}")
        if direction not in ("in", "out", "both"):
            raise ValueError("direction must be in, out or both")
        neg = peer.negotiated
        if neg is None or peer.out is None:
            raise ValueError(f"neighbor {address} is not Established")
        done: dict[str, Any] = {"peer": address}
        fams = sorted(neg.families)
        if direction in ("in", "both"):
            if not neg.route_refresh:
                raise ValueError(f"neighbor {address} did not offer route refresh")
            now = peer.driver.now()
            done["in"] = [f.name for f in fams if peer.session.send_route_refresh(f, now)]
            peer.driver.pump()
        if direction in ("out", "both"):
            if not self._export_enabled:
                raise ValueError("still converging after a restart: nothing is sent yet")
            for fam in fams:
                self._start_sync(peer, fam, force=True, enhanced=neg.enhanced_route_refresh)
            done["out"] = [f.name for f in fams]
        return done

    def reload(self) -> dict[str, Any]:
        """Re-read the config file: filters, next-hop mode and max-prefix apply at once.

        Changed import filters take effect for routes received from now on; run
        `routemesh bgp refresh PEER in` to re-evaluate what the peer already sent.
        """
        new = load_config(self.config.source)
        changed = []
        for nb in new.neighbors:
            peer = self.peers.get(nb.address)
            if peer is None or peer.config == nb:
                continue
            peer.config = nb
            changed.append(nb.address)
            if peer.out is not None and peer.negotiated is not None and self._export_enabled:
                for fam in sorted(peer.negotiated.families):
                    self._start_sync(peer, fam)
        added = sorted({nb.address for nb in new.neighbors} - set(self.peers))
        removed = sorted(set(self.peers) - {nb.address for nb in new.neighbors})
        if added or removed:
            # Sessions are made at start; adding or removing one needs a restart.
            log.warning("reload: neighbors added %s / removed %s need a restart", added, removed)
        neighbors = tuple(self.peers[a].config for a in self.peers)
        self.config = replace(self.config, neighbors=neighbors, filters=new.filters)
        log.info("configuration reloaded: %s", ", ".join(changed) or "no neighbor changed")
        return {"changed": changed, "need_restart": added + removed}

    def _reload_logged(self) -> None:
        try:
            self.reload()
        except ConfigError as err:
            log.error("reload failed, keeping the running configuration: %s", err)

    # -- control socket ----------------------------------------------------------------------

    def handle_request(self, request: dict[str, Any]) -> Any:
        cmd = request.get("cmd")
        if cmd == "status":
            return self.status()
        if cmd == "routes":
            return self.routes(request.get("family"))
        if cmd == "refresh":
            return self.refresh(str(request.get("peer")), str(request.get("direction", "both")))
        if cmd == "reload":
            try:
                return self.reload()
            except ConfigError as err:
                raise ValueError(str(err)) from None
        raise ValueError(f"unknown command {cmd!r}")

    def status(self) -> list[dict[str, Any]]:
        return [status_row(peer, self.config.global_.asn) for peer in self.peers.values()]

    def routes(self, family: str | None = None) -> list[dict[str, Any]]:
        return route_rows(self.loc_rib, self.decision, family)


def _receivers(
    fam: Family, items: list[tuple[Prefix, Entry | None]], outs: list[Outbound]
) -> list[Outbound]:
    """The peers these changes can mean anything to; often none, as while a peer sends us its
    table (nobody else is up, and nothing goes back to where it came from)."""
    members = [m for m in outs if fam in m.policies]
    if not members or any(m.rib_out.count(fam) for m in members):
        return members  # something sent may need a withdrawal
    sources: set[str] = set()
    for _, entry in items:
        if entry is None:
            continue
        if entry.__class__ is RibPath:
            sources.add(entry.source.key)  # type: ignore[union-attr]
        else:
            sources.update(p.source.key for p in entry.paths)
        if len(sources) > 1:
            return members
    if not sources:
        return []  # only prefixes gone, and nobody was sent anything
    # Only paths from one peer, and nothing sent to anyone: all but that peer may receive.
    return [m for m in members if {m.key} != sources]


def run_daemon(config: Config) -> int:
    """Run until SIGTERM/SIGINT, with the kernel FIB when `[fib]` enables it; the exit code."""
    from bgpd.standalone import serve  # it builds on Daemon

    try:
        return asyncio.run(serve(config))
    finally:
        sock = config.global_.control_socket
        if os.path.exists(sock):
            try:
                os.unlink(sock)
            except OSError:
                pass
