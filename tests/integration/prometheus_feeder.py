"""Two of our BGP speakers in one process on loopback, each exporting metrics on its own port.

Run by tests/integration/test_prometheus.py as a real process for a real Prometheus to scrape,
until the daemons serve `/metrics` themselves. Speaker A (127.0.0.1) dials speaker B
(127.0.0.2, passive); each announces its prefixes once Established. Protocol on stdio:
it prints one JSON line with both metrics ports, then obeys lines on stdin:
`start` (open the sessions), `withdraw N` (A withdraws its first N IPv4 prefixes), `stop`
(A ends the session with a Cease).
It sends sd_notify READY=1 when both sessions are Established, and exits at stdin EOF.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import sys

from bgpd.health import BGP_SESSIONS, HealthServer, Readiness
from bgpd.metrics import Metrics
from bgpd.sdnotify import Notifier
from bgpd.speaker.attributes import PathAttributes
from bgpd.speaker.events import Event, SessionDown, SessionEstablished, UpdateReceived
from bgpd.speaker.fsm import Session, SessionConfig
from bgpd.speaker.messages import encode_end_of_rib, encode_updates, encode_withdrawals
from bgpd.speaker.transport import Listener, PeerDriver, PeerEndpoint
from bgpd.speaker.types import IPV4_UNICAST, IPV6_UNICAST, NLRI, Family

ASN = 64512
FAMILIES = frozenset({IPV4_UNICAST, IPV6_UNICAST})


class Speaker:
    """One session's worth of a BGP speaker: announce, count what arrives, export metrics."""

    def __init__(
        self, address: str, peer: str, next_hop: str, origin: dict[Family, list[NLRI]]
    ) -> None:
        self.address, self.peer, self.next_hop = address, peer, next_hop
        self.origin = origin
        self.rib_in: dict[Family, set[NLRI]] = {f: set() for f in FAMILIES}
        self.metrics = Metrics(areas=("bgp",), process=True)
        self.readiness = Readiness([BGP_SESSIONS])
        self.server = HealthServer(
            self.metrics, self.readiness, host="127.0.0.1", port=0, before_scrape=[self.export]
        )
        self.driver: PeerDriver | None = None
        self.metrics.bgp.add_peer(peer)

    def make_driver(self, peer_port: int, passive: bool) -> PeerDriver:
        config = SessionConfig(
            local_asn=ASN,
            router_id=int(ipaddress.IPv4Address(self.address)),
            remote_asn=ASN,
            families=FAMILIES,
            passive=passive,
            hold_time=9,
            connect_retry=1,
        )
        endpoint = PeerEndpoint(self.peer, peer_port, source_address=self.address)
        self.driver = PeerDriver(Session(config), endpoint, self.on_event)
        return self.driver

    def on_event(self, driver: PeerDriver, event: Event) -> None:
        self.metrics.bgp.on_event(self.peer, event)
        if isinstance(event, SessionEstablished):
            self.announce()
            self.readiness.set(BGP_SESSIONS, True)
        elif isinstance(event, SessionDown):
            for table in self.rib_in.values():
                table.clear()
            self.readiness.set(BGP_SESSIONS, False, event.reason)
        elif isinstance(event, UpdateReceived):
            update = event.update
            for fam, nlri in update.withdraw.items():
                self.rib_in[fam].difference_update(nlri)
            for fam, nlri in update.announce.items():
                self.rib_in[fam].update(nlri)

    def announce(self) -> None:
        assert self.driver is not None
        session = self.driver.session
        attrs = PathAttributes(origin=0, as_path=(), local_pref=100)
        # A loopback NEXT_HOP is treated as withdraw (RFC 7606); the underlay range is not,
        # and nothing is ever sent to it.
        hops = {
            IPV4_UNICAST: (int(ipaddress.IPv4Address(self.next_hop)),),
            IPV6_UNICAST: (int(ipaddress.IPv6Address("fd00:198:18::1")),),
        }
        for fam in sorted(FAMILIES):
            msgs = encode_updates(session.context, fam, attrs, self.origin[fam], hops[fam])
            self.metrics.bgp.on_prefix_updates(self.peer, "out", fam, len(self.origin[fam]), 0)
            session.send_updates([*msgs, encode_end_of_rib(fam)], self.driver.now())
        self.driver.pump()

    def withdraw(self, count: int) -> None:
        assert self.driver is not None
        gone, self.origin[IPV4_UNICAST] = (
            self.origin[IPV4_UNICAST][:count],
            self.origin[IPV4_UNICAST][count:],
        )
        session = self.driver.session
        session.send_updates(
            encode_withdrawals(session.context, IPV4_UNICAST, gone), self.driver.now()
        )
        self.metrics.bgp.on_prefix_updates(self.peer, "out", IPV4_UNICAST, 0, len(gone))
        self.driver.pump()

    def export(self) -> None:
        """Before each scrape: the FSM's message totals and the current prefix counts."""
        if self.driver is None:
            return
        self.metrics.bgp.observe_session(self.peer, self.driver.session)
        up = self.driver.session.state.value == "Established"
        for fam in FAMILIES:
            n = len(self.rib_in[fam])
            advertised = len(self.origin[fam]) if up else 0
            self.metrics.bgp.set_prefixes(self.peer, fam, n, n, advertised)


def prefixes(base: str, count: int, plen: int) -> list[NLRI]:
    net = ipaddress.ip_network(base)
    step = 1 << (net.max_prefixlen - plen)
    start = int(net.network_address)
    return [(start + i * step, plen, 0) for i in range(count)]


async def main(v4: int, v6: int) -> int:
    a = Speaker(
        "127.0.0.1",
        "127.0.0.2",
        "198.18.0.1",
        {
            IPV4_UNICAST: prefixes("10.244.0.0/16", v4, 26),
            IPV6_UNICAST: prefixes("fd00:244::/48", v6, 122),
        },
    )
    b = Speaker(
        "127.0.0.2",
        "127.0.0.1",
        "198.18.0.2",
        {
            IPV4_UNICAST: prefixes("10.244.128.0/17", 3, 26),
            IPV6_UNICAST: prefixes("fd00:245::/48", 1, 122),
        },
    )
    notifier = Notifier.from_env(unset=True)
    state = {"ready": False}

    def maybe_ready(_ok: bool) -> None:
        both = a.readiness.ready and b.readiness.ready
        if both and not state["ready"]:
            notifier.ready("2/2 BGP sessions Established")
        state["ready"] = both

    a.readiness.on_change(maybe_ready)
    b.readiness.on_change(maybe_ready)

    listener = Listener(lambda addr: b.driver if addr == "127.0.0.1" else None)
    await listener.listen("127.0.0.2", 0, {})
    b_port = listener.sockets[0].getsockname()[1]
    b.make_driver(0, passive=True)
    a.make_driver(b_port, passive=False)
    await a.server.start()
    await b.server.start()
    print(json.dumps({"a": a.server.port, "b": b.server.port, "bgp": b_port}), flush=True)

    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    try:
        while line := (await reader.readline()).decode().split():
            if line[0] == "start":
                b.driver.start()
                a.driver.start()
            elif line[0] == "withdraw":
                a.withdraw(int(line[1]))
            elif line[0] == "stop":
                a.driver.stop()
            print("ok", flush=True)
    finally:
        notifier.stopping()
        for s in (a, b):
            if s.driver is not None:
                s.driver.stop()
        await asyncio.sleep(0.1)
        for s in (a, b):
            if s.driver is not None:
                s.driver.close_all()
            await s.server.close()
        await listener.close()
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--v4", type=int, default=20)
    parser.add_argument("--v6", type=int, default=5)
    args = parser.parse_args()
    sys.exit(asyncio.run(main(args.v4, args.v6)))
