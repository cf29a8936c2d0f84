"""Import into the daemon's RIBs: one UPDATE goes in as a batch, the Adj-RIB-In and the Loc-RIB
share each prefix key, routes nobody can be sent leave no work for the route worker, and RIB
memory per route stays under a measured bound (tracemalloc bytes at 100k routes)."""

from __future__ import annotations

import asyncio

from bgpd.config import parse_config
from bgpd.daemon import Daemon, _receivers
from bgpd.neighbors import Peer
from bgpd.reflector.export import ExportPolicy
from bgpd.reflector.groups import Outbound
from bgpd.speaker.attributes import AS_SEQUENCE, PathAttributes
from bgpd.speaker.context import CodecContext
from bgpd.speaker.messages import Update
from bgpd.speaker.rib import Source
from bgpd.speaker.types import IPV4_UNICAST
from tests.bench.bench_rib_memory import measure

FAM = IPV4_UNICAST
CONFIG = """
[global]
asn = 64512
router-id = "198.18.0.1"
[[neighbor]]
address = "198.18.0.2"
remote-asn = 64513
[[neighbor]]
address = "198.18.0.3"
remote-asn = 64514
"""
ATTRS = PathAttributes(origin=0, as_path=((AS_SEQUENCE, (64513,)),), med=5)
# Measured 142 bytes per route at 100k: 537 before the Loc-RIB stored lone paths bare, 274 before
# one Path served all the prefixes of its UPDATE, 194 before the Adj-RIB-In stopped keeping a
# table of its own. The bound leaves room for allocator and dict-size noise, and fails if a
# Path per prefix or a second table per route returns.
BYTES_PER_ROUTE_BOUND = 180


def up(d: Daemon, address: str, asn: int) -> Peer:
    """A peer as the daemon sees it once Established, without a session (UPDATEs fed directly)."""
    nb = next(n for n in d.config.neighbors if n.address == address)
    peer = Peer(nb, None)  # type: ignore[arg-type]
    addr = int.from_bytes(bytes(int(x) for x in address.split(".")), "big")
    peer.source = Source(address, addr, addr, asn, True)
    pol = ExportPolicy(FAM, True, asn, False, "self", (0xC6120001,))
    peer.out = Outbound(address, addr, CodecContext(), {FAM: pol})
    d.peers[address] = peer
    return peer


def announce(n: int) -> Update:
    nlri = [(0x0A000000 + (i << 8), 24, 0) for i in range(n)]
    return Update(attrs=ATTRS, announce={FAM: nlri}, next_hop={FAM: (0xC6120002,)})


def withdraw(n: int) -> Update:
    return Update(withdraw={FAM: [(0x0A000000 + (i << 8), 24, 0) for i in range(n)]})


def test_routes_from_the_only_peer_leave_no_work_and_are_held_once() -> None:
    d = Daemon(parse_config(CONFIG))
    a = up(d, "198.18.0.2", 64513)
    d._on_update(a, announce(1000))
    assert d.loc_rib.count() == 1000 and a.rib_in.accepted_count() == 1000
    assert d.loc_rib.pending() == 0  # nobody else is up, and nothing goes back to its source
    assert d.loc_rib.decisions[FAM] == 1000
    # The Loc-RIB alone holds them: the Adj-RIB-In only counts.
    assert (
        not hasattr(a.rib_in, "tables")
        and len(list(d.loc_rib.paths_of(FAM, a.config.address))) == 1000
    )
    d._on_update(a, withdraw(1000))
    assert d.loc_rib.count() == 0 and a.rib_in.accepted_count() == 0
    assert d.loc_rib.pending() == 0


def test_routes_another_peer_can_receive_are_queued_for_export() -> None:
    d = Daemon(parse_config(CONFIG))
    a, b = up(d, "198.18.0.2", 64513), up(d, "198.18.0.3", 64514)
    d._on_update(a, announce(100))
    assert d.loc_rib.pending() == 100
    changes = [(p, e) for _, p, e, _ in d.loc_rib.decide(d.loc_rib.take_dirty(1000))]
    assert all(e is not None and e.best.source is a.source for _, e in changes)
    assert a.out is not None and b.out is not None
    assert _receivers(FAM, changes, [a.out, b.out]) == [b.out]
    assert _receivers(FAM, changes, [a.out]) == []
    assert _receivers(FAM, [(p, None) for p, _ in changes], [a.out, b.out]) == []


def test_rib_bytes_per_route_at_100k_stay_under_the_bound() -> None:
    per_route = asyncio.run(measure(100_000))
    assert per_route < BYTES_PER_ROUTE_BOUND, f"{per_route:.0f} bytes per route"


def _sunk(d: Daemon) -> list[tuple]:
    got: list[tuple] = []
    d.route_sink = lambda fam, prefix, paths: got.append((prefix, paths))
    return got


def test_a_sink_from_the_start_hears_routes_before_convergence() -> None:
    # An empty kernel (nothing of ours to protect): routes go out while the table loads.
    d = Daemon(parse_config(CONFIG))
    got = _sunk(d)
    d.sink_from_start()
    a = up(d, "198.18.0.2", 64513)
    d._on_update(a, announce(300))
    assert not d.converged.is_set()
    d._decide_slice()
    assert len(got) == 300 and all(paths and paths[0].source is a.source for _, paths in got)
    d._on_update(a, withdraw(300))
    d._decide_slice()
    assert sum(1 for _, paths in got if paths is None) == 300


def test_a_sink_hears_nothing_before_convergence_by_default() -> None:
    # Routes of ours in the kernel (a restart) are compared with the whole table only.
    d = Daemon(parse_config(CONFIG))
    got = _sunk(d)
    a = up(d, "198.18.0.2", 64513)
    d._on_update(a, announce(300))
    while d.loc_rib.pending():
        d._decide_slice()
    assert got == []
    d._sink_everything()
    assert len(got) == 300


def test_one_path_serves_an_update_and_stale_marking_keeps_exact_per_prefix() -> None:
    # Graceful restart marks all of a peer's routes stale at once, so marking the shared Path
    # marks exactly them; a prefix announced again gets a fresh Path and survives End-of-RIB.
    d = Daemon(parse_config(CONFIG))
    a = up(d, "198.18.0.2", 64513)
    d._on_update(a, announce(3))
    table = d.loc_rib.table(FAM)
    assert len({id(p) for p in table.values()}) == 1
    d._mark_stale(a, FAM)
    a.stale.add(FAM)
    d._on_update(a, announce(1))
    assert [p.stale for p in table.values()] == [False, True, True]
    d._on_eor(a, FAM)
    assert list(table) == [(0x0A000000, 24)] and a.rib_in.accepted_count() == 1


def test_add_path_ids_in_one_update_each_get_their_own_path() -> None:
    d = Daemon(parse_config(CONFIG))
    a = up(d, "198.18.0.2", 64513)
    nlri = [(0x0A000000, 24, 1), (0x0A000100, 24, 2), (0x0A000000, 24, 2), (0x0A000100, 24, 1)]
    d._on_update(a, Update(attrs=ATTRS, announce={FAM: nlri}, next_hop={FAM: (0xC6120002,)}))
    got = {(pfx[0], pfx[1], p.path_id): p for pfx, p in d.loc_rib.paths_of(FAM, "198.18.0.2")}
    assert sorted(got) == sorted(nlri) and a.rib_in.accepted_count() == 4
    assert got[nlri[0]] is got[nlri[3]] and got[nlri[1]] is got[nlri[2]]
    assert got[nlri[0]] is not got[nlri[1]]
    for pfx in ((0x0A000000, 24), (0x0A000100, 24)):
        dest = d.loc_rib.table(FAM)[pfx]
        assert sorted(p.path_id for p in dest.paths) == [1, 2] and sorted(dest.txs) == [1, 2]
