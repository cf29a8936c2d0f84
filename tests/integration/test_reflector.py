"""Our bgpd as an RFC 4456 route reflector for real BIRD 2, GoBGP and FRR clients on one segment:
client-to-client reflection with ORIGINATOR_ID/CLUSTER_LIST as each client sees them, and two
reflectors of ours sharing a cluster-id, one of which is stopped without any client losing a
route (the Calico #2735 trap)."""

from __future__ import annotations

from tests.lab.netns import Lab
from tests.lab.ours import Neighbor as OurNeighbor
from tests.lab.ours import RoutemeshSpeaker
from tests.lab.peers import BirdPeer, FrrPeer, GobgpPeer
from tests.lab.peers import Neighbor as PeerNeighbor
from tests.lab.require import require_root
from tests.lab.waiting import wait_for

ASN = 64512
CLUSTER = "244.0.0.1"
RR1, RR2 = "198.18.50.1", "198.18.50.5"
CLIENTS = {"bird": "198.18.50.2", "gobgp": "198.18.50.3", "frr": "198.18.50.4"}
KINDS = {"bird": BirdPeer, "gobgp": GobgpPeer, "frr": FrrPeer}
PREFIX = {"bird": "10.244.2.0/26", "gobgp": "10.244.3.0/26", "frr": "10.244.4.0/26"}


def build(lab: Lab, reflectors: list[str]) -> tuple[list[RoutemeshSpeaker], dict]:
    """One bridge; our reflectors and three clients of different kinds, all in AS 64512."""
    require_root()
    for cls in KINDS.values():
        cls.require()
    rr_ns = [lab.netns() for _ in reflectors]
    client_ns = {k: lab.netns() for k in CLIENTS}
    members = [*rr_ns, *client_ns.values()]
    addrs = [f"{a}/24" for a in reflectors] + [f"{a}/24" for a in CLIENTS.values()]
    lab.bridge(members, addrs)
    clients = {}
    for kind, addr in CLIENTS.items():
        peer = KINDS[kind](
            client_ns[kind],
            asn=ASN,
            router_id=addr,
            local_addresses=[addr],
            neighbors=[PeerNeighbor(rr, ASN, hold_time=9, families=("ipv4",)) for rr in reflectors],
        )
        peer.announce([PREFIX[kind]])
        peer.start()
        clients[kind] = peer
    rrs = []
    for i, addr in enumerate(reflectors):
        others = [OurNeighbor(o, ASN, hold_time=9) for o in reflectors if o != addr]
        rr = RoutemeshSpeaker(
            lab,
            rr_ns[i],
            asn=ASN,
            router_id=addr,
            neighbors=[
                *(
                    OurNeighbor(c, ASN, hold_time=9, extra={"route-reflector-client": True})
                    for c in CLIENTS.values()
                ),
                *others,
            ],
            listen=["0.0.0.0"],
            extra_global={"cluster-id": CLUSTER},
        ).start()
        rrs.append(rr)
    return rrs, clients


def expected_view(kind: str) -> tuple[str, str, tuple[str, ...]]:
    """How a reflected route from `kind` must look: its next hop and originator, our cluster."""
    return (CLIENTS[kind], CLIENTS[kind], (CLUSTER,))


def wait_reflected(clients: dict, n_paths: int = 1, timeout: float = 60) -> None:
    for kind, peer in clients.items():
        for other in CLIENTS:
            if other == kind:
                continue
            want = expected_view(other)
            wait_for(
                lambda p=peer, o=other, w=want: (
                    p.rr_view(PREFIX[o]) == {w} and len(_paths(p, PREFIX[o])) >= n_paths
                ),
                timeout=timeout,
                what=f"{kind} to see {other}'s route reflected with originator and cluster",
                describe=lambda p=peer, o=other: f"{p.rr_view(PREFIX[o])}\n{p.log_tail()}",
            )


def _paths(peer, prefix: str) -> set:
    return {r for r in peer.routes("ipv4") if r[0] == prefix}


def test_reflector_with_bird_gobgp_and_frr_clients(lab: Lab) -> None:
    (rr,), clients = build(lab, [RR1])
    for addr in CLIENTS.values():
        rr.wait_established(addr, timeout=60)
    wait_reflected(clients)
    # The reflector itself holds every client route with the client as next hop, and says why.
    rows = {r["prefix"]: r for r in rr.routes() if r["best"]}
    for kind, addr in CLIENTS.items():
        row = rows[PREFIX[kind]]
        assert row["peer"] == addr and row["next_hop"] == addr and row["reason"] == "only-path"
    # Reflected to every other client: each client got exactly the two others' prefixes.
    for row in rr.status():
        assert row["prefixes_accepted"] == 1 and row["prefixes_advertised"] == 2, row
        assert row["route_reflector_client"] is True
    # A client withdraws: every other client loses the route.
    clients["gobgp"].withdraw([PREFIX["gobgp"]])
    clients["bird"].wait_no_routes([PREFIX["gobgp"]])
    clients["frr"].wait_no_routes([PREFIX["gobgp"]])


def test_redundant_reflectors_in_one_cluster_survive_one_stopping(lab: Lab) -> None:
    (rr1, rr2), clients = build(lab, [RR1, RR2])
    for rr in (rr1, rr2):
        for addr in CLIENTS.values():
            rr.wait_established(addr, timeout=60)
    rr1.wait_established(RR2)
    wait_reflected(clients, n_paths=1)
    # Each reflector refuses what the other reflects (our cluster-id is already on the list)
    # yet has every route straight from the clients.
    for rr, other in ((rr1, RR2), (rr2, RR1)):
        st = rr.peer_status(other)
        assert st["prefixes_accepted"] == 0 and st["prefixes_received"] == 3, st
        assert {r["prefix"] for r in rr.routes() if r["best"]} == set(PREFIX.values())
    rr1.stop()
    for kind, peer in clients.items():
        wait_for(
            lambda p=peer: not p.is_established(RR1),
            timeout=30,
            what=f"{kind} to notice the first reflector is gone",
        )
    wait_reflected(clients)
    for kind, peer in clients.items():
        want = {(PREFIX[o], CLIENTS[o]) for o in CLIENTS if o != kind}
        assert want <= peer.routes("ipv4"), (kind, peer.routes("ipv4"))


def test_reflectors_in_different_clusters_meshed_together(lab: Lab) -> None:
    """RR1 (cluster A, BIRD client) and RR2 (cluster B, GoBGP client) peer as non-clients: each
    client gets the other's route with both cluster-ids on the list, nearest first."""
    require_root()
    BirdPeer.require()
    GobgpPeer.require()
    rr1_ns, rr2_ns, bird_ns, gobgp_ns = (lab.netns() for _ in range(4))
    bird_addr, gobgp_addr = CLIENTS["bird"], CLIENTS["gobgp"]
    lab.bridge(
        [rr1_ns, rr2_ns, bird_ns, gobgp_ns],
        [f"{a}/24" for a in (RR1, RR2, bird_addr, gobgp_addr)],
    )
    cluster_a, cluster_b = "244.0.0.1", "244.0.0.2"
    bird = BirdPeer(bird_ns, asn=ASN, router_id=bird_addr, local_addresses=[bird_addr],
                    neighbors=[PeerNeighbor(RR1, ASN, hold_time=9, families=("ipv4",))])  # fmt: skip
    gobgp = GobgpPeer(gobgp_ns, asn=ASN, router_id=gobgp_addr, local_addresses=[gobgp_addr],
                      neighbors=[PeerNeighbor(RR2, ASN, hold_time=9, families=("ipv4",))])  # fmt: skip
    bird.announce([PREFIX["bird"]])
    gobgp.announce([PREFIX["gobgp"]])
    bird.start()
    gobgp.start()
    client = {"route-reflector-client": True}
    for ns, me, other, cl, mine in (
        (rr1_ns, RR1, RR2, cluster_a, bird_addr),
        (rr2_ns, RR2, RR1, cluster_b, gobgp_addr),
    ):
        RoutemeshSpeaker(
            lab,
            ns,
            asn=ASN,
            router_id=me,
            neighbors=[
                OurNeighbor(mine, ASN, hold_time=9, extra=client),
                OurNeighbor(other, ASN, hold_time=9),
            ],
            listen=["0.0.0.0"],
            extra_global={"cluster-id": cl},
        ).start()
    for peer, prefix, origin, clusters in (
        (gobgp, PREFIX["bird"], bird_addr, (cluster_b, cluster_a)),
        (bird, PREFIX["gobgp"], gobgp_addr, (cluster_a, cluster_b)),
    ):
        want = {(origin, origin, clusters)}
        wait_for(
            lambda p=peer, x=prefix, w=want: p.rr_view(x) == w,
            timeout=60,
            what=f"{peer} to get {prefix} across both clusters",
            describe=lambda p=peer, x=prefix: f"{p.rr_view(x)}\n{p.log_tail()}",
        )


def test_ipv6_reflection_over_ipv6_sessions(lab: Lab) -> None:
    """The same three client kinds over IPv6 sessions, reflecting IPv6 routes: next hops kept
    (global, plus link-local where FRR sends one), ORIGINATOR_ID the client's router-id."""
    require_root()
    for cls in KINDS.values():
        cls.require()
    rr_addr = "fd00:198:18:51::1"
    v6 = {"bird": "fd00:198:18:51::2", "gobgp": "fd00:198:18:51::3", "frr": "fd00:198:18:51::4"}
    rid = {"bird": "198.18.51.2", "gobgp": "198.18.51.3", "frr": "198.18.51.4"}
    prefix = {k: f"fd00:10:244:{n}::/64" for n, k in enumerate(v6, start=20)}
    rr_ns = lab.netns()
    client_ns = {k: lab.netns() for k in v6}
    lab.bridge([rr_ns, *client_ns.values()], [f"{rr_addr}/64", *(f"{a}/64" for a in v6.values())])
    clients = {}
    for kind, addr in v6.items():
        peer = KINDS[kind](
            client_ns[kind],
            asn=ASN,
            router_id=rid[kind],
            local_addresses=[addr],
            neighbors=[PeerNeighbor(rr_addr, ASN, hold_time=9, families=("ipv6",))],
        )
        peer.announce([prefix[kind]])
        peer.start()
        clients[kind] = peer
    rr = RoutemeshSpeaker(
        lab,
        rr_ns,
        asn=ASN,
        router_id="198.18.51.1",
        neighbors=[
            OurNeighbor(
                a,
                ASN,
                families=("ipv6-unicast",),
                hold_time=9,
                extra={"route-reflector-client": True},
            )
            for a in v6.values()
        ],
        listen=["::"],
        extra_global={"cluster-id": CLUSTER},
    ).start()
    for addr in v6.values():
        rr.wait_established(addr, timeout=60)
    for kind, peer in clients.items():
        for other in v6:
            if other == kind:
                continue
            want = {(v6[other], rid[other], (CLUSTER,))}
            wait_for(
                lambda p=peer, x=prefix[other], w=want: p.rr_view(x) == w,
                timeout=60,
                what=f"{kind} to see {other}'s IPv6 route reflected",
                describe=lambda p=peer, x=prefix[other]: f"{p.rr_view(x)}\n{p.log_tail()}",
            )
