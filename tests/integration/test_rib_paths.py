"""Two paths to one prefix from two real GoBGP peers: the winner and its reason follow RFC 4271
when LOCAL_PREF, AS_PATH, MED or router-id differ; with multipath on and ADD-PATH negotiated a
BIRD client receives both paths through our reflector."""

from __future__ import annotations

from tests.lab.netns import Lab
from tests.lab.ours import Neighbor as OurNeighbor
from tests.lab.ours import RoutemeshSpeaker
from tests.lab.peers import BirdPeer, GobgpPeer
from tests.lab.peers import Neighbor as PeerNeighbor
from tests.lab.require import require_root
from tests.lab.waiting import wait_for

ASN = 64512
OURS, A, B, C = "198.18.60.1", "198.18.60.2", "198.18.60.3", "198.18.60.4"
PREFIX = "10.244.9.0/24"


def test_winner_and_reason_per_step_then_multipath_with_add_path(lab: Lab) -> None:
    require_root()
    GobgpPeer.require()
    BirdPeer.require()
    ours_ns, a_ns, b_ns, c_ns = (lab.netns() for _ in range(4))
    lab.bridge([ours_ns, a_ns, b_ns, c_ns], [f"{x}/24" for x in (OURS, A, B, C)])
    gobgps = {}
    for addr, ns in ((A, a_ns), (B, b_ns)):
        g = GobgpPeer(ns, asn=ASN, router_id=addr, local_addresses=[addr],
                      neighbors=[PeerNeighbor(OURS, ASN, hold_time=9, families=("ipv4",))])  # fmt: skip
        g.start()
        gobgps[addr] = g
    client = BirdPeer(c_ns, asn=ASN, router_id=C, local_addresses=[C],
                      neighbors=[PeerNeighbor(OURS, ASN, hold_time=9, families=("ipv4",),
                                              add_paths=True)])  # fmt: skip
    client.start()
    rr = {"route-reflector-client": True}
    ours = RoutemeshSpeaker(
        lab,
        ours_ns,
        asn=ASN,
        router_id=OURS,
        neighbors=[
            # A and B are non-clients: neither sees the other's path, so each keeps sending
            # its own whatever its attributes (a client would switch to the better one).
            OurNeighbor(A, ASN, hold_time=9),
            OurNeighbor(B, ASN, hold_time=9),
            OurNeighbor(C, ASN, hold_time=9, add_path="send", extra=rr),
        ],
        listen=["0.0.0.0"],
        extra_global={"cluster-id": "244.0.0.9", "multipath": 4},
    ).start()
    for addr in (A, B, C):
        ours.wait_established(addr, timeout=60)

    def announce(a_attrs: list[str], b_attrs: list[str]) -> None:
        gobgps[A].add_path(PREFIX, *a_attrs)
        gobgps[B].add_path(PREFIX, *b_attrs)

    def expect(peer: str, reason: str, check) -> None:
        def probe():
            rows = [r for r in ours.routes() if r["prefix"] == PREFIX]
            if len(rows) != 2 or not all(check(r) for r in rows):
                return None
            best = [r for r in rows if r["best"]]
            return (
                best if best and best[0]["peer"] == peer and best[0]["reason"] == reason else None
            )

        wait_for(probe, timeout=30, what=f"best path from {peer} by {reason}",
                 describe=lambda: str([r for r in ours.routes() if r["prefix"] == PREFIX]))  # fmt: skip

    announce(["local-pref", "200"], ["local-pref", "100"])
    expect(A, "local-pref", lambda r: r.get("local_pref") in (100, 200))
    announce(["aspath", "65001 65002"], ["aspath", "65001"])
    expect(B, "as-path", lambda r: r["as_path"] in ([65001, 65002], [65001]))
    announce(["aspath", "65001", "med", "20"], ["aspath", "65001", "med", "10"])
    expect(B, "med", lambda r: r.get("med") in (10, 20))
    announce(["aspath", "65001", "med", "5"], ["aspath", "65001", "med", "5"])
    expect(A, "router-id", lambda r: r.get("med") == 5)
    rows = [r for r in ours.routes() if r["prefix"] == PREFIX]
    # Equal up to the tie-breaks: both form the multipath set, the loser is listed second.
    assert [r["multipath"] for r in rows] == [True, True], rows
    assert [r["peer"] for r in rows] == [A, B]
    # ADD-PATH: the client holds both paths, each with its original next hop.
    client.wait_routes([(PREFIX, A), (PREFIX, B)])
    assert {nh for p, nh in client.routes("ipv4") if p == PREFIX} == {A, B}
    # Without ADD-PATH a client would get the best only; the reflector sent two paths here.
    assert ours.peer_status(C)["prefixes_advertised"] == 2
    # The table view says why.
    text = ours.cli("routes", "--detail").stdout
    assert "router-id" in text and "REASON" in text
