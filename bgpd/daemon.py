"""The standalone BGP daemon: one task owns every session, the received routes and what we announce.

Until the RIB lands (issue "RIB, best path and route reflection"), received routes are kept per
peer exactly as they arrived, and the configured prefixes are announced to every peer.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bgpd.config import Config, NeighborConfig
from bgpd.control import ControlServer
from bgpd.speaker.attributes import PathAttributes
from bgpd.speaker.events import (
    Event,
    RouteRefreshReceived,
    SessionDown,
    SessionEstablished,
    State,
    StateChanged,
    UpdateReceived,
)
from bgpd.speaker.fsm import Session, SessionConfig
from bgpd.speaker.messages import encode_end_of_rib, encode_updates
from bgpd.speaker.transport import Listener, PeerDriver, PeerEndpoint
from bgpd.speaker.types import (
    AFI_IPV4,
    IPV4_UNICAST,
    IPV6_UNICAST,
    NLRI,
    Family,
    ip_to_str,
    prefix_to_str,
)

log = logging.getLogger("routemesh.bgpd")

AS_SEQUENCE = 2
ORIGIN_IGP = 0


@dataclass(slots=True)
class Peer:
    """Everything the daemon keeps about one neighbor."""

    config: NeighborConfig
    driver: PeerDriver
    rib_in: dict[Family, dict[NLRI, tuple[PathAttributes, tuple[int, ...]]]] = field(
        default_factory=dict
    )
    # Received but not accepted (our own AS in the path): counted, never used.
    rejected: dict[Family, set[NLRI]] = field(default_factory=dict)
    advertised: dict[Family, int] = field(default_factory=dict)
    eor_received: set[Family] = field(default_factory=set)
    wall_established: float | None = None

    @property
    def session(self) -> Session:
        return self.driver.session


def global_ipv6_address() -> str | None:
    """First global IPv6 address of this network namespace, read from /proc (no netlink)."""
    try:
        lines = Path("/proc/net/if_inet6").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        hexaddr, _idx, _plen, scope, _flags, ifname = line.split()
        if scope == "00" and ifname != "lo":
            return str(ipaddress.IPv6Address(bytes.fromhex(hexaddr)))
    return None


class Daemon:
    """Owns sessions and routes; every mutation happens on the event loop's one thread."""

    def __init__(self, config: Config) -> None:
        self.config = config
        gl = config.global_
        self.router_id = int(ipaddress.IPv4Address(gl.router_id))
        self.peers: dict[str, Peer] = {}
        self.listener = Listener(self._lookup)
        self.control: ControlServer | None = None
        self.started = time.time()
        self._stopping = asyncio.Event()
        self._origin: dict[Family, list[NLRI]] = {}
        for org in config.originate:
            self._origin.setdefault(org.family, []).append((*org.prefix, 0))

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
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stopping.set)
        log.info(
            "bgpd started: AS %d router-id %s, %d neighbors, listening on %s port %d",
            gl.asn,
            gl.router_id,
            len(self.peers),
            ", ".join(gl.listen_addresses) or "(nothing)",
            gl.listen_port,
        )
        for peer in self.peers.values():
            peer.driver.start()
        await self._stopping.wait()
        await self.shutdown()
        return 0

    def request_stop(self) -> None:
        self._stopping.set()

    async def shutdown(self) -> None:
        """Cease every session (RFC 4486 Administrative Shutdown) and close what we opened."""
        log.info("shutting down: sending Cease to every peer")
        for peer in self.peers.values():
            peer.driver.stop()
        # Give the transports a moment to flush the NOTIFICATIONs before the loop ends.
        await asyncio.sleep(0.1)
        for peer in self.peers.values():
            peer.driver.close_all()
        await self.listener.close()
        if self.control is not None:
            await self.control.close()

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
            add_path=add_path,
            hostname=gl.hostname,
        )
        endpoint = PeerEndpoint(
            address=nb.address,
            port=nb.port,
            source_address=nb.source_address,
            password=nb.password,
            ttl_security=nb.ttl_security,
        )
        return PeerDriver(Session(scfg), endpoint, self._on_event, loop)

    def _lookup(self, address: str) -> PeerDriver | None:
        peer = self.peers.get(address)
        return peer.driver if peer is not None else None

    def _on_event(self, driver: PeerDriver, event: Event) -> None:
        peer = self.peers[driver.endpoint.address]
        if isinstance(event, UpdateReceived):
            self._on_update(peer, event)
        elif isinstance(event, StateChanged):
            log.info("peer %s: %s -> %s", peer.config.address, event.old.value, event.new.value)
        elif isinstance(event, SessionEstablished):
            neg = event.negotiated
            peer.wall_established = time.time()
            log.info(
                "peer %s: established (AS %d, hold %ds, families %s)",
                peer.config.address,
                neg.remote_asn,
                neg.hold_time,
                ",".join(sorted(f.name for f in neg.families)),
            )
            self._announce(peer, neg.families)
        elif isinstance(event, SessionDown):
            log.warning("peer %s: session down: %s", peer.config.address, event.reason)
            peer.rib_in.clear()
            peer.rejected.clear()
            peer.advertised.clear()
            peer.eor_received.clear()
            peer.wall_established = None
        elif isinstance(event, RouteRefreshReceived):
            self._announce(peer, frozenset({event.family}))

    def _on_update(self, peer: Peer, event: UpdateReceived) -> None:
        update = event.update
        for diag in update.diagnostics:
            log.warning(
                "peer %s: malformed UPDATE handled per RFC 7606: %s", peer.config.address, diag
            )
        for fam, nlri in update.withdraw.items():
            table = peer.rib_in.get(fam, {})
            rejected = peer.rejected.get(fam, set())
            for key in nlri:
                table.pop(key, None)
                rejected.discard(key)
        eor = update.end_of_rib()
        if eor is not None:
            peer.eor_received.add(eor)
            return
        attrs = update.attrs
        if attrs is None:
            return
        # RFC 4271 §9.1.2: a path that already crossed our AS is a loop and is not accepted.
        looped = self.config.global_.asn in attrs.asns()
        for fam, nlri in update.announce.items():
            table = peer.rib_in.setdefault(fam, {})
            rejected = peer.rejected.setdefault(fam, set())
            if looped:
                for key in nlri:
                    table.pop(key, None)
                rejected.update(nlri)
                continue
            value = (attrs, update.next_hop.get(fam, ()))
            for key in nlri:
                table[key] = value
                rejected.discard(key)

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

    def _attributes(self, peer: Peer) -> PathAttributes:
        gl = self.config.global_
        ebgp = peer.config.remote_asn != gl.asn
        return PathAttributes(
            origin=ORIGIN_IGP,
            as_path=((AS_SEQUENCE, (gl.asn,)),) if ebgp else (),
            local_pref=None if ebgp else 100,
        )

    def _announce(self, peer: Peer, families: frozenset[Family]) -> None:
        session = peer.session
        ctx = session.context
        now = peer.driver.now()
        for fam in sorted(families):
            prefixes = self._origin.get(fam, [])
            messages: list[bytes] = []
            if prefixes:
                next_hop = self._next_hop(peer, fam)
                if next_hop is None:
                    log.error(
                        "peer %s: no %s next hop to announce with; set next-hop-%s",
                        peer.config.address,
                        fam.name,
                        "ipv4" if fam.afi == AFI_IPV4 else "ipv6",
                    )
                    continue
                nlri = prefixes
                if fam in ctx.addpath_tx:
                    nlri = [(a, plen, 1) for a, plen, _ in prefixes]
                attrs = self._attributes(peer)
                messages = encode_updates(ctx, fam, attrs, nlri, next_hop)
            messages.append(encode_end_of_rib(fam))
            session.send_updates(messages, now)
            peer.advertised[fam] = len(prefixes)
        peer.driver.pump()

    # -- control socket ----------------------------------------------------------------------

    def handle_request(self, request: dict[str, Any]) -> Any:
        cmd = request.get("cmd")
        if cmd == "status":
            return self.status()
        if cmd == "routes":
            return self.routes(request.get("family"))
        raise ValueError(f"unknown command {cmd!r}")

    def status(self) -> list[dict[str, Any]]:
        rows = []
        for peer in self.peers.values():
            s = peer.session
            accepted = sum(len(t) for t in peer.rib_in.values())
            received = accepted + sum(len(r) for r in peer.rejected.values())
            uptime = (
                round(time.time() - peer.wall_established, 1)
                if peer.wall_established is not None and s.state is State.ESTABLISHED
                else 0
            )
            rows.append(
                {
                    "peer": peer.config.address,
                    "remote_asn": peer.config.remote_asn,
                    "type": "internal"
                    if peer.config.remote_asn == self.config.global_.asn
                    else "external",
                    "state": s.state.value,
                    "uptime_s": uptime,
                    "prefixes_received": received,
                    "prefixes_accepted": accepted,
                    "prefixes_advertised": sum(peer.advertised.values()),
                    "last_error": s.last_error,
                    "families": sorted(
                        f.name for f in (s.negotiated.families if s.negotiated else ())
                    ),
                    "messages_in": dict(s.messages_in),
                    "messages_out": dict(s.messages_out),
                    "established_count": s.established_count,
                }
            )
        return rows

    def routes(self, family: str | None = None) -> list[dict[str, Any]]:
        fams = [IPV4_UNICAST, IPV6_UNICAST]
        if family is not None:
            fams = [f for f in fams if f.name == family]
            if not fams:
                raise ValueError(f"unknown family {family!r}")
        out: list[dict[str, Any]] = []
        for fam in fams:
            # Interim best path until the RIB issue: a local route wins, then the shortest
            # AS_PATH, then the lowest peer address. The RIB replaces this with RFC 4271 §9.1.
            candidates: dict[tuple[int, int], list[dict[str, Any]]] = {}
            for addr, plen, _ in self._origin.get(fam, []):
                row = {
                    "prefix": prefix_to_str(fam.afi, (addr, plen)),
                    "family": fam.name,
                    "next_hop": None,
                    "as_path": [],
                    "origin": "IGP",
                    "peer": None,
                    "best": False,
                    "communities": [],
                    "_rank": (0, 0, ""),
                }
                candidates.setdefault((addr, plen), []).append(row)
            for peer in self.peers.values():
                for (addr, plen, path_id), (attrs, nh) in peer.rib_in.get(fam, {}).items():
                    row = route_row(fam, addr, plen, path_id, attrs, nh)
                    row["peer"] = peer.config.address
                    row["_rank"] = (1, attrs.as_path_length(), peer.config.address)
                    candidates.setdefault((addr, plen), []).append(row)
            for key in sorted(candidates):
                rows = candidates[key]
                min(rows, key=lambda r: r["_rank"])["best"] = True
                for row in rows:
                    del row["_rank"]
                    out.append(row)
        return out


ORIGIN_NAMES = {0: "IGP", 1: "EGP", 2: "incomplete"}


def route_row(
    fam: Family, addr: int, plen: int, path_id: int, attrs: PathAttributes, nh: tuple[int, ...]
) -> dict[str, Any]:
    """One path as `routemesh bgp routes -o json` shows it."""
    row: dict[str, Any] = {
        "prefix": prefix_to_str(fam.afi, (addr, plen)),
        "family": fam.name,
        "next_hop": _next_hop_text(fam, nh),
        "as_path": list(attrs.asns()),
        "origin": ORIGIN_NAMES.get(attrs.origin, str(attrs.origin))
        if attrs.origin is not None
        else None,
        "peer": None,
        "best": False,
        "communities": [f"{c >> 16}:{c & 0xFFFF}" for c in attrs.communities],
    }
    if path_id:
        row["path_id"] = path_id
    if attrs.med is not None:
        row["med"] = attrs.med
    if attrs.local_pref is not None:
        row["local_pref"] = attrs.local_pref
    if attrs.large_communities:
        row["large_communities"] = [f"{a}:{b}:{c}" for a, b, c in attrs.large_communities]
    if attrs.originator_id is not None:
        row["originator_id"] = ip_to_str(attrs.originator_id, AFI_IPV4)
    if attrs.cluster_list:
        row["cluster_list"] = [ip_to_str(c, AFI_IPV4) for c in attrs.cluster_list]
    return row


def _next_hop_text(fam: Family, nh: tuple[int, ...]) -> str | None:
    if not nh:
        return None
    # An IPv4 route may carry an IPv6 next hop (RFC 8950); the value's size tells which.
    afi = AFI_IPV4 if fam == IPV4_UNICAST and nh[0] <= 0xFFFFFFFF else 2
    return ip_to_str(nh[0], afi)


def run_daemon(config: Config) -> int:
    """Run until SIGTERM/SIGINT; returns the process exit code."""
    daemon = Daemon(config)
    try:
        return asyncio.run(daemon.run())
    finally:
        sock = config.global_.control_socket
        if os.path.exists(sock):
            try:
                os.unlink(sock)
            except OSError:
                pass
