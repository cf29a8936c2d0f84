"""Loc-RIB storage: a prefix with one path holds the Path itself, decided as it is stored, and
every outcome (best, reason, multipath, ADD-PATH ids, "changed" for the FIB) is what the full
decision over the candidates gives; checked step by step against a plain model."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from bgpd.speaker.attributes import AS_SEQUENCE, PathAttributes
from bgpd.speaker.bestpath import DecisionConfig, decide, make_decider
from bgpd.speaker.rib import Destination, LocRib, Path, Source
from bgpd.speaker.types import IPV4_UNICAST, IPV6_UNICAST

FAM = IPV4_UNICAST
SOURCES = [Source(f"198.18.0.{n}", 0xC6120000 + n, 0xC6120000 + n, 64512, False) for n in (1, 2, 3)]
ATTRS = [
    PathAttributes(origin=0, as_path=((AS_SEQUENCE, (65001,)),), local_pref=100),
    PathAttributes(origin=0, as_path=((AS_SEQUENCE, (65001,)),), local_pref=200),
    PathAttributes(origin=0, as_path=((AS_SEQUENCE, (65001, 65002)),), local_pref=100),
]
NEXT_HOPS = [0xC6120101, 0xC6120102]


def prefix(i: int) -> tuple[int, int]:
    return (0x0AF40000 | (i << 8), 24)


class Reach:
    """A next-hop table the test flips; counts how often it is asked."""

    def __init__(self) -> None:
        self.down: set[int] = set()
        self.calls = 0

    def __call__(self, fam: object, nh: int) -> bool:
        self.calls += 1
        return nh not in self.down


def new_rib(reach: Reach, multipath: int = 0) -> tuple[LocRib, DecisionConfig]:
    cfg = DecisionConfig(multipath=multipath, nexthop_reachable=reach)
    return LocRib(make_decider(cfg), reach), cfg


def mk(s: int, a: int, nh: int, path_id: int = 0) -> Path:
    return Path(SOURCES[s], ATTRS[a], (NEXT_HOPS[nh],), path_id)


def test_one_path_is_stored_bare_and_two_in_a_destination() -> None:
    rib, _ = new_rib(Reach())
    p, q = mk(0, 0, 0), mk(1, 1, 0)
    rib.update(FAM, prefix(1), p)
    assert rib.table(FAM)[prefix(1)] is p  # decided on the spot, before any slice
    assert (p.best, p.reason, p.multipath, p.paths) == (p, "only-path", (p,), (p,))
    rib.update(FAM, prefix(1), q)
    dest = rib.table(FAM)[prefix(1)]
    assert isinstance(dest, Destination) and dest.paths == [p, q]
    ((_, _, got, changed),) = rib.decide(rib.take_dirty(10))
    assert got is dest and dest.best is q and changed and dest.txs == [1, 2]
    rib.withdraw(FAM, prefix(1), SOURCES[1].key, 0)
    ((_, _, got, changed),) = rib.decide(rib.take_dirty(10))
    # Once two paths met, the Destination stays (no object churn when they come and go).
    assert got is dest and dest.best is p and dest.reason == "only-path" and changed
    rib.withdraw(FAM, prefix(1), SOURCES[0].key, 0)
    assert rib.decide(rib.take_dirty(10)) == [(FAM, prefix(1), None, True)]
    rib.update(FAM, prefix(1), q)
    assert rib.table(FAM)[prefix(1)] is q


def test_next_hop_checked_once_per_next_hop_of_a_batch() -> None:
    reach = Reach()
    rib, _ = new_rib(reach)
    rib.update_many(FAM, [(prefix(i), mk(0, 0, i % 2)) for i in range(500)])
    assert reach.calls == 2 and rib.count() == 500
    rib.decide(rib.take_dirty(1000))
    assert reach.calls == 4  # the slice re-checks once per next hop, not per prefix


def test_unreachable_lone_path_is_no_route_until_reachable_again() -> None:
    reach = Reach()
    reach.down.add(NEXT_HOPS[0])
    rib, _ = new_rib(reach)
    p = mk(0, 0, 0)
    rib.update(FAM, prefix(1), p)
    ((_, _, dest, changed),) = rib.decide(rib.take_dirty(10))
    assert dest.best is None and dest.reason == "next-hop-reachable" and not changed
    reach.down.clear()
    rib.mark_all()
    ((_, _, got, changed),) = rib.decide(rib.take_dirty(10))
    assert got.best is p and got.multipath == (p,) and changed
    reach.down.add(NEXT_HOPS[0])
    rib.mark_all()
    ((_, _, dest, changed),) = rib.decide(rib.take_dirty(10))
    assert dest.best is None and dest.multipath == () and changed


def test_untracked_changes_are_decided_but_never_dirty() -> None:
    rib, _ = new_rib(Reach())
    rib.update_many(FAM, [(prefix(i), mk(0, 0, 0)) for i in range(10)], track=False)
    assert rib.pending() == 0 and rib.count() == 10 and rib.decisions[FAM] == 10
    # A second path still needs the comparator chain: that prefix is dirty whatever track says.
    rib.update_many(FAM, [(prefix(0), mk(1, 1, 0))], track=False)
    assert rib.pending() == 1
    assert rib.withdraw_many(FAM, SOURCES[0].key, [(prefix(i), 0) for i in range(10)], track=False)
    assert rib.pending() == 1 and rib.count() == 1


op = st.one_of(
    st.tuples(
        st.just("update"),
        st.integers(0, 3),  # prefix
        st.integers(0, len(SOURCES) - 1),
        st.integers(0, len(ATTRS) - 1),
        st.integers(0, len(NEXT_HOPS) - 1),
        st.integers(0, 1),  # ADD-PATH path id
    ),
    st.tuples(st.just("withdraw"), st.integers(0, 3), st.integers(0, 2), st.integers(0, 1)),
    st.tuples(st.just("flip"), st.integers(0, len(NEXT_HOPS) - 1)),
    st.tuples(st.just("decide"), st.integers(1, 5)),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(op, max_size=40), st.sampled_from([0, 2]))
def test_every_outcome_is_the_full_decision_over_the_candidates(ops, multipath) -> None:
    reach = Reach()
    rib, cfg = new_rib(reach, multipath)
    cfg = replace(cfg, family=FAM)
    model: dict[int, dict[tuple[str, int], Path]] = {}  # prefix -> (source, path id) -> path
    told: dict[int, tuple] = {}  # prefix -> (multipath, best attrs) as last reported

    def check(outcomes) -> None:
        for _fam, pfx, entry, changed in outcomes:
            i = (pfx[0] >> 8) & 0xFF
            cands = list(model.get(i, {}).values())
            want = decide(cands, cfg) if cands else (None, "", ())
            if entry is None:
                assert not cands
                now: tuple = ((), None)
            else:
                assert (entry.best, entry.reason, tuple(entry.multipath)) == want
                assert sorted(map(id, entry.paths)) == sorted(map(id, cands))
                assert len(set(entry.txs)) == len(cands) == len(entry.paths)
                assert not isinstance(entry, Path) or (len(cands) == 1 and want[0] is entry)
                now = (tuple(entry.multipath), entry.best.attrs if entry.best else None)
            before = told.get(i, ((), None))
            if now != before:
                assert changed, (pfx, before, now)
            elif not changed:
                assert now == before
            told[i] = now

    for o in ops:
        if o[0] == "update":
            _, i, s, a, nh, pid = o
            p = mk(s, a, nh, pid)
            rib.update(FAM, prefix(i), p)
            model.setdefault(i, {})[(SOURCES[s].key, pid)] = p
        elif o[0] == "withdraw":
            _, i, s, pid = o
            had = model.get(i, {}).pop((SOURCES[s].key, pid), None)
            assert rib.withdraw(FAM, prefix(i), SOURCES[s].key, pid) == (had is not None)
        elif o[0] == "flip":
            reach.down ^= {NEXT_HOPS[o[1]]}
            rib.mark_all()
        else:
            check(rib.decide(rib.take_dirty(o[1])))
    check(rib.decide(rib.take_dirty(1 << 10)))
    assert rib.pending() == 0
    assert rib.count() == sum(1 for m in model.values() if m)
    assert {i for i, m in model.items() if m} == {
        (p[0] >> 8) & 0xFF for p, _ in rib.destinations(FAM)
    }
    assert not list(rib.destinations(IPV6_UNICAST))
