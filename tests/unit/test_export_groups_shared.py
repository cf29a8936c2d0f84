"""Update groups with a shared Adj-RIB-Out: members that hold the same routes share one table,
diffed once; split horizon, partial calls (one member's sync), forced refresh and ADD-PATH stay
exact per member. A property test checks every sequence against a plain per-member model."""

from __future__ import annotations

import tracemalloc

from hypothesis import given, settings
from hypothesis import strategies as st

from bgpd.reflector import groups
from bgpd.reflector.export import ExportPolicy, LocalView, export_path, is_own
from bgpd.reflector.groups import EncodeCache, Outbound, export_changes
from bgpd.speaker.attributes import PathAttributes
from bgpd.speaker.bestpath import DecisionConfig, make_decider
from bgpd.speaker.context import CodecContext
from bgpd.speaker.messages import decode_message, split_messages
from bgpd.speaker.rib import AttrInterner, LocRib, Path, Source
from bgpd.speaker.types import IPV4_UNICAST

ASN = 64512
LOCAL = LocalView(ASN, 0x0A000001, cluster_id=0xF4000001)
CTX = CodecContext()
CTX_AP = CodecContext(addpath_tx=frozenset({IPV4_UNICAST}))
AP_RX = CodecContext(addpath_rx=frozenset({IPV4_UNICAST}))
FAM = IPV4_UNICAST


def member(n: int, *, addpath: bool = False, client: bool = True) -> Outbound:
    pol = ExportPolicy(FAM, False, ASN, client, "auto", (0xC6120001,), addpath=addpath)
    return Outbound(f"198.18.0.{n}", 0xC6120000 + n, CTX_AP if addpath else CTX, {FAM: pol})


def source_of(m: Outbound) -> Source:
    return Source(m.key, int(m.key.split(".")[-1]), m.router_id, ASN, False, rr_client=True)


def prefix(i: int) -> tuple[int, int]:
    return (0x0A000000 | (i << 8), 24)


def new_rib() -> LocRib:
    return LocRib(make_decider(DecisionConfig()))


def changes(rib: LocRib) -> list:
    return [(p, d) for _, p, d, _ in rib.decide(rib.take_dirty(1 << 20))]


def effects(m: Outbound, msgs: list[bytes]) -> tuple[set, dict]:
    """(withdrawn (prefix, path id), announced (prefix, path id) -> attrs) as the peer reads them."""
    ctx = AP_RX if m.ctx is CTX_AP else CTX
    wd: set = set()
    ann: dict = {}
    for t, body in split_messages(bytearray(b"".join(msgs)), ctx):
        upd = decode_message(t, body, ctx)
        for a, plen, pid in upd.withdraw.get(FAM, []):
            wd.add(((a, plen), pid))
        for a, plen, pid in upd.announce.get(FAM, []):
            ann[((a, plen), pid)] = upd.attrs
    return wd, ann


def test_members_share_one_table_and_the_originator_gets_nothing() -> None:
    ms = [member(n) for n in range(10, 20)]
    attrs = PathAttributes(origin=0, local_pref=100)
    rib = new_rib()
    for i in range(300):
        rib.update(FAM, prefix(i), Path(source_of(ms[0]), attrs, (0xC612000A,)))
    enc = EncodeCache()
    out = dict(export_changes(FAM, changes(rib), ms, LOCAL, AttrInterner(), enc))
    assert ms[0] not in out and len(out) == 9
    first = out[ms[1]]
    assert all(out[m][0] is first[0] for m in ms[2:])  # the very same bytes object
    assert [m.rib_out.count(FAM) for m in ms] == [0] + [300] * 9
    assert ms[0].rib_out.table(FAM) == {}
    assert len({id(m.rib_out.view(FAM).table) for m in ms}) == 1  # one table for all ten
    # Withdraw everything: one encoding, the very same bytes for the nine that held it.
    for i in range(300):
        rib.withdraw(FAM, prefix(i), ms[0].key, 0)
    out = dict(export_changes(FAM, changes(rib), ms, LOCAL, AttrInterner(), enc))
    assert ms[0] not in out and len(out) == 9
    msgs = out[ms[1]]
    assert all(out[m][0] is msgs[0] for m in ms[2:])
    wd, ann = effects(ms[1], msgs)
    assert wd == {(prefix(i), 0) for i in range(300)} and not ann
    assert all(m.rib_out.count() == 0 for m in ms)


def test_a_call_for_some_members_leaves_the_others_as_they_were() -> None:
    a, b, c = member(20), member(21), member(22)
    src = Source("198.18.0.99", 99, 0xC6120063, ASN, False, rr_client=True)
    rib = new_rib()
    rib.update(FAM, prefix(1), Path(src, PathAttributes(origin=0), (0xC6120063,)))
    it = AttrInterner()
    assert len(export_changes(FAM, changes(rib), [a, b, c], LOCAL, it)) == 3
    rib.withdraw(FAM, prefix(1), src.key, 0)
    gone = changes(rib)
    # Only a is told (as a sync or a refresh for one peer would): b and c keep the route.
    ((m, msgs),) = export_changes(FAM, gone, [a], LOCAL, it)
    assert m is a and effects(a, msgs)[0] == {(prefix(1), 0)}
    assert a.rib_out.count() == 0 and b.rib_out.count() == c.rib_out.count() == 1
    assert prefix(1) in b.rib_out.table(FAM) and prefix(1) in c.rib_out.table(FAM)
    out = dict(export_changes(FAM, gone, [a, b, c], LOCAL, it))
    assert set(out) == {b, c}
    assert effects(b, out[b])[0] == effects(c, out[c])[0] == {(prefix(1), 0)}
    assert export_changes(FAM, gone, [a, b, c], LOCAL, it) == []


def test_forced_refresh_for_one_member_resends_without_copying_the_table() -> None:
    ms = [member(n) for n in range(30, 34)]
    src = Source("198.18.0.99", 99, 0xC6120063, ASN, False, rr_client=True)
    rib = new_rib()
    for i in range(5):
        rib.update(FAM, prefix(i), Path(src, PathAttributes(origin=0), (0xC6120063,)))
    ch = changes(rib)
    it = AttrInterner()
    export_changes(FAM, ch, ms, LOCAL, it)
    table = ms[0].rib_out.view(FAM).table
    ((m, msgs),) = export_changes(FAM, ch, [ms[0]], LOCAL, it, force=True)
    assert set(effects(m, msgs)[1]) == {(prefix(i), 0) for i in range(5)}
    assert all(x.rib_out.view(FAM).table is table for x in ms)  # nothing changed: still shared
    assert all(x.rib_out.count() == 5 for x in ms)


def test_shared_table_costs_less_memory_than_one_per_member() -> None:
    src = Source("198.18.0.99", 99, 0xC6120063, ASN, False, rr_client=True)
    rib = new_rib()
    for i in range(2000):
        rib.update(FAM, prefix(i), Path(src, PathAttributes(origin=0), (0xC6120063,)))
    ch = changes(rib)

    def held_bytes(n: int) -> int:
        ms = [member(40 + k) for k in range(n)]
        tracemalloc.start()
        out = export_changes(FAM, ch, ms, LOCAL, AttrInterner())
        size = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        assert len(out) == n and all(m.rib_out.count() == 2000 for m in ms)
        return size

    held_bytes(1)  # first-use allocations (codec tables, caches) out of the way
    one, fifty = held_bytes(1), held_bytes(50)
    # Fifty members holding 2000 routes each cost about what one does, not fifty times it:
    # each further member costs less than a twentieth of one table.
    assert (fifty - one) / 49 < one / 20, (one, fifty)


def test_a_peer_that_connects_later_ends_up_sharing_the_table() -> None:
    ms = [member(n) for n in range(50, 55)]
    src = Source("198.18.0.99", 99, 0xC6120063, ASN, False, rr_client=True)
    rib = new_rib()
    for i in range(300):
        rib.update(FAM, prefix(i), Path(src, PathAttributes(origin=0), (0xC6120063,)))
    it = AttrInterner()
    export_changes(FAM, changes(rib), ms, LOCAL, it)
    main = ms[0].rib_out.view(FAM).table

    def whole() -> list:  # a sync's slice: the Loc-RIB as it is now
        return [(p, rib.table(FAM)[p]) for p in map(prefix, range(300))]

    # Late joiner a: a change reaches everyone before its sync; b: its sync comes first.
    a, b = member(60), member(61)
    rib.update(FAM, prefix(0), Path(src, PathAttributes(origin=0, med=5), (0xC6120063,)))
    out = dict(export_changes(FAM, changes(rib), [*ms, a], LOCAL, it))
    assert set(out) == {*ms, a} and a.rib_out.count() == 1
    ((_, msgs),) = export_changes(FAM, whole(), [a], LOCAL, it)
    assert len(effects(a, msgs)[1]) == 299  # the one it got already is not sent again
    ((_, msgs),) = export_changes(FAM, whole(), [b], LOCAL, it)
    assert len(effects(b, msgs)[1]) == 300
    rib.update(FAM, prefix(1), Path(src, PathAttributes(origin=0, med=6), (0xC6120063,)))
    out = dict(export_changes(FAM, changes(rib), [*ms, a, b], LOCAL, it))
    assert len({id(msgs[0]) for msgs in out.values()}) == 1  # encoded once for all seven
    views = [m.rib_out.view(FAM) for m in [*ms, a, b]]
    assert all(v.table is views[0].table and not v.own for v in views)
    assert views[0].table is main  # the syncs only cleared marks: the table was never copied
    assert all(v.count == 300 for v in views)


# --- property: the shared tables behave exactly like one plain table per member -------------

MEMBERS = 6  # 198.18.0.60..65; members 4 and 5 take ADD-PATH, member 3 is a non-client
ATTRS = [
    PathAttributes(origin=0, local_pref=100),
    PathAttributes(origin=0, local_pref=200),
    PathAttributes(origin=0, local_pref=100, originator_id=0xC6120000 + 62),  # member 2 made it
]
op = st.one_of(
    st.tuples(
        st.just("update"),
        st.integers(0, 5),  # prefix
        st.integers(0, MEMBERS),  # source: a member, or MEMBERS = a peer outside the groups
        st.integers(0, len(ATTRS) - 1),
    ),
    st.tuples(st.just("withdraw"), st.integers(0, 5), st.integers(0, MEMBERS)),
    # The member's session restarts: a new Outbound holding nothing, the old one dropped as is.
    st.tuples(st.just("reconnect"), st.integers(0, MEMBERS - 1)),
    st.tuples(
        st.just("export"),
        st.sets(st.integers(0, MEMBERS - 1), min_size=1),  # who is told
        st.booleans(),  # force
        st.booleans(),  # the whole table (a sync) rather than the decided changes
    ),
)


def _desired(m: Outbound, pfx, dest) -> dict:
    """What m must hold for pfx, computed the plain way: (path id) -> (attrs, next hop)."""
    pol = m.policies[FAM]
    if dest is None or dest.best is None:
        return {}
    out = {}
    pairs = zip(dest.paths, dest.txs) if pol.addpath else ((dest.best, 0),)
    for p, tx in pairs:
        r = export_path(p, pfx, pol, LOCAL)
        if r is not None and not is_own(p, m.key, m.router_id):
            out[tx] = r
    return out


@settings(max_examples=300, deadline=None)
@given(st.lists(op, max_size=40), st.sampled_from([1 << 18, 4, 0]))
def test_shared_tables_match_a_plain_table_per_member(ops, join_budget) -> None:
    old_budget = groups.JOIN_BUDGET
    groups.JOIN_BUDGET = join_budget  # small: peers holding nothing join a few at a time
    try:
        _check_against_plain_tables(ops)
    finally:
        groups.JOIN_BUDGET = old_budget


def _check_against_plain_tables(ops) -> None:
    ms = [member(60 + k, addpath=k >= 4, client=k != 3) for k in range(MEMBERS)]
    sources = [source_of(m) for m in ms] + [
        Source("198.18.0.99", 99, 0xC6120063, ASN, False, rr_client=True)
    ]
    rib = new_rib()
    it = AttrInterner()
    enc = EncodeCache()
    model: list[dict] = [{} for _ in ms]  # per member: (prefix, path id) -> (attrs, nh)
    pending: dict = {}  # decided but not yet exported: prefix -> entry (one per prefix, as
    # the daemon's dirty set)
    for o in ops:
        if o[0] == "update":
            _, i, s, a = o
            rib.update(FAM, prefix(i), Path(sources[s], ATTRS[a], (0xC6120100 + s,)))
            continue
        if o[0] == "withdraw":
            _, i, s = o
            rib.withdraw(FAM, prefix(i), sources[s].key, 0)
            continue
        if o[0] == "reconnect":
            k = o[1]
            ms[k] = member(60 + k, addpath=k >= 4, client=k != 3)
            model[k] = {}
            continue
        _, told, force, whole = o
        pending.update(changes(rib))
        table = rib.table(FAM)
        ch = [(p, table.get(p)) for p in map(prefix, range(6))] if whole else list(pending.items())
        if not whole:
            pending = {}
        targets = [ms[k] for k in sorted(told)]
        out = dict(export_changes(FAM, ch, targets, LOCAL, it, enc, force=force))
        for k in sorted(told):
            m, held = ms[k], model[k]
            want_wd, want_ann = set(), {}
            for pfx, dest in ch:
                want = _desired(m, pfx, dest)
                for key in [key for key in held if key[0] == pfx]:
                    if key[1] not in want:
                        want_wd.add(key)
                        del held[key]
                for pid, r in want.items():
                    if force or held.get((pfx, pid)) != r:
                        want_ann[(pfx, pid)] = r
                    held[(pfx, pid)] = r
            wd, ann = effects(m, out.get(m, []))
            assert wd == want_wd, (k, o)
            assert set(ann) == set(want_ann), (k, o)
            for key, r in want_ann.items():
                assert ann[key].local_pref == r[0].local_pref
                assert ann[key].originator_id == r[0].originator_id
                assert ann[key].cluster_list == r[0].cluster_list
            got = {
                (pfx, tx): (attrs, nh)
                for pfx, sent in m.rib_out.table(FAM).items()
                for tx, attrs, nh in sent
            }
            assert got == held, k
            assert m.rib_out.count(FAM) == len(held)
