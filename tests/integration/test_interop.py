"""Our bgpd against real BIRD 2, GoBGP, FRR and ExaBGP in namespaces: sessions and routes."""

from __future__ import annotations

import pytest

from tests.lab.ours import Neighbor as OurNeighbor
from tests.lab.ours import RoutemeshSpeaker
from tests.lab.peers import BirdPeer, ExabgpPeer, FrrPeer, GobgpPeer
from tests.lab.peers import Neighbor as PeerNeighbor
from tests.lab.require import require_root
from tests.lab.waiting import wait_for

PEERS = {"bird": BirdPeer, "gobgp": GobgpPeer, "frr": FrrPeer, "exabgp": ExabgpPeer}
OUR_V4, PEER_V4 = "198.18.10.1", "198.18.10.2"
OUR_V6, PEER_V6 = "fd00:198:18:10::1", "fd00:198:18:10::2"
OUR_ROUTES = {"10.244.1.0/26", "fd00:10:244:1::/64"}
PEER_ROUTES = {"10.244.2.0/26", "10.244.2.64/26", "fd00:10:244:2::/64"}
FAMILIES = ("ipv4-unicast", "ipv6-unicast")


class TwoOctetBird(BirdPeer):
    """BIRD with 4-octet AS support switched off: it sees AS_TRANS and AS4_PATH from us."""

    def _neighbor_block(self, nb):
        block = super()._neighbor_block(nb)
        return [*block[:-1], "  enable as4 off;", block[-1]]


class TwoOctetExabgp(ExabgpPeer):
    """ExaBGP with 4-octet AS disabled: a true 2-octet speaker that can peer with AS_TRANS."""

    def config_text(self):
        return (
            super()
            .config_text()
            .replace("  family {", "  capability { asn4 disable; }\n  family {")
        )

    def as_paths(self) -> dict[str, list[int]]:
        paths: dict[str, list[int]] = {}
        for msg in self._messages():
            update = msg.get("neighbor", {}).get("message", {}).get("update", {})
            segments = update.get("attribute", {}).get("as-path", {})
            # ExaBGP 5 prints {"0": {"element": "as-sequence", "value": [...]}, ...}.
            path = [asn for _, seg in sorted(segments.items()) for asn in seg["value"]]
            for entries in update.get("announce", {}).get("ipv4 unicast", {}).values():
                for entry in entries:
                    paths[entry["nlri"]] = path
        return paths


PEERS_EXTRA = {"bird-2octet": TwoOctetBird, "exabgp-2octet": TwoOctetExabgp}


def build(
    lab, kind: str, transport: int, *, our_asn=64512, peer_asn=64513, password=None, seen_as=None
):
    """Two namespaces on one veth; our speaker in one, the named peer in the other."""
    require_root()
    cls = PEERS.get(kind) or PEERS_EXTRA[kind]
    cls.require()
    ours_ns, peer_ns = lab.netns(), lab.netns()
    lab.veth(ours_ns, peer_ns, [f"{OUR_V4}/24", f"{OUR_V6}/64"], [f"{PEER_V4}/24", f"{PEER_V6}/64"])
    our_addr, peer_addr = (OUR_V4, PEER_V4) if transport == 4 else (OUR_V6, PEER_V6)
    peer = cls(
        peer_ns,
        asn=peer_asn,
        router_id="198.18.10.2",
        local_addresses=[PEER_V4, PEER_V6],
        neighbors=[PeerNeighbor(our_addr, seen_as or our_asn, password=password, hold_time=9)],
    )
    peer.start()
    ours = RoutemeshSpeaker(
        lab,
        ours_ns,
        asn=our_asn,
        router_id="198.18.10.1",
        neighbors=[
            OurNeighbor(peer_addr, peer_asn, families=FAMILIES, password=password, hold_time=9)
        ],
        originate=sorted(OUR_ROUTES),
    ).start()
    return ours, peer, our_addr, peer_addr


@pytest.mark.parametrize("transport", [4, 6])
@pytest.mark.parametrize("kind", sorted(PEERS))
def test_session_and_routes_both_ways(lab, kind, transport):
    ours, peer, our_addr, peer_addr = build(lab, kind, transport)
    peer.announce(sorted(PEER_ROUTES))
    ours.wait_established(peer_addr, timeout=45)
    peer.wait_established(our_addr, timeout=30)

    # Their routes in our table, with their address on the shared link as next hop.
    expected_ours = {(p, PEER_V4 if ":" not in p else PEER_V6) for p in PEER_ROUTES}
    wait_for(
        lambda: expected_ours <= ours.learned(),
        timeout=30,
        what=f"{kind} routes in routemesh",
        describe=lambda: f"have {ours.learned()}\n{ours.log_text()[-2000:]}",
    )
    # Our routes in theirs, next hop self.
    peer.wait_routes({("10.244.1.0/26", OUR_V4)}, timeout=30)
    peer.wait_routes({("fd00:10:244:1::/64", OUR_V6)}, timeout=30)

    row = ours.peer_status(peer_addr)
    assert row["state"] == "Established"
    # FRR re-advertises our own routes to us (eBGP); they are received but, looping, not
    # accepted. Everyone else applies split horizon on their side.
    assert row["prefixes_accepted"] == len(PEER_ROUTES)
    assert row["prefixes_received"] - row["prefixes_accepted"] in (0, len(OUR_ROUTES))
    assert row["prefixes_advertised"] == len(OUR_ROUTES)
    assert row["remote_asn"] == 64513
    assert set(row["families"]) == set(FAMILIES)

    # A withdrawal on their side disappears from ours.
    peer.withdraw(["10.244.2.64/26"])
    wait_for(
        lambda: all(p != "10.244.2.64/26" for p, _ in ours.learned()),
        timeout=30,
        what="withdrawal seen by routemesh",
    )


def test_two_octet_as_peer(lab):
    """BIRD with 4-octet AS switched off: the session runs with 2-octet AS_PATHs both ways.

    (BIRD cannot be configured with a neighbor AS above 65535 once as4 is off; AS_TRANS and
    AS4_PATH are shown live with a 2-octet ExaBGP below.)
    """
    ours, peer, our_addr, peer_addr = build(lab, "bird-2octet", 4, our_asn=64512, peer_asn=65010)
    peer.announce(["10.244.2.0/26"])
    peer.wait_established(our_addr, timeout=30)
    ours.wait_established(peer_addr, timeout=30)
    peer.wait_routes({("10.244.1.0/26", OUR_V4)}, timeout=30)
    out = peer.birdc("show", "route", "10.244.1.0/26", "all")
    assert "BGP.as_path: 64512" in out, out
    # BIRD prints "Session: external AS4" only when 4-octet AS was negotiated.
    (session_line,) = [
        ln for ln in peer.birdc("show", "protocols", "all").splitlines() if "Session:" in ln
    ]
    assert "external" in session_line and "AS4" not in session_line, session_line
    wait_for(
        lambda: [r for r in ours.routes() if r["prefix"] == "10.244.2.0/26"],
        timeout=30,
        what="BIRD route at routemesh",
    )
    (route,) = [r for r in ours.routes() if r["prefix"] == "10.244.2.0/26"]
    assert route["as_path"] == [65010]


def test_two_octet_peer_sees_as_trans_and_as4_path(lab):
    """Our 4-octet AS toward a 2-octet ExaBGP: OPEN and AS_PATH carry AS_TRANS, AS4_PATH the
    real number, and ExaBGP's RFC 6793 merge recovers it."""
    ours, peer, _our_addr, peer_addr = build(
        lab, "exabgp-2octet", 4, our_asn=4200000001, peer_asn=65010, seen_as=23456
    )
    peer.announce(["10.244.2.0/26"])
    ours.wait_established(peer_addr, timeout=30)
    peer.wait_routes({("10.244.1.0/26", OUR_V4)}, timeout=30)
    assert peer.as_paths()["10.244.1.0/26"] == [4200000001]
    wait_for(
        lambda: [r for r in ours.routes() if r["prefix"] == "10.244.2.0/26"],
        timeout=30,
        what="ExaBGP route at routemesh",
    )
    (route,) = [r for r in ours.routes() if r["prefix"] == "10.244.2.0/26"]
    assert route["as_path"] == [65010]


def test_md5_password_both_sides_and_wrong_password_fails(lab):
    ours, peer, our_addr, peer_addr = build(lab, "gobgp", 4, password="s3cret-md5")
    peer.announce(["10.244.2.0/26"])
    ours.wait_established(peer_addr, timeout=30)
    peer.wait_established(our_addr, timeout=30)
    # The password never shows in our status, routes or log.
    assert "s3cret-md5" not in ours.cli("status").stdout + ours.log_text()


def test_md5_wrong_password_never_establishes(lab):
    require_root()
    GobgpPeer.require()
    ours_ns, peer_ns = lab.netns(), lab.netns()
    lab.veth(ours_ns, peer_ns, [f"{OUR_V4}/24"], [f"{PEER_V4}/24"])
    peer = GobgpPeer(
        peer_ns,
        asn=64513,
        router_id=PEER_V4,
        local_addresses=[PEER_V4],
        neighbors=[PeerNeighbor(OUR_V4, 64512, password="right-one", families=("ipv4",))],
    )
    peer.start()
    ours = RoutemeshSpeaker(
        lab,
        ours_ns,
        asn=64512,
        router_id=OUR_V4,
        neighbors=[OurNeighbor(PEER_V4, 64513, password="wrong-one", hold_time=9)],
    ).start()
    import time

    time.sleep(6)  # several connect retries (1 s base) must all fail
    assert ours.peer_status(PEER_V4)["state"] != "Established"
    assert not peer.is_established(OUR_V4)
    assert ours.alive()
