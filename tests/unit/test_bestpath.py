"""The decision process: one test per RFC 4271 §9.1.2.2 step and RFC 4456 tie-break, each
checking the winner and the reason, plus multipath sets and next-hop reachability."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bgpd.speaker.attributes import AS_CONFED_SEQUENCE, AS_SEQUENCE, AS_SET, PathAttributes
from bgpd.speaker.bestpath import STEPS, DecisionConfig, decide, rank
from bgpd.speaker.rib import Path, Source

RID = 0x0A000001  # our router-id


def src(n: int, asn: int = 64512, *, ebgp: bool = False, rid: int | None = None) -> Source:
    addr = 0xC6120000 + n
    return Source(f"198.18.0.{n}", addr, rid if rid is not None else addr, asn, ebgp)


LOCAL = Source("local", 0, RID, 64512, False, local=True)


def path(s: Source, **kw) -> Path:
    base = dict(origin=0, as_path=((AS_SEQUENCE, (65001,)),), local_pref=100)
    base.update(kw)
    return Path(s, PathAttributes(**base), (s.address + 100,))


CFG = DecisionConfig(router_id=RID)


def winner(a: Path, b: Path, cfg: DecisionConfig = CFG) -> tuple[Path, str]:
    best, reason, _ = decide([a, b], cfg)
    # The order the paths arrive in must never change the outcome.
    best2, reason2, _ = decide([b, a], cfg)
    assert (best, reason) == (best2, reason2)
    assert best is not None
    return best, reason


def test_single_path_wins_as_only_path() -> None:
    p = path(src(1))
    assert decide([p], CFG) == (p, "only-path", (p,))


def test_unreachable_next_hop_is_not_a_candidate() -> None:
    a, b = path(src(1), local_pref=200), path(src(2))
    cfg = DecisionConfig(router_id=RID, nexthop_reachable=lambda fam, nh: nh != a.nh)
    assert winner(a, b, cfg) == (b, "next-hop-reachable")
    assert decide([a], cfg) == (None, "next-hop-reachable", ())


def test_higher_local_pref_wins() -> None:
    a, b = path(src(1), local_pref=200), path(src(2), local_pref=100, as_path=())
    assert winner(a, b) == (a, "local-pref")


def test_missing_local_pref_counts_as_100() -> None:
    a, b = path(src(1), local_pref=None), path(src(2), local_pref=99)
    assert winner(a, b) == (a, "local-pref")


def test_local_origin_beats_learned_at_equal_pref() -> None:
    a, b = path(LOCAL, as_path=((AS_SEQUENCE, (1, 2, 3)),)), path(src(2), as_path=())
    assert winner(a, b) == (a, "local-origin")


def test_shorter_as_path_wins() -> None:
    a = path(src(1), as_path=((AS_SEQUENCE, (65001,)),))
    b = path(src(2), as_path=((AS_SEQUENCE, (65002, 65003)),))
    assert winner(a, b) == (a, "as-path")


def test_as_set_counts_one_and_confed_counts_zero() -> None:
    a = path(src(1), as_path=((AS_SEQUENCE, (65001,)), (AS_SET, (1, 2, 3, 4))))
    b = path(src(2), as_path=((AS_CONFED_SEQUENCE, (9, 9, 9)), (AS_SEQUENCE, (65002, 65003, 7))))
    assert winner(a, b) == (a, "as-path")


def test_lower_origin_wins() -> None:
    a, b = path(src(1), origin=0), path(src(2), origin=2)
    assert winner(a, b) == (a, "origin")


def test_lower_med_wins_within_one_neighbour_as() -> None:
    a, b = path(src(1), med=10), path(src(2), med=5)
    assert winner(a, b) == (b, "med")


def test_med_not_compared_across_neighbour_as_unless_always() -> None:
    a = path(src(1), med=10, as_path=((AS_SEQUENCE, (65001,)),))
    b = path(src(2), med=5, as_path=((AS_SEQUENCE, (65009,)),))
    best, reason = winner(a, b)
    assert (best, reason) == (a, "router-id")  # falls through to the lower router-id
    cfg = DecisionConfig(router_id=RID, always_compare_med=True)
    assert winner(a, b, cfg) == (b, "med")


def test_missing_med_is_zero() -> None:
    a, b = path(src(1)), path(src(2), med=1)
    assert winner(a, b) == (a, "med")


def test_ebgp_beats_ibgp() -> None:
    a, b = path(src(1)), path(src(2, 65001, ebgp=True), local_pref=None)
    assert winner(a, b) == (b, "ebgp-over-ibgp")


def test_lower_router_id_wins() -> None:
    a, b = path(src(1, rid=9)), path(src(2, rid=3))
    assert winner(a, b) == (b, "router-id")


def test_originator_id_stands_in_for_router_id() -> None:
    a = path(src(1, rid=1), originator_id=50, cluster_list=(7,))
    b = path(src(2, rid=40))
    assert winner(a, b) == (b, "router-id")


def test_shorter_cluster_list_wins() -> None:
    a = path(src(1), originator_id=5, cluster_list=(7, 8))
    b = path(src(2), originator_id=5, cluster_list=(7,))
    assert winner(a, b) == (b, "cluster-list")


def test_lower_peer_address_is_last_tie_break() -> None:
    a = path(src(3, rid=5), originator_id=5)
    b = path(src(2, rid=5), originator_id=5)
    assert winner(a, b) == (b, "peer-address")


def test_every_step_has_a_test_above() -> None:
    names = {name for name, _ in STEPS}
    tested = {
        "next-hop-reachable", "local-pref", "local-origin", "as-path", "origin", "med",
        "ebgp-over-ibgp", "router-id", "cluster-list", "peer-address",
    }  # fmt: skip
    assert names == tested


def test_multipath_set_holds_equal_ibgp_paths_up_to_the_maximum() -> None:
    ps = [path(src(n)) for n in (4, 2, 3)]
    worse = path(src(1), local_pref=50)
    cfg = DecisionConfig(router_id=RID, multipath=2)
    best, reason, multi = decide([*ps, worse], cfg)
    assert best is ps[1] and reason == "router-id"
    assert multi == (ps[1], ps[2])
    best, _, multi = decide([*ps, worse], DecisionConfig(router_id=RID, multipath=8))
    assert multi == (ps[1], ps[2], ps[0])
    assert decide(ps, CFG)[2] == (ps[1],)  # multipath off: best only


def test_multipath_excludes_a_path_that_loses_before_the_tie_breaks() -> None:
    a, b = path(src(1)), path(src(2), as_path=((AS_SEQUENCE, (1, 2)),))
    assert decide([a, b], DecisionConfig(router_id=RID, multipath=4))[2] == (a,)


@given(
    st.lists(
        st.tuples(
            st.integers(50, 200),
            st.integers(0, 3),
            st.integers(0, 2),
            st.integers(0, 20),
            st.booleans(),
            st.integers(1, 9),
        ),
        min_size=1,
        max_size=6,
    )
)
def test_best_is_first_of_rank_and_never_loses_to_another_path(rows) -> None:
    paths = []
    for i, (lp, plen, origin, med, ebgp, rid) in enumerate(rows):
        s = src(i + 1, 65001 if ebgp else 64512, ebgp=ebgp, rid=rid)
        paths.append(
            path(
                s, local_pref=lp, origin=origin, med=med, as_path=((AS_SEQUENCE, (65001,) * plen),)
            )
            if plen
            else path(s, local_pref=lp, origin=origin, med=med, as_path=())
        )
    best, _, _ = decide(paths, CFG)
    assert best is rank(paths, CFG)[0]
    for other in paths:
        if other is not best:
            assert decide([best, other], CFG)[0] is best


@pytest.mark.parametrize("lp", [None, 100])
def test_reason_is_only_path_when_alone(lp) -> None:
    p = path(src(1), local_pref=lp)
    assert decide([p], CFG)[1] == "only-path"
