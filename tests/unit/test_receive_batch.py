"""The receive path in batches: the UPDATEs one read completes reach the daemon as one list, in
order and with the session's semantics intact (errors mid-read, max-prefix teardown, hold timer,
message counts). tests/bench/bench_receive.py times the same path per UPDATE."""

from __future__ import annotations

import asyncio

import pytest

from bgpd.config import parse_config
from bgpd.daemon import Daemon
from bgpd.neighbors import Peer
from bgpd.speaker import errors as E
from bgpd.speaker.attributes import PathAttributes
from bgpd.speaker.events import RouteRefreshReceived, SessionDown, State, UpdateReceived
from bgpd.speaker.messages import RouteRefresh as RouteRefreshMsg
from bgpd.speaker.messages import Update, encode_keepalive, encode_message, encode_updates
from bgpd.speaker.rib import Source
from bgpd.speaker.transport import PeerDriver, PeerEndpoint
from bgpd.speaker.types import IPV4_UNICAST
from tests.unit.test_fsm import RID_A, established_pair

FAM = IPV4_UNICAST
PEER_B = "198.18.0.2"


def one_prefix_updates(w, count: int, first: int = 0) -> list[bytes]:
    """`count` UPDATEs from side a, each one prefix with its own MED."""
    out: list[bytes] = []
    for i in range(first, first + count):
        attrs = PathAttributes(origin=0, as_path=((2, (64513,)),), next_hop=RID_A, med=i)
        out += encode_updates(w.a.context, FAM, attrs, [(0x0AF40000 + (i << 8), 24, 0)], (RID_A,))
    return out


def conn_of(w, side: int) -> int:
    return next(c for (s, c) in w.links if s == side)


def drain(session) -> list:
    return list(iter(session.next_event, None))


def test_updates_of_one_read_come_out_in_order_and_counted() -> None:
    w = established_pair()
    drain(w.b)
    msgs = one_prefix_updates(w, 3)
    before = w.b.messages_in["keepalive"]
    w.b.receive_data(conn_of(w, 1), msgs[0] + encode_keepalive() + msgs[1] + msgs[2], w.now)
    first = w.b.next_event()
    assert isinstance(first, UpdateReceived)
    rest = w.b.take_updates()
    got = [u.announce[FAM][0][0] for u in [first.update, *rest]]
    assert got == [0x0AF40000, 0x0AF40100, 0x0AF40200]
    assert w.b.next_event() is None and w.b.take_updates() == []
    assert w.b.messages_in["update"] == 3 and w.b.messages_in["keepalive"] == before + 1


def test_other_events_between_updates_keep_their_place() -> None:
    w = established_pair()
    drain(w.b)
    msgs = one_prefix_updates(w, 4)
    refresh = encode_message(RouteRefreshMsg(FAM, 0), w.a.context)
    conn = conn_of(w, 1)
    w.b.receive_data(conn, msgs[0] + msgs[1] + refresh + msgs[2], w.now)
    w.b.receive_data(conn, msgs[3], w.now)  # joins the queued run: nothing came between
    first = w.b.next_event()
    assert isinstance(first, UpdateReceived) and first.update.announce[FAM][0][0] == 0x0AF40000
    assert [u.announce[FAM][0][0] for u in w.b.take_updates()] == [0x0AF40100]
    assert w.b.take_updates() == []
    assert w.b.next_event() == RouteRefreshReceived(FAM, 0)
    third = w.b.next_event()
    assert isinstance(third, UpdateReceived) and third.update.announce[FAM][0][0] == 0x0AF40200
    fourth = w.b.next_event()
    assert isinstance(fourth, UpdateReceived) and fourth.update.announce[FAM][0][0] == 0x0AF40300
    assert w.b.next_event() is None


def test_a_read_restarts_the_hold_timer_at_its_time() -> None:
    w = established_pair()
    drain(w.b)
    hold = w.b.negotiated.hold_time
    w.b.receive_data(conn_of(w, 1), b"".join(one_prefix_updates(w, 2)), w.now + 5)
    assert w.b._hold_at == pytest.approx(w.now + 5 + hold)


def test_a_malformed_update_mid_read_ends_the_session_after_the_good_ones() -> None:
    w = established_pair()
    drain(w.b)
    good = one_prefix_updates(w, 2)
    # A truncated NLRI: the prefix length says /24 but no address bytes follow.
    bad = bytearray(good[0][:-3])
    bad[16:18] = len(bad).to_bytes(2, "big")
    w.b.receive_data(conn_of(w, 1), good[0] + bytes(bad) + good[1], w.now)
    events = drain(w.b)
    updates = [e for e in events if isinstance(e, UpdateReceived)]
    assert [u.update.announce[FAM][0][0] for u in updates] == [0x0AF40000]
    down = [e for e in events if isinstance(e, SessionDown)]
    assert len(down) == 1 and down[0].notification[0] == E.UPDATE_MESSAGE_ERROR and down[0].sent
    assert w.b.state is State.IDLE
    assert w.b.messages_in["update"] == 2  # the good one and the bad one; nothing after it


CONFIG = """
[global]
asn = 64512
router-id = "198.18.0.1"
[[neighbor]]
address = "198.18.0.2"
remote-asn = 64513
{extra}
"""


def daemon_on(w, extra: str = "") -> tuple[Daemon, Peer, list[int]]:
    """A Daemon whose peer 198.18.0.2 is side b of the wire (already Established)."""
    drain(w.b)
    d = Daemon(parse_config(CONFIG.format(extra=extra)))
    batches: list[int] = []

    def on_updates(driver: PeerDriver, updates: list[Update]) -> None:
        batches.append(len(updates))
        d._on_updates(driver, updates)

    loop = asyncio.new_event_loop()
    drv = PeerDriver(w.b, PeerEndpoint(PEER_B), d._on_event, loop, on_updates)
    peer = Peer(d.config.neighbors[0], drv)
    peer.source = Source(PEER_B, RID_A, RID_A, 64513, True)
    d.peers[PEER_B] = peer
    return d, peer, batches


def test_the_daemon_gets_one_batch_per_read_and_imports_all_of_it() -> None:
    w = established_pair()
    d, peer, batches = daemon_on(w)
    msgs = one_prefix_updates(w, 5)
    peer.driver.on_data(conn_of(w, 1), b"".join(msgs[:3]))
    peer.driver.on_data(conn_of(w, 1), b"".join(msgs[3:]))
    assert batches == [3, 2]
    assert peer.rib_in.accepted_count() == 5 and d.loc_rib.count() == 5
    meds = sorted(p.attrs.med for _, p in d.loc_rib.paths_of(FAM, peer.config.address))
    assert meds == [0, 1, 2, 3, 4]


def test_max_prefix_in_a_batch_tears_the_session_down_after_it() -> None:
    w = established_pair()
    d, peer, batches = daemon_on(w, "max-prefix = 2\nmax-prefix-restart = 0")
    peer.driver.on_data(conn_of(w, 1), b"".join(one_prefix_updates(w, 4)))
    assert batches == [4]
    assert w.b.state is State.IDLE
    assert w.b.last_notification == (E.CEASE, E.CEASE_MAX_PREFIXES)
    # The session went down after the batch, so every route it brought is gone again.
    assert d.loc_rib.count() == 0 and peer.rib_in.accepted_count() == 0
