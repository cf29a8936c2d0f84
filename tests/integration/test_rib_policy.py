"""Per-peer policy against real peers: max-prefix teardown with restart-after, an import filter
reject, route refresh in after a filter change (SIGHUP-free `bgp reload`), and NO_EXPORT."""

from __future__ import annotations

import re

from tests.lab.netns import Lab
from tests.lab.ours import Neighbor as OurNeighbor
from tests.lab.ours import RoutemeshSpeaker
from tests.lab.peers import BirdPeer, GobgpPeer
from tests.lab.peers import Neighbor as PeerNeighbor
from tests.lab.require import require_root
from tests.lab.waiting import wait_for

OUR_ASN, BIRD_ASN, GOBGP_ASN = 64512, 64513, 64514
OURS, BIRD, GOBGP = "198.18.70.1", "198.18.70.2", "198.18.70.3"


def setup(lab: Lab, *, bird_extra=None, gobgp_extra=None, toml: str = ""):
    require_root()
    BirdPeer.require()
    GobgpPeer.require()
    ours_ns, bird_ns, gobgp_ns = lab.netns(), lab.netns(), lab.netns()
    lab.bridge([ours_ns, bird_ns, gobgp_ns], [f"{OURS}/24", f"{BIRD}/24", f"{GOBGP}/24"])
    bird = BirdPeer(bird_ns, asn=BIRD_ASN, router_id=BIRD, local_addresses=[BIRD],
                    neighbors=[PeerNeighbor(OURS, OUR_ASN, hold_time=9, families=("ipv4",))])  # fmt: skip
    gobgp = GobgpPeer(gobgp_ns, asn=GOBGP_ASN, router_id=GOBGP, local_addresses=[GOBGP],
                      neighbors=[PeerNeighbor(OURS, OUR_ASN, hold_time=9, families=("ipv4",))])  # fmt: skip
    ours = RoutemeshSpeaker(
        lab,
        ours_ns,
        asn=OUR_ASN,
        router_id=OURS,
        neighbors=[
            OurNeighbor(BIRD, BIRD_ASN, hold_time=9, extra=bird_extra or {}),
            OurNeighbor(GOBGP, GOBGP_ASN, hold_time=9, extra=gobgp_extra or {}),
        ],
        listen=["0.0.0.0"],
        extra_toml=toml,
    )
    return ours, bird, gobgp


def learned(ours: RoutemeshSpeaker, peer: str) -> set[str]:
    return {r["prefix"] for r in ours.routes() if r["peer"] == peer}


def test_max_prefix_teardown_then_restart_after(lab: Lab) -> None:
    extra = {"max-prefix": 2, "max-prefix-restart": 2}
    ours, bird, gobgp = setup(lab, bird_extra=extra)
    bird.announce(["10.244.1.0/24", "10.244.2.0/24"])
    bird.start()
    gobgp.start()
    ours.start()
    ours.wait_established(BIRD)
    wait_for(lambda: len(learned(ours, BIRD)) == 2, timeout=30, what="2 prefixes, at the limit")
    bird.announce(["10.244.3.0/24"])
    wait_for(
        lambda: "above max-prefix 2: session torn down" in ours.log_text(),
        timeout=30,
        what="max-prefix teardown",
        describe=lambda: ours.log_text()[-2000:],
    )
    # BIRD was told why: Cease / Maximum Number of Prefixes Reached.
    wait_for(
        lambda: re.search(r"Received: Maximum number of prefixes reached",
                          bird.birdc("show", "protocols", "all", BirdPeer.proto_name(OURS))),
        timeout=30,
        what="BIRD to report our Cease",
    )  # fmt: skip
    # restart-after brings the session back; still over the limit, so it goes down again.
    wait_for(
        lambda: ours.peer_status(BIRD)["established_count"] >= 2,
        timeout=60,
        what="the session restarted after max-prefix-restart",
    )
    # The other peer's session was never disturbed.
    assert ours.peer_status(GOBGP)["established_count"] == 1
    bird.withdraw(["10.244.3.0/24"])
    wait_for(
        lambda: (
            ours.peer_status(BIRD)["state"] == "Established"
            and learned(ours, BIRD) == {"10.244.1.0/24", "10.244.2.0/24"}
        ),
        timeout=60,
        what="session stays up once back under the limit",
    )


FILTER = """
[[filter]]
name = "in"
[[filter.rule]]
cidr = "{cidr}"
match-operator = "Equal"
action = "Reject"
"""


def test_import_filter_reject_and_refresh_in_after_filter_change(lab: Lab) -> None:
    ours, bird, gobgp = setup(
        lab, gobgp_extra={"import-filter": "in"}, toml=FILTER.format(cidr="10.244.6.0/24")
    )
    bird.start()
    gobgp.start()
    gobgp.announce(["10.244.5.0/24", "10.244.6.0/24"])
    ours.start()
    ours.wait_established(GOBGP)
    wait_for(lambda: ours.peer_status(GOBGP)["prefixes_received"] == 2, timeout=30,
             what="both prefixes received")  # fmt: skip
    assert learned(ours, GOBGP) == {"10.244.5.0/24"}
    assert ours.peer_status(GOBGP)["prefixes_accepted"] == 1
    # The rejected prefix is not passed on either.
    bird.wait_routes([("10.244.5.0/24", OURS)])
    assert "10.244.6.0/24" not in {p for p, _ in bird.routes("ipv4")}

    # Change the filter: nothing moves until the peer's routes are asked for again.
    assert ours.reload(FILTER.format(cidr="10.244.5.0/24")) == {
        "changed": [GOBGP],
        "need_restart": [],
    }
    assert learned(ours, GOBGP) == {"10.244.5.0/24"}
    sent_before = ours.peer_status(GOBGP)["messages_out"]["route_refresh"]
    assert ours.refresh(GOBGP, "in")["in"] == ["ipv4-unicast"]
    wait_for(lambda: learned(ours, GOBGP) == {"10.244.6.0/24"}, timeout=30,
             what="route refresh in to apply the new filter",
             describe=lambda: str(ours.routes()))  # fmt: skip
    assert ours.peer_status(GOBGP)["messages_out"]["route_refresh"] == sent_before + 1
    bird.wait_routes([("10.244.6.0/24", OURS)])
    bird.wait_no_routes(["10.244.5.0/24"])


NO_EXPORT = "65535:65281"


def test_no_export_community_is_not_sent_to_an_ebgp_peer(lab: Lab) -> None:
    ours, bird, gobgp = setup(lab)
    bird.start()
    gobgp.start()
    ours.start()
    ours.wait_established(GOBGP)
    gobgp.add_path("10.244.7.0/24", "community", NO_EXPORT)
    gobgp.add_path("10.244.8.0/24")
    wait_for(lambda: learned(ours, GOBGP) == {"10.244.7.0/24", "10.244.8.0/24"}, timeout=30,
             what="both prefixes at our speaker")  # fmt: skip
    row = next(r for r in ours.routes() if r["prefix"] == "10.244.7.0/24")
    assert row["communities"] == [NO_EXPORT]
    bird.wait_routes([("10.244.8.0/24", OURS)])
    assert "10.244.7.0/24" not in {p for p, _ in bird.routes("ipv4")}
    assert ours.peer_status(BIRD)["prefixes_advertised"] == 1


def test_enhanced_route_refresh_both_ways_with_bird(lab: Lab) -> None:
    ours, bird, gobgp = setup(lab)
    bird.announce(["10.244.21.0/24"])
    ours.originate = ["10.244.22.0/24"]
    bird.start()
    gobgp.start()
    ours.start()
    ours.wait_established(BIRD)
    bird.wait_routes([("10.244.22.0/24", OURS)])
    wait_for(lambda: learned(ours, BIRD) == {"10.244.21.0/24"}, timeout=30, what="BIRD's route")

    def counts() -> tuple[int, int]:
        st = ours.peer_status(BIRD)
        return st["messages_in"]["route_refresh"], st["messages_out"]["route_refresh"]

    rin, rout = counts()
    # BIRD asks us (reload in): we answer BoRR, our routes, EoRR (RFC 7313).
    bird.birdc("reload", "in", BirdPeer.proto_name(OURS))
    wait_for(lambda: counts() == (rin + 1, rout + 2), timeout=30,
             what="BIRD's refresh request answered with BoRR and EoRR",
             describe=lambda: str(counts()))  # fmt: skip
    assert "route refresh requested for ipv4-unicast" in ours.log_text()
    bird.wait_routes([("10.244.22.0/24", OURS)])
    # We ask BIRD: it answers BoRR, its routes, EoRR; its route is fresh again, never lost.
    assert ours.refresh(BIRD, "in")["in"] == ["ipv4-unicast"]
    wait_for(lambda: counts() == (rin + 3, rout + 3), timeout=30,
             what="BIRD's BoRR and EoRR", describe=lambda: str(counts()))  # fmt: skip
    row = next(r for r in ours.routes() if r["peer"] == BIRD)
    assert row["prefix"] == "10.244.21.0/24" and not row["stale"]
