"""Every malformed message of the live table, sent by a raw TCP peer to one running bgpd.

One daemon serves the whole module: a raw "victim" neighbor that each case reconnects as, and
a healthy BIRD session that must stay up, unchanged, through every case.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from bgpd.control import request
from tests.integration.malformed_live_cases import LIVE_CASES, LIVE_PREFIX, PEER_ASN, LiveCase
from tests.lab.netns import Lab, Netns
from tests.lab.ours import Neighbor as OurNeighbor
from tests.lab.ours import RoutemeshSpeaker
from tests.lab.peers import BirdPeer
from tests.lab.peers import Neighbor as PeerNeighbor
from tests.lab.rawpeer import (
    KEEPALIVE,
    MSG_NOTIFICATION,
    RawPeer,
    build_announce,
    build_open,
)
from tests.lab.require import require_netns, require_root
from tests.lab.waiting import wait_for

OUR_ASN = 64512
BIRD_ASN = 64513
DUT_BIRD, BIRD_ADDR = "198.18.30.1", "198.18.30.2"
DUT_RAW, RAW_ADDR = "198.18.31.1", "198.18.31.2"
BIRD_ROUTES = {"10.244.2.0/26", "10.244.2.64/26"}
OUR_ROUTE = "10.244.100.0/24"
# Announced after each RFC 7606 case: once it is in the table, the case's UPDATE (sent just
# before it on the same connection) has been processed too.
BARRIER = "10.244.255.0/24"
CEASE = b"\xff" * 16 + b"\x00\x15\x03\x06\x02"


@dataclass
class Suite:
    lab: Lab
    raw_ns: Netns
    ours: RoutemeshSpeaker
    bird: BirdPeer
    bird_since: float
    bird_uptime: float = 0.0

    def ask(self, cmd: str, **args: Any) -> Any:
        # Straight to the control socket: the CLI would cost a Python start per poll.
        return request(self.ours.sock, cmd, **args)

    def row(self, addr: str) -> dict[str, Any]:
        (row,) = [r for r in self.ask("status") if r["peer"] == addr]
        return row

    def victim_routes(self) -> dict[str, dict[str, Any]]:
        rows = self.ask("routes", family="ipv4-unicast")
        return {r["prefix"]: r for r in rows if r["peer"] == RAW_ADDR}


def bird_since(bird: BirdPeer) -> float:
    """Seconds of day of BIRD's 'Since' column for our session: it moves when the session flaps.

    BIRD derives it from its monotonic clock, so two reads may differ by a millisecond.
    """
    out = bird.birdc("show", "protocols", BirdPeer.proto_name(DUT_BIRD))
    for line in out.splitlines():
        if line.startswith(BirdPeer.proto_name(DUT_BIRD)):
            fields = line.split()
            assert fields[3] == "up" and "Established" in line, line
            h, m, s = fields[4].split(":")
            return int(h) * 3600 + int(m) * 60 + float(s)
    raise AssertionError(f"BIRD has no protocol for {DUT_BIRD}:\n{out}")


@pytest.fixture(scope="module")
def suite() -> Iterator[Suite]:
    require_root()
    require_netns()
    BirdPeer.require()
    with Lab() as lab:
        dut, bird_ns, raw_ns = lab.netns(), lab.netns(), lab.netns()
        lab.veth(dut, bird_ns, f"{DUT_BIRD}/24", f"{BIRD_ADDR}/24")
        lab.veth(dut, raw_ns, f"{DUT_RAW}/24", f"{RAW_ADDR}/24")
        bird = BirdPeer(
            bird_ns,
            asn=BIRD_ASN,
            router_id=BIRD_ADDR,
            local_addresses=[BIRD_ADDR],
            neighbors=[PeerNeighbor(DUT_BIRD, OUR_ASN, hold_time=9, families=("ipv4",))],
        )
        bird.announce(sorted(BIRD_ROUTES))
        bird.start()
        ours = RoutemeshSpeaker(
            lab,
            dut,
            asn=OUR_ASN,
            router_id=DUT_BIRD,
            neighbors=[
                OurNeighbor(BIRD_ADDR, BIRD_ASN, hold_time=9),
                OurNeighbor(
                    RAW_ADDR, PEER_ASN, families=("ipv4-unicast", "ipv6-unicast"), passive=True
                ),
            ],
            originate=[OUR_ROUTE],
            listen=["0.0.0.0"],
        ).start()
        ours.wait_established(BIRD_ADDR, timeout=30)
        bird.wait_established(DUT_BIRD, timeout=30)
        bird.wait_routes({(OUR_ROUTE, DUT_BIRD)}, timeout=30)
        st = Suite(lab, raw_ns, ours, bird, bird_since(bird))
        wait_for(
            lambda: {p for p, _ in ours.learned()} >= BIRD_ROUTES,
            timeout=30,
            what="BIRD routes at routemesh",
        )
        yield st
        # The healthy session outlived every case with its routes both ways.
        assert st.row(BIRD_ADDR)["established_count"] == 1
        bird.wait_routes({(OUR_ROUTE, DUT_BIRD)}, timeout=5)


@pytest.fixture
def victim(suite: Suite) -> Iterator[RawPeer]:
    """A fresh raw connection as the victim neighbor; afterwards the healthy session is intact."""
    # The previous case's session must be gone, or this connection would count as a collision.
    wait_for(
        lambda: suite.row(RAW_ADDR)["state"] in ("Idle", "Active"),
        timeout=10,
        what="victim session down before the next case",
        describe=lambda: suite.ours.log_text()[-2000:],
    )
    peer = RawPeer(DUT_RAW, netns=suite.raw_ns.name, timeout=5).connect()
    try:
        yield peer
    finally:
        peer.close()
    assert suite.ours.alive(), "bgpd died:\n" + suite.ours.log_text()[-3000:]
    row = suite.row(BIRD_ADDR)
    assert row["state"] == "Established", row
    assert row["established_count"] == 1, row
    assert row["uptime_s"] >= suite.bird_uptime, row
    suite.bird_uptime = row["uptime_s"]
    assert {p for p, r in _routes_from(suite, BIRD_ADDR).items()} == BIRD_ROUTES
    # A flap takes BIRD at least its 1 s connect delay, far more than the clock jitter.
    since = bird_since(suite.bird)
    assert abs(since - suite.bird_since) < 0.5, f"BIRD's session restarted: {since}"


def _routes_from(suite: Suite, peer: str) -> dict[str, dict[str, Any]]:
    rows = suite.ask("routes", family="ipv4-unicast")
    return {r["prefix"]: r for r in rows if r["peer"] == peer}


def _diagnostics_since(suite: Suite, offset: int) -> list[str]:
    text = suite.ours.log_text()[offset:]
    return re.findall(r"malformed UPDATE handled per RFC 7606: (.*)", text)


def _wait_route(suite: Suite, prefix: str, present: bool, what: str) -> None:
    wait_for(
        lambda: (prefix in suite.victim_routes()) == present,
        timeout=10,
        what=what,
        describe=lambda: (
            f"victim routes: {suite.victim_routes()}\n" + suite.ours.log_text()[-2000:]
        ),
    )


def _established(suite: Suite, peer: RawPeer, case: LiveCase) -> int:
    """Handshake as the victim; returns its established_count once Established."""
    peer.handshake(
        build_open(PEER_ASN, RAW_ADDR, asn4=case.asn4, extended_message=case.extended_message)
    )
    wait_for(
        lambda: suite.row(RAW_ADDR)["state"] == "Established",
        timeout=5,
        what="victim Established",
    )
    return suite.row(RAW_ADDR)["established_count"]


def _announce(peer: RawPeer, prefix: str, case: LiveCase) -> None:
    for update in build_announce([prefix], RAW_ADDR, (PEER_ASN,), asn4=case.asn4):
        peer.send(update)


@pytest.mark.parametrize("case", LIVE_CASES, ids=[c.name for c in LIVE_CASES])
def test_malformed(suite: Suite, victim: RawPeer, case: LiveCase) -> None:
    kind = case.expect[0]
    if case.stage == "open":
        victim.send(case.raw)
    else:
        count = _established(suite, victim, case)
        log_offset = len(suite.ours.log_text())
        if kind == "withdraw":
            # Treat-as-withdraw must remove a route the peer announced earlier.
            _announce(victim, LIVE_PREFIX, case)
            _wait_route(suite, LIVE_PREFIX, True, "valid announcement before the case")
        victim.send(case.raw)

    if kind == "notify":
        _, code, subcode, data = case.expect
        got = victim.expect_notification()
        assert got[:2] == (code, subcode), f"NOTIFICATION {got}, expected {case.expect[1:]}"
        if data is not None:
            assert got[2] == data, f"NOTIFICATION data {got[2].hex()}, expected {data.hex()}"
        victim.expect_closed()
        return
    if kind == "closed":
        leftover = [m for m in victim.drain(quiet=2.0) if m.type == MSG_NOTIFICATION]
        assert not leftover, f"daemon answered a NOTIFICATION with {leftover}"
        assert victim.eof, "daemon kept the connection open after the peer's NOTIFICATION"
        return
    if kind == "incomplete":
        # Half a message is not acted on: no answer, the session stays as it was.
        time.sleep(1.0)
        got = [m for m in victim.drain(quiet=0.2) if m.type == MSG_NOTIFICATION]
        assert not got and not victim.eof, got
        assert suite.row(RAW_ADDR)["state"] == "Established"
        return  # closing mid-message ends it; anything sent now would complete the fragment

    # RFC 7606 outcomes: the session survives, the table shows the treatment.
    _announce(victim, BARRIER, case)
    _wait_route(suite, BARRIER, True, "barrier route after the case's UPDATE")
    routes = suite.victim_routes()
    if kind == "withdraw":
        assert LIVE_PREFIX not in routes, routes[LIVE_PREFIX]
        # And as the operator sees it, through the CLI.
        cli = {r["prefix"] for r in suite.ours.routes("ipv4-unicast") if r["peer"] == RAW_ADDR}
        assert LIVE_PREFIX not in cli and BARRIER in cli, cli
    else:  # discard / ok: the route stands, minus the bad attribute
        assert LIVE_PREFIX in routes, routes
        for key, value in case.route.items():
            assert routes[LIVE_PREFIX][key] == value, (key, routes[LIVE_PREFIX])
    text = case.expect[1]
    if text:
        diags = _diagnostics_since(suite, log_offset)
        assert any(text in d for d in diags), f"no diagnostic naming {text!r}: {diags}"
    row = suite.row(RAW_ADDR)
    assert row["state"] == "Established" and row["established_count"] == count, row
    got = [m for m in victim.drain(quiet=0.1) if m.type == MSG_NOTIFICATION]
    assert not got and not victim.eof, got
    victim.send(KEEPALIVE)
    victim.send(CEASE)
