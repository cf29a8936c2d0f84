"""What the daemon keeps per neighbor (`Peer`), queued full-table sends (`SyncJob`), and the
`bgp status` row of a neighbor."""

from __future__ import annotations

import asyncio
import ipaddress
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bgpd.config import NeighborConfig
from bgpd.reflector.groups import Outbound
from bgpd.speaker.capabilities import Negotiated
from bgpd.speaker.events import State
from bgpd.speaker.fsm import Session
from bgpd.speaker.rib import AdjRibIn, Source
from bgpd.speaker.transport import PeerDriver
from bgpd.speaker.types import Family, Prefix


@dataclass(slots=True)
class Peer:
    """Everything the daemon keeps about one neighbor."""

    config: NeighborConfig
    driver: PeerDriver
    rib_in: AdjRibIn = field(default_factory=AdjRibIn)
    out: Outbound | None = None  # set while Established
    source: Source | None = None
    negotiated: Negotiated | None = None
    eor_received: set[Family] = field(default_factory=set)
    wall_established: float | None = None
    gen: int = 0  # bumped per session, so queued work for an old session is dropped
    stale: set[Family] = field(default_factory=set)
    stale_timer: asyncio.TimerHandle | None = None
    hard_reset: bool = False
    max_prefix_warned: bool = False
    read_pauses: int = 0  # times reading it paused for our backlog (bgpd.throttle)
    restart_timer: asyncio.TimerHandle | None = None

    @property
    def session(self) -> Session:
        return self.driver.session


@dataclass(slots=True)
class SyncJob:
    """A full-table send to one peer/family: initial sync or route refresh out, in slices."""

    peer: Peer
    fam: Family
    gen: int
    prefixes: list[Prefix]
    pos: int = 0
    force: bool = False
    enhanced: bool = False


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


def status_row(peer: Peer, local_asn: int) -> dict[str, Any]:
    """One neighbor as `routemesh bgp status -o json` shows it (issue 2's fields, plus RIB ones)."""
    s = peer.session
    uptime = (
        round(time.time() - peer.wall_established, 1)
        if peer.wall_established is not None and s.state is State.ESTABLISHED
        else 0
    )
    return {
        "peer": peer.config.address,
        "remote_asn": peer.config.remote_asn,
        "type": "internal" if peer.config.remote_asn == local_asn else "external",
        "state": s.state.value,
        "uptime_s": uptime,
        "prefixes_received": peer.rib_in.received_count(),
        "prefixes_accepted": peer.rib_in.accepted_count(),
        "prefixes_advertised": peer.out.rib_out.count() if peer.out else 0,
        "last_error": s.last_error,
        "families": sorted(f.name for f in (s.negotiated.families if s.negotiated else ())),
        "messages_in": dict(s.messages_in),
        "messages_out": dict(s.messages_out),
        "established_count": s.established_count,
        "route_reflector_client": peer.config.route_reflector_client,
        "stale": sorted(f.name for f in peer.stale),
        "eor_received": sorted(f.name for f in peer.eor_received),
        "read_pauses": peer.read_pauses,
    }
