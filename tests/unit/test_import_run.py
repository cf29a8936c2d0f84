"""A batch of received UPDATEs imported as runs (`RouteImport._import_run`): one-prefix
announcements reach the Loc-RIB as one `update_many` per run, and whatever the mix of UPDATEs
and however a stream is cut into reads, both RIBs end exactly as importing each UPDATE on its
own (`_import_update`) leaves them, with the same prefixes left for the route worker, in order,
and the same received-prefix counts."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from bgpd.daemon import Daemon
from bgpd.neighbors import Peer
from bgpd.speaker.attributes import AS_SEQUENCE, PathAttributes
from bgpd.speaker.messages import Update
from bgpd.speaker.rib import Destination, Path, Source
from bgpd.speaker.types import IPV4_UNICAST, IPV6_UNICAST, Family
from tests.unit.test_fsm import established_pair
from tests.unit.test_receive_batch import daemon_on

NH4 = 0xC6120002
NH6 = 0xFD00_0000_0000_0000_0000_0000_0000_0002
PEER_AS_PATH = ((AS_SEQUENCE, (64513,)),)
LOOP_AS_PATH = ((AS_SEQUENCE, (64513, 64512)),)  # our AS (64512): refused on import
OUR_ID = 0xC6120001  # the daemon's router-id (198.18.0.1)


def _nlri(fam: Family, i: int, pid: int) -> tuple[int, int, int]:
    if fam == IPV4_UNICAST:
        return (0x0A000000 + (i << 8), 24, pid)
    return (0xFD00_0001 << 96 | i << 64, 64, pid)


def _announce(fam: Family, keys: list, attrs: PathAttributes) -> Update:
    if fam == IPV4_UNICAST:
        attrs = PathAttributes(**{**_fields(attrs), "next_hop": NH4})
        return Update(attrs=attrs, announce={fam: list(keys)}, next_hop={fam: (NH4,)})
    return Update(attrs=attrs, announce={fam: list(keys)}, next_hop={fam: (NH6,)})


def _fields(attrs: PathAttributes) -> dict[str, Any]:
    return {
        "origin": attrs.origin,
        "as_path": attrs.as_path,
        "med": attrs.med,
        "local_pref": attrs.local_pref,
        "originator_id": attrs.originator_id,
    }


def build(op: tuple, pid_of: Any) -> Update:
    """One UPDATE from a drawn operation (see `ops`)."""
    kind = op[0]
    if kind == "eor":
        return Update()
    fam: Family = op[1]
    if kind == "one":
        _, _, i, med = op
        attrs = PathAttributes(origin=0, as_path=PEER_AS_PATH, med=med)
        return _announce(fam, [_nlri(fam, i, pid_of(i))], attrs)
    if kind == "multi":
        _, _, idx, med = op
        attrs = PathAttributes(origin=0, as_path=PEER_AS_PATH, med=med)
        return _announce(fam, [_nlri(fam, i, pid_of(i)) for i in idx], attrs)
    if kind == "loop":
        _, _, i = op
        attrs = PathAttributes(origin=0, as_path=LOOP_AS_PATH)
        return _announce(fam, [_nlri(fam, i, pid_of(i))], attrs)
    if kind == "lp":
        _, _, i, med = op
        attrs = PathAttributes(origin=0, as_path=PEER_AS_PATH, med=med, local_pref=300)
        return _announce(fam, [_nlri(fam, i, pid_of(i))], attrs)
    if kind == "orig":
        # ORIGINATOR_ID = our router-id on the very AS path object of the clean routes: a
        # loop from an iBGP peer (RFC 4456), stripped from an eBGP one.
        _, _, i, med = op
        attrs = PathAttributes(origin=0, as_path=PEER_AS_PATH, med=med, originator_id=OUR_ID)
        return _announce(fam, [_nlri(fam, i, pid_of(i))], attrs)
    if kind == "withdraw":
        _, _, idx = op
        return Update(withdraw={fam: [_nlri(fam, i, pid_of(i)) for i in idx]})
    # "both": withdraw one prefix and announce another in the same UPDATE
    _, _, gone, i, med = op
    upd = _announce(
        fam, [_nlri(fam, i, pid_of(i))], PathAttributes(origin=0, as_path=PEER_AS_PATH, med=med)
    )
    upd.withdraw = {fam: [_nlri(fam, gone, pid_of(gone))]}
    return upd


fams = st.sampled_from([IPV4_UNICAST, IPV6_UNICAST])
idx = st.integers(0, 3)  # few prefixes, so that UPDATEs meet on them
meds = st.integers(0, 3)
ops = st.lists(
    st.one_of(
        st.tuples(st.just("one"), fams, idx, meds),
        st.tuples(st.just("one"), fams, idx, meds),
        st.tuples(st.just("multi"), fams, st.lists(idx, min_size=2, max_size=4, unique=True), meds),
        st.tuples(st.just("withdraw"), fams, st.lists(idx, min_size=1, max_size=3)),
        st.tuples(st.just("loop"), fams, idx),
        st.tuples(st.just("lp"), fams, idx, meds),
        st.tuples(st.just("orig"), fams, idx, meds),
        st.tuples(st.just("both"), fams, idx, idx, meds),
        st.just(("eor",)),
    ),
    max_size=30,
)


def _path(p: Path) -> tuple:
    return (p.source.key, p.attrs, p.next_hop, p.path_id, p.stale)


def _entry(e: Any) -> Any:
    if e is None:
        return None
    if e.__class__ is Path:
        return ("path", _path(e))
    assert isinstance(e, Destination)
    best = _path(e.best) if e.best is not None else None
    return ("dest", [_path(p) for p in e.paths], best, tuple(_path(p) for p in e.multipath))


def state(d: Daemon, peer: Peer) -> dict[str, Any]:
    """Everything import leaves behind, with paths as values (the two daemons' objects differ)."""
    loc = d.loc_rib
    return {
        "adj_in": {f: peer.rib_in.accepted_count(f) for f in peer.rib_in.families()},
        "paths_in": {
            f: sorted((pfx, _path(p)) for pfx, p in loc.paths_of(f, peer.config.address))
            for f in loc.tables
        },
        "rejected": {f: set(r) for f, r in peer.rib_in.rejected.items() if r},
        "loc": {f: {p: _entry(e) for p, e in t.items()} for f, t in loc.tables.items() if t},
        # In order: the route worker takes them from the end.
        "dirty": {f: [(p, _entry(e)) for p, e in dd.items()] for f, dd in loc.dirty.items() if dd},
        "decisions": dict(loc.decisions),
        "eor": set(peer.eor_received),
        "interned": len(d.interner),
        "counted": _counted(d, peer.config.address),
    }


def _counted(d: Daemon, peer: str) -> dict[tuple[str, str], float | None]:
    """The received-prefix counters (announce/withdraw per family) as a scrape shows them."""
    m = d.observer.metrics
    assert m.bgp is not None
    m.bgp.flush_prefix_updates()
    return {
        (fam, kind): m.value(
            "routemesh_bgp_prefix_updates_received_total",
            {"peer": peer, "family": fam, "type": kind},
        )
        for fam in ("ipv4-unicast", "ipv6-unicast")
        for kind in ("announce", "withdraw")
    }


def _daemon(live_sink: bool, ebgp: bool = True) -> tuple[Daemon, Peer]:
    w = established_pair()
    d, peer, _ = daemon_on(w)
    peer.driver.loop.close()  # never run: the import is synchronous
    if not ebgp:
        src = peer.source
        assert src is not None
        peer.source = Source(src.key, src.address, src.router_id, 64512, False)
    if live_sink:
        d.route_sink = lambda fam, prefix, paths: None
        d.sink_live = True
    return d, peer


@settings(max_examples=400, deadline=None)
@given(
    ops=ops,
    cuts=st.lists(st.integers(1, 6), max_size=12),
    live_sink=st.booleans(),
    addpath=st.booleans(),
    ebgp=st.booleans(),
)
def test_batched_import_leaves_what_one_update_at_a_time_leaves(
    ops: list[tuple], cuts: list[int], live_sink: bool, addpath: bool, ebgp: bool
) -> None:
    pid_of = (lambda i: 1 + i % 2) if addpath else (lambda i: 0)
    d1, p1 = _daemon(live_sink, ebgp)
    d2, p2 = _daemon(live_sink, ebgp)
    updates1 = [build(op, pid_of) for op in ops]
    updates2 = [build(op, pid_of) for op in ops]
    # The stream cut into reads of the drawn sizes (the rest in one).
    pos = 0
    for n in [*cuts, len(updates1)]:
        batch = updates1[pos : pos + n]
        if batch:
            d1._on_updates(p1.driver, batch)
        wanted: dict[Family, bool] = {}
        if updates2[pos : pos + n]:
            d2.observer.on_updates(p2.config.address, updates2[pos : pos + n])
        for u in updates2[pos : pos + n]:
            d2._import_update(p2, u, wanted)
        pos += n
        assert state(d1, p1) == state(d2, p2)
    assert pos >= len(updates1)


def test_a_run_of_one_prefix_updates_reaches_the_loc_rib_in_one_call() -> None:
    d, peer = _daemon(live_sink=True)
    calls: list[int] = []
    real = d.loc_rib.update_many

    def counted(fam: Family, items: Any, *, track: bool = True) -> Any:
        items = list(items)
        calls.append(len(items))
        return real(fam, items, track=track)

    d.loc_rib.update_many = counted  # type: ignore[method-assign]
    as_updates: list[int] = []
    real_metrics = d.observer.on_updates

    def metrics_counted(peer: str, updates: list) -> None:
        as_updates.append(len(updates))
        real_metrics(peer, updates)

    d.observer.on_updates = metrics_counted  # type: ignore[method-assign]
    ones = [build(("one", IPV4_UNICAST, i, i), lambda i: 0) for i in range(6)]
    d._on_updates(peer.driver, [*ones[:3], build(("eor",), None), *ones[3:]])
    # Three before the End-of-RIB, three after it: two calls, not six; the metrics count the
    # runs themselves and see only the End-of-RIB as an UPDATE.
    assert calls == [3, 3] and as_updates == [1]
    assert peer.rib_in.accepted_count(IPV4_UNICAST) == 6 == len(d.loc_rib.dirty[IPV4_UNICAST])
    assert peer.eor_received == {IPV4_UNICAST}
