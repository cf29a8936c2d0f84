"""Two session FSMs wired back to back with a hand-stepped clock: no sockets, no sleeps."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import pytest

from bgpd.speaker import errors as E
from bgpd.speaker.attributes import PathAttributes
from bgpd.speaker.events import (
    CloseConnection,
    ConnectionRejected,
    ConnectRequested,
    RouteRefreshReceived,
    SessionDown,
    SessionEstablished,
    State,
    StateChanged,
    UpdateReceived,
)
from bgpd.speaker.fsm import TRANSITIONS, Input, Session, SessionConfig
from bgpd.speaker.messages import (
    encode_keepalive,
    encode_message,
    encode_notification,
    encode_updates,
)
from bgpd.speaker.types import IPV4_UNICAST, IPV6_UNICAST

RID_A = 0xC6120001  # 198.18.0.1
RID_B = 0xC6120002  # 198.18.0.2


def cfg(local: int, remote: int, rid: int, **kw) -> SessionConfig:
    return SessionConfig(local_asn=local, router_id=rid, remote_asn=remote, **kw)


@dataclass
class Wire:
    """Carries bytes between two sessions and plays the TCP stack for both."""

    a: Session
    b: Session
    now: float = 1000.0
    links: dict[tuple[int, int], tuple[int, int]] = field(default_factory=dict)
    events: dict[int, list] = field(default_factory=lambda: {0: [], 1: []})
    drop: set[int] = field(default_factory=set)  # sides whose output is lost
    refuse: bool = False

    def side(self, i: int) -> Session:
        return self.a if i == 0 else self.b

    def pump(self, rounds: int = 50) -> None:
        for _ in range(rounds):
            moved = False
            for i in (0, 1):
                s, other = self.side(i), self.side(1 - i)
                while (ev := s.next_event()) is not None:
                    moved = True
                    self.events[i].append(ev)
                    if isinstance(ev, ConnectRequested):
                        if self.refuse:
                            s.connection_failed(ev.conn_id, self.now, "refused")
                            continue
                        theirs = other.new_incoming(self.now)
                        if theirs is None:
                            s.connection_failed(ev.conn_id, self.now, "reset")
                            continue
                        self.links[(i, ev.conn_id)] = (1 - i, theirs)
                        self.links[(1 - i, theirs)] = (i, ev.conn_id)
                        s.connection_made(ev.conn_id, self.now)
                    elif isinstance(ev, CloseConnection):
                        self._deliver(i)
                        peer = self.links.pop((i, ev.conn_id), None)
                        if peer is not None:
                            self.links.pop(peer, None)
                            self.side(peer[0]).connection_lost(peer[1], self.now)
                if self._deliver(i):
                    moved = True
            if not moved:
                return

    def _deliver(self, i: int) -> bool:
        s = self.side(i)
        moved = False
        for conn_id, data in s.data_to_send():
            peer = self.links.get((i, conn_id))
            if peer is None or i in self.drop:
                continue
            moved = True
            self.side(peer[0]).receive_data(peer[1], data, self.now)
        return moved

    def advance(self, seconds: float, step: float = 0.5) -> None:
        end = self.now + seconds
        while self.now < end:
            deadlines = [t for t in (self.a.get_timer(), self.b.get_timer()) if t is not None]
            nxt = min([end, self.now + step, *deadlines])
            self.now = max(nxt, self.now)
            for s in (self.a, self.b):
                t = s.get_timer()
                if t is not None and t <= self.now:
                    s.handle_timer(self.now)
            self.pump()

    def of(self, i: int, kind: type) -> list:
        return [e for e in self.events[i] if isinstance(e, kind)]


def pair(ca: SessionConfig, cb: SessionConfig, seed: int = 1) -> Wire:
    w = Wire(Session(ca, random.Random(seed)), Session(cb, random.Random(seed + 1)))
    return w


def established_pair(**kw) -> Wire:
    w = pair(cfg(64512, 64513, RID_A, **kw), cfg(64513, 64512, RID_B, passive=True, **kw))
    w.b.start(w.now)
    w.a.start(w.now)
    w.pump()
    assert w.a.state is State.ESTABLISHED and w.b.state is State.ESTABLISHED
    return w


def test_transition_table_covers_every_state():
    states = {s for s, _ in TRANSITIONS}
    assert states == set(State)
    # Every message input is legal somewhere, and Established accepts the steady-state ones.
    for inp in (Input.KEEPALIVE, Input.UPDATE, Input.ROUTE_REFRESH):
        assert TRANSITIONS[(State.ESTABLISHED, inp)] is State.ESTABLISHED


def test_active_and_passive_reach_established_through_every_state():
    w = established_pair()
    states_a = [e.new for e in w.of(0, StateChanged)]
    assert states_a == [State.CONNECT, State.OPENSENT, State.OPENCONFIRM, State.ESTABLISHED]
    states_b = [e.new for e in w.of(1, StateChanged)]
    assert states_b == [State.ACTIVE, State.OPENSENT, State.OPENCONFIRM, State.ESTABLISHED]
    (est,) = w.of(0, SessionEstablished)
    assert est.negotiated.remote_asn == 64513
    assert est.negotiated.families == frozenset({IPV4_UNICAST})
    assert w.a.established_count == 1


def test_hold_time_is_the_smaller_of_both_offers():
    w = pair(cfg(64512, 64512, RID_A, hold_time=9), cfg(64512, 64512, RID_B, hold_time=30))
    w.a.start(w.now)
    w.b.start(w.now)
    w.pump()
    assert w.a.negotiated.hold_time == 9 and w.b.negotiated.hold_time == 9


def test_keepalives_hold_the_session_for_many_hold_times():
    w = established_pair(hold_time=3)
    w.advance(60)
    assert w.a.state is State.ESTABLISHED and w.b.state is State.ESTABLISHED
    # One keepalive per second per side (hold 3 / 3), give or take the edges.
    assert 55 <= w.a.messages_out["keepalive"] <= 63
    assert not w.of(0, SessionDown) and not w.of(1, SessionDown)


def test_hold_timer_expiry_sends_notification_and_restarts():
    w = established_pair(hold_time=3)
    w.drop.add(1)  # B's keepalives vanish
    w.advance(3.5, step=0.1)
    downs = w.of(0, SessionDown)
    assert downs and downs[0].hold_timer_expired and downs[0].was_established
    assert downs[0].notification == (E.HOLD_TIMER_EXPIRED, 0) and downs[0].sent
    assert w.a.hold_expiries == 1
    # B heard the NOTIFICATION.
    assert w.of(1, SessionDown)[0].notification == (E.HOLD_TIMER_EXPIRED, 0)
    w.drop.clear()
    w.advance(5)
    assert w.a.state is State.ESTABLISHED  # idle-hold elapsed, reconnected


def crossed_connections(rid_a: int, rid_b: int) -> Wire:
    """Both sides connect at once and both TCP connections come up before any OPEN is read."""
    w = pair(cfg(64512, 64512, rid_a), cfg(64512, 64512, rid_b))
    w.a.start(w.now)
    w.b.start(w.now)
    (ra,) = [e.conn_id for e in iter(w.a.next_event, None) if isinstance(e, ConnectRequested)]
    (rb,) = [e.conn_id for e in iter(w.b.next_event, None) if isinstance(e, ConnectRequested)]
    w.a.connection_made(ra, w.now)
    w.b.connection_made(rb, w.now)
    assert w.a.state is State.OPENSENT and w.b.state is State.OPENSENT
    a_in = w.a.new_incoming(w.now)
    b_in = w.b.new_incoming(w.now)
    w.links.update({(0, ra): (1, b_in), (1, b_in): (0, ra), (1, rb): (0, a_in), (0, a_in): (1, rb)})
    w.pump()
    return w


@pytest.mark.parametrize(("rid_a", "rid_b"), [(RID_A, RID_B), (RID_B, RID_A)])
def test_connection_collision_keeps_the_higher_identifiers_connection(rid_a, rid_b):
    w = crossed_connections(rid_a, rid_b)
    assert w.a.state is State.ESTABLISHED and w.b.state is State.ESTABLISHED
    # Exactly one live connection remains: the one opened by the higher BGP Identifier.
    assert len(w.links) == 2
    a_higher = rid_a > rid_b
    assert w.a._primary.outgoing is a_higher
    assert w.b._primary.outgoing is not a_higher
    peer = w.links[(0, w.a._primary.conn_id)]
    assert peer == (1, w.b._primary.conn_id)
    # The losing connection was closed with Cease / Connection Collision Resolution.
    assert w.of(0, ConnectionRejected) or w.of(1, ConnectionRejected)
    assert w.a.established_count == 1 and w.b.established_count == 1


def test_wrong_peer_as_is_refused_with_bad_peer_as():
    w = pair(cfg(64512, 65000, RID_A), cfg(64513, 64512, RID_B, passive=True))
    w.b.start(w.now)
    w.a.start(w.now)
    w.pump()
    assert w.a.state is not State.ESTABLISHED
    down_b = w.of(1, SessionDown)
    assert down_b[0].notification == (E.OPEN_MESSAGE_ERROR, E.BAD_PEER_AS)
    assert not down_b[0].sent
    assert "peer AS 64513" in w.a.last_error


def test_no_common_family_is_unsupported_capability():
    w = pair(
        cfg(64512, 64513, RID_A, families=frozenset({IPV6_UNICAST})),
        cfg(64513, 64512, RID_B, passive=True, families=frozenset({IPV4_UNICAST})),
    )
    w.b.start(w.now)
    w.a.start(w.now)
    w.pump()
    assert w.of(1, SessionDown)[0].notification == (
        E.OPEN_MESSAGE_ERROR,
        E.UNSUPPORTED_CAPABILITY,
    )


def test_same_router_id_on_ibgp_is_bad_identifier():
    w = pair(cfg(64512, 64512, RID_A), cfg(64512, 64512, RID_A, passive=True))
    w.b.start(w.now)
    w.a.start(w.now)
    w.pump()
    assert w.of(1, SessionDown)[0].notification == (E.OPEN_MESSAGE_ERROR, E.BAD_BGP_IDENTIFIER)


def test_unexpected_message_in_openconfirm_is_fsm_error():
    a = Session(cfg(64512, 64513, RID_A), random.Random(1))
    b = Session(cfg(64513, 64512, RID_B, passive=True), random.Random(2))
    a.start(0)
    b.start(0)
    (req,) = [e for e in iter(a.next_event, None) if isinstance(e, ConnectRequested)]
    bid = b.new_incoming(0)
    a.connection_made(req.conn_id, 0)
    [(_, a_open)] = a.data_to_send()
    b.receive_data(bid, a_open, 0)
    [(_, b_bytes)] = b.data_to_send()  # B's OPEN + KEEPALIVE
    assert b.state is State.OPENCONFIRM
    # An UPDATE before the KEEPALIVE that confirms the session.
    attrs = PathAttributes(origin=0, as_path=(), next_hop=RID_A, local_pref=100)
    upd = encode_updates(a.context, IPV4_UNICAST, attrs, [(0x0AF40000, 24, 0)], (RID_A,))
    b.receive_data(bid, upd[0], 0)
    sent = b"".join(d for _, d in b.data_to_send())
    assert sent == encode_notification(E.FSM_ERROR, E.FSM_UNEXPECTED_IN_OPENCONFIRM)
    assert b.state is State.IDLE
    assert b_bytes  # B had answered the OPEN before the error


def test_connect_retry_backs_off_with_jitter():
    s = Session(cfg(64512, 64513, RID_A, connect_retry=2.0), random.Random(7))
    now = 0.0
    s.start(now)
    delays = []
    for _ in range(6):
        reqs = [e for e in iter(s.next_event, None) if isinstance(e, ConnectRequested)]
        assert len(reqs) == 1
        s.connection_failed(reqs[0].conn_id, now, "refused")
        assert s.state is State.ACTIVE
        deadline = s.get_timer()
        delays.append(deadline - now)
        now = deadline
        s.handle_timer(now)
        assert s.state is State.CONNECT
    for i, d in enumerate(delays):
        base = min(2.0 * 2**i, 60.0)
        assert 0.75 * base <= d <= base
    assert delays[-1] > delays[0] * 8


def test_passive_peer_never_connects():
    s = Session(cfg(64512, 64513, RID_A, passive=True), random.Random(1))
    s.start(0)
    assert [e for e in iter(s.next_event, None) if isinstance(e, ConnectRequested)] == []
    assert s.state is State.ACTIVE and s.get_timer() is None


def test_stop_sends_cease_and_refuses_new_connections():
    w = established_pair()
    w.a.stop(w.now)
    w.pump()
    assert w.a.state is State.IDLE
    down_b = w.of(1, SessionDown)
    assert down_b[0].notification == (E.CEASE, E.CEASE_ADMIN_SHUTDOWN)
    assert w.a.new_incoming(w.now) is None
    assert any(isinstance(e, ConnectionRejected) for e in iter(w.a.next_event, None))
    w.advance(10)
    assert w.a.state is State.IDLE  # no automatic restart after a manual stop


def test_updates_and_route_refresh_reach_the_other_side():
    w = established_pair()
    attrs = PathAttributes(origin=0, as_path=((2, (64512,)),), next_hop=RID_A)
    nlri = [(0x0AF40000 + (i << 6), 26, 0) for i in range(1000)]
    msgs = encode_updates(w.a.context, IPV4_UNICAST, attrs, nlri, (RID_A,))
    w.a.send_updates(msgs, w.now)
    assert w.a.send_route_refresh(IPV4_UNICAST, w.now)
    w.pump()
    got = [n for e in w.of(1, UpdateReceived) for n in e.update.announce.get(IPV4_UNICAST, [])]
    assert sorted(got) == sorted(nlri)
    assert w.of(1, RouteRefreshReceived) == [RouteRefreshReceived(IPV4_UNICAST, 0)]
    assert w.b.messages_in["update"] == len(msgs)


def test_garbage_after_established_ends_session_with_header_error():
    w = established_pair()
    conn = w.b._primary.conn_id
    w.b.receive_data(conn, b"\x00" * 19, w.now)
    sent = b"".join(d for _, d in w.b.data_to_send())
    assert sent.startswith(encode_notification(E.MESSAGE_HEADER_ERROR, 1)[:21])
    assert w.b.state is State.IDLE


@pytest.mark.parametrize("chunk", [1, 7, 19, 64])
def test_byte_by_byte_delivery_reassembles_messages(chunk):
    s = Session(cfg(64512, 64513, RID_A, passive=True), random.Random(1))
    s.start(0)
    cid = s.new_incoming(0)
    peer = Session(cfg(64513, 64512, RID_B), random.Random(2))
    data = encode_message(peer.local_open, peer.context) + encode_keepalive()
    for i in range(0, len(data), chunk):
        s.receive_data(cid, data[i : i + chunk], 0)
    assert s.state is State.ESTABLISHED
