"""RIB containers: Destination replace/remove with stable ADD-PATH tx ids, Loc-RIB dirty tracking
and decision outcomes, interning, Adj-RIB-In counts."""

from __future__ import annotations

from bgpd.speaker.attributes import PathAttributes
from bgpd.speaker.bestpath import DecisionConfig, make_decider
from bgpd.speaker.rib import AdjRibIn, AttrInterner, Destination, LocRib, Path, Source
from bgpd.speaker.types import IPV4_UNICAST, IPV6_UNICAST

A = Source("a", 1, 1, 64512, False)
B = Source("b", 2, 2, 64512, False)
P = (0x0AF40100, 24)


def mk(src: Source, lp: int = 100, path_id: int = 0) -> Path:
    return Path(src, PathAttributes(origin=0, local_pref=lp), (src.address,), path_id)


def test_destination_replaces_same_source_and_path_id_keeping_tx_id() -> None:
    d = Destination()
    p1, p2 = mk(A), mk(A, path_id=7)
    assert d.add(p1) is None and d.add(p2) is None
    assert (d.tx_of(p1), d.tx_of(p2)) == (1, 2)
    p1b = mk(A, lp=200)
    assert d.add(p1b) is p1 and d.tx_of(p1b) == 1 and len(d.paths) == 2
    assert d.remove("a", 0) is p1b and d.remove("a", 0) is None
    assert d.txs == [2]
    p3 = mk(B)
    d.add(p3)
    assert d.tx_of(p3) == 1  # the freed id is reused


def test_one_path_shared_by_many_prefixes_gets_its_tx_id_per_prefix() -> None:
    # One Path per UPDATE serves every prefix of it, so the id it is sent with is the
    # prefix's business: here 2 under one prefix, 1 under another, and the Path unchanged.
    shared = mk(B)
    d1, d2 = Destination(), Destination()
    d1.add(mk(A))
    d1.add(shared)
    d2.add(shared)
    assert (d1.tx_of(shared), d2.tx_of(shared)) == (2, 1)
    assert not hasattr(shared, "tx_id") and shared.txs == (1,)


def test_locrib_decides_only_dirty_prefixes_and_reports_changes() -> None:
    rib = LocRib(make_decider(DecisionConfig(multipath=2)))
    rib.update(IPV4_UNICAST, P, mk(A, lp=100))
    rib.update(IPV4_UNICAST, P, mk(B, lp=200))
    assert rib.pending() == 1
    ((_fam, _prefix, dest, changed),) = rib.decide(rib.take_dirty(10))
    assert changed and dest.best.source is B and dest.reason == "local-pref"
    assert rib.pending() == 0
    assert rib.withdraw(IPV4_UNICAST, P, "b", 0)
    assert not rib.withdraw(IPV4_UNICAST, P, "b", 0)
    ((_, _, dest, changed),) = rib.decide(rib.take_dirty(10))
    assert changed and dest.best.source is A
    rib.withdraw(IPV4_UNICAST, P, "a", 0)
    assert rib.decide(rib.take_dirty(10)) == [(IPV4_UNICAST, P, None, True)]
    assert rib.count() == 0


def test_take_dirty_slices_across_families() -> None:
    rib = LocRib(make_decider(DecisionConfig()))
    for i in range(5):
        rib.update(IPV4_UNICAST, (i << 8, 24), mk(A))
    rib.update(IPV6_UNICAST, (1 << 100, 64), mk(A))
    first = rib.take_dirty(4)
    rest = rib.take_dirty(4)
    assert len(first) == 4 and len(rest) == 2 and rib.pending() == 0
    assert {f for f, _, _ in first + rest} == {IPV4_UNICAST, IPV6_UNICAST}
    rib.decide(first + rest)
    rib.mark_all()
    assert rib.pending() == 6


def test_interner_shares_equal_attribute_sets() -> None:
    it = AttrInterner()
    a, b = PathAttributes(origin=0, med=5), PathAttributes(origin=0, med=5)
    assert a is not b and it.intern(a) is it.intern(b) and len(it) == 1


def test_adj_rib_in_counts() -> None:
    rin = AdjRibIn()
    rin.counted(IPV4_UNICAST, 2)
    rin.counted(IPV4_UNICAST, -1)
    rin.rejected.setdefault(IPV4_UNICAST, set()).add((2, 32, 0))
    assert (rin.accepted_count(), rin.received_count()) == (1, 2)
    assert (rin.accepted_count(IPV4_UNICAST), rin.received_count(IPV6_UNICAST)) == (1, 0)
    assert rin.families() == [IPV4_UNICAST]
    rin.clear(IPV4_UNICAST)
    assert rin.received_count() == 0 and rin.families() == []


def test_a_source_s_paths_are_found_in_the_loc_rib_bare_or_among_others() -> None:
    rib = LocRib(make_decider(DecisionConfig()))
    pa, pb, pa7 = mk(A), mk(B), mk(A, path_id=7)
    assert rib.update_many(IPV4_UNICAST, [(P, pa), ((2, 32), pa)]) == 2
    assert rib.update_many(IPV4_UNICAST, [(P, pb), (P, pa7)]) == 2
    assert rib.update_many(IPV4_UNICAST, [(P, mk(A, lp=300))]) == 0  # replaces pa there
    got = sorted((pfx, p.path_id) for pfx, p in rib.paths_of(IPV4_UNICAST, "a"))
    assert got == sorted([(P, 0), (P, 7), ((2, 32), 0)])
    assert [p for _, p in rib.paths_of(IPV4_UNICAST, "b")] == [pb]
    assert list(rib.paths_of(IPV6_UNICAST, "a")) == []
