"""Graceful restart with a real BIRD 2, both ways: BIRD is killed -9 and comes back while we keep
its routes stale and then refresh them; and we are killed -9 and come back while BIRD, as
helper, keeps our routes until our End-of-RIB. The helper side is also checked against GoBGP."""

from __future__ import annotations

from tests.lab.netns import Lab
from tests.lab.ours import Neighbor as OurNeighbor
from tests.lab.ours import RoutemeshSpeaker
from tests.lab.peers import BirdPeer, GobgpPeer
from tests.lab.peers import Neighbor as PeerNeighbor
from tests.lab.require import require_root
from tests.lab.waiting import wait_for

OUR_ASN, BIRD_ASN = 64512, 64513
OURS, BIRD = "198.18.80.1", "198.18.80.2"
KEEP, GONE = "10.244.11.0/24", "10.244.12.0/24"


def setup(lab: Lab, originate: list[str]) -> tuple[RoutemeshSpeaker, BirdPeer]:
    require_root()
    BirdPeer.require()
    ours_ns, bird_ns = lab.netns(), lab.netns()
    lab.veth(ours_ns, bird_ns, f"{OURS}/24", f"{BIRD}/24")
    bird = BirdPeer(bird_ns, asn=BIRD_ASN, router_id=BIRD, local_addresses=[BIRD],
                    neighbors=[PeerNeighbor(OURS, OUR_ASN, hold_time=9, families=("ipv4",),
                                            graceful_restart=True)])  # fmt: skip
    ours = RoutemeshSpeaker(
        lab,
        ours_ns,
        asn=OUR_ASN,
        router_id=OURS,
        neighbors=[OurNeighbor(BIRD, BIRD_ASN, hold_time=9, extra={"graceful-restart": True})],
        originate=originate,
        listen=["0.0.0.0"],
        extra_global={"graceful-restart-time": 60, "select-defer-time": 30},
    )
    return ours, bird


def rows(ours: RoutemeshSpeaker) -> dict[str, dict]:
    return {r["prefix"]: r for r in ours.routes() if r["peer"] == BIRD}


def test_helper_keeps_a_killed_birds_routes_stale_then_refreshes(lab: Lab) -> None:
    ours, bird = setup(lab, ["10.244.1.0/24"])
    bird.announce([KEEP, GONE])
    bird.start()
    ours.start()
    ours.wait_established(BIRD)
    wait_for(lambda: set(rows(ours)) == {KEEP, GONE}, timeout=30, what="BIRD's routes")
    assert not any(r["stale"] for r in rows(ours).values())

    bird.kill9()
    wait_for(lambda: ours.peer_status(BIRD)["state"] != "Established", timeout=30,
             what="the session to drop")  # fmt: skip
    # Helper: the routes stay, marked stale, for BIRD's restart time.
    now = rows(ours)
    assert set(now) == {KEEP, GONE} and all(r["stale"] for r in now.values()), now
    assert ours.peer_status(BIRD)["stale"] == ["ipv4-unicast"]
    assert "graceful restart, keeping ipv4-unicast routes stale" in ours.log_text()

    # BIRD comes back (recovery mode) without GONE: KEEP is refreshed, GONE swept at its EoR.
    bird.withdraw([GONE])
    bird.start(recovery=True)
    ours.wait_established(BIRD, timeout=60)
    wait_for(
        lambda: set(rows(ours)) == {KEEP} and not rows(ours)[KEEP]["stale"],
        timeout=60,
        what="KEEP fresh and GONE removed after BIRD's End-of-RIB",
        describe=lambda: f"{rows(ours)}\n{ours.log_text()[-2000:]}",
    )
    assert ours.peer_status(BIRD)["stale"] == []
    assert ours.peer_status(BIRD)["eor_received"] == ["ipv4-unicast"]
    # BIRD in recovery keeps forwarding state, so the sweep waited for its End-of-RIB.
    assert "End-of-RIB ipv4-unicast, 1 stale routes removed" in ours.log_text()


def test_bird_helper_keeps_our_routes_until_our_end_of_rib(lab: Lab) -> None:
    ours, bird = setup(lab, [KEEP, GONE])
    bird.start()
    ours.start()
    bird.wait_established(OURS)
    bird.wait_routes([(KEEP, OURS), (GONE, OURS)])

    ours.kill9()
    wait_for(lambda: not bird.is_established(OURS), timeout=30, what="BIRD to see us gone")
    # BIRD as helper keeps what we announced while we are away.
    assert {(KEEP, OURS), (GONE, OURS)} <= bird.routes("ipv4")

    # We come back announcing only KEEP: after our End-of-RIB, BIRD drops the stale GONE.
    ours.originate = [KEEP]
    ours.start()
    bird.wait_established(OURS, timeout=60)
    bird.wait_no_routes([GONE], timeout=60)
    assert (KEEP, OURS) in bird.routes("ipv4")
    log = ours.log_text()
    assert "initial convergence: End-of-RIB from every neighbor" in log, log[-2000:]


def test_helper_keeps_a_killed_gobgps_routes_then_relearns(lab: Lab) -> None:
    """The helper side against a second implementation: GoBGP with GR and the N bit."""
    require_root()
    GobgpPeer.require()
    ours_ns, peer_ns = lab.netns(), lab.netns()
    lab.veth(ours_ns, peer_ns, f"{OURS}/24", f"{BIRD}/24")
    gobgp = GobgpPeer(peer_ns, asn=BIRD_ASN, router_id=BIRD, local_addresses=[BIRD],
                      neighbors=[PeerNeighbor(OURS, OUR_ASN, hold_time=9, families=("ipv4",),
                                              graceful_restart=True)])  # fmt: skip
    ours = RoutemeshSpeaker(
        lab,
        ours_ns,
        asn=OUR_ASN,
        router_id=OURS,
        neighbors=[OurNeighbor(BIRD, BIRD_ASN, hold_time=9, extra={"graceful-restart": True})],
        listen=["0.0.0.0"],
        extra_global={"select-defer-time": 30},
    )
    gobgp.start()
    gobgp.announce([KEEP, GONE])
    ours.start()
    ours.wait_established(BIRD)
    wait_for(lambda: set(rows(ours)) == {KEEP, GONE}, timeout=30, what="GoBGP's routes")
    gobgp.kill9()
    wait_for(lambda: ours.peer_status(BIRD)["state"] != "Established", timeout=30,
             what="the session to drop")  # fmt: skip
    now = rows(ours)
    assert set(now) == {KEEP, GONE} and all(r["stale"] for r in now.values()), now
    gobgp.withdraw([GONE])
    gobgp.start()
    ours.wait_established(BIRD, timeout=60)
    wait_for(
        lambda: set(rows(ours)) == {KEEP} and not rows(ours)[KEEP]["stale"],
        timeout=60,
        what="KEEP fresh and GONE gone once GoBGP is back",
        describe=lambda: f"{rows(ours)}\n{ours.log_text()[-2000:]}",
    )
