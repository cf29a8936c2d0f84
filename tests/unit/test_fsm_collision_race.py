"""Two session FSMs over a simulated network that reorders across connections (§6.8 races).

Per connection and direction, bytes arrive in order; across connections and directions the
order is drawn from a seed, so OPENs, NOTIFICATIONs and SYNs of the two crossed connections
interleave the way they do when both speakers start at once on a loaded host.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import pytest

from bgpd.speaker import errors as E
from bgpd.speaker.events import (
    CloseConnection,
    ConnectRequested,
    SessionDown,
    SessionEstablished,
    State,
)
from bgpd.speaker.fsm import Session, SessionConfig, build_open
from bgpd.speaker.messages import encode_keepalive, encode_message, encode_notification

RID_LOW = 0xC6120001  # 198.18.0.1
RID_HIGH = 0xC6120002  # 198.18.0.2


@dataclass
class Net:
    """A TCP stack for two sessions: SYN, data and FIN are queued and delivered in drawn order."""

    sides: tuple[Session, Session]
    rng: random.Random
    now: float = 1000.0
    # (side, conn_id) -> (other side, other conn_id), once both ends exist.
    links: dict[tuple[int, int], tuple[int, int]] = field(default_factory=dict)
    # Each channel is FIFO; the scheduler picks which channel moves next.
    channels: dict[tuple[int, int], list[tuple[str, object]]] = field(default_factory=dict)
    established: list[int] = field(default_factory=lambda: [0, 0])
    downs: list[int] = field(default_factory=lambda: [0, 0])
    both_up_at: float | None = None
    # Attempts closed by their initiator before the far end accepted them.
    abandoned: set[tuple[int, int]] = field(default_factory=set)

    def _queue(self, key: tuple[int, int], item: tuple[str, object]) -> None:
        self.channels.setdefault(key, []).append(item)

    def _drain_outputs(self) -> None:
        for i, s in enumerate(self.sides):
            while (ev := s.next_event()) is not None:
                if isinstance(ev, SessionEstablished):
                    self.established[i] += 1
                    if self.both_up_at is None and all(
                        x.state is State.ESTABLISHED for x in self.sides
                    ):
                        self.both_up_at = self.now
                elif isinstance(ev, SessionDown):
                    self.downs[i] += 1
                elif isinstance(ev, ConnectRequested):
                    # The SYN travels; the far side accepts when it arrives.
                    self._queue((1 - i, -ev.conn_id), ("syn", (i, ev.conn_id)))
                elif isinstance(ev, CloseConnection):
                    self._flush(i)
                    peer = self.links.pop((i, ev.conn_id), None)
                    if peer is not None:
                        self.links.pop(peer, None)
                        self._queue(peer, ("fin", None))
                    else:
                        self.abandoned.add((i, ev.conn_id))
            self._flush(i)

    def _flush(self, i: int) -> None:
        for conn_id, data in self.sides[i].data_to_send():
            peer = self.links.get((i, conn_id))
            if peer is not None:
                self._queue(peer, ("data", data))

    def _deliver_one(self) -> bool:
        ready = [k for k, q in self.channels.items() if q]
        if not ready:
            return False
        key = self.rng.choice(ready)
        kind, payload = self.channels[key].pop(0)
        side, conn = key
        s = self.sides[side]
        if kind == "syn":
            src_side, src_conn = payload
            mine = s.new_incoming(self.now)
            if mine is None:
                self.sides[src_side].connection_failed(src_conn, self.now, "reset")
                return True
            if (src_side, src_conn) in self.abandoned:
                # The initiator gave up while its SYN travelled: accepted, then reset.
                self._queue((side, mine), ("fin", None))
                return True
            self.links[(side, mine)] = (src_side, src_conn)
            self.links[(src_side, src_conn)] = (side, mine)
            # The SYN-ACK shares the channel of the data that follows it, as in TCP: the
            # initiator's connect completes before any byte of the peer reaches it.
            self._queue((src_side, src_conn), ("synack", src_conn))
        elif kind == "synack":
            s.connection_made(payload, self.now)
        elif kind == "data":
            s.receive_data(conn, payload, self.now)
        else:
            s.connection_lost(conn, self.now, "peer closed")
        return True

    def run(self, seconds: float, step: float = 0.05) -> None:
        end = self.now + seconds
        while self.now < end:
            for _ in range(10_000):
                self._drain_outputs()
                if not self._deliver_one():
                    break
                # Time passes between deliveries, so timers can fire mid-handshake.
                self.now += self.rng.choice((0.0, 0.0, 0.001))
            self.now += step
            for s in self.sides:
                t = s.get_timer()
                if t is not None and t <= self.now:
                    s.handle_timer(self.now)


def _cfg(rid: int) -> SessionConfig:
    return SessionConfig(
        local_asn=64512,
        router_id=rid,
        remote_asn=64512,
        connect_retry=1,
        idle_hold=1,
    )


def _race(seed: int) -> Net:
    rng = random.Random(seed)
    low = Session(_cfg(RID_LOW), random.Random(seed))
    high = Session(_cfg(RID_HIGH), random.Random(seed + 1000))
    net = Net((low, high), rng)
    low.start(net.now)
    high.start(net.now)
    net.run(30.0)
    return net


SEEDS = range(400)


@pytest.mark.parametrize("seed", SEEDS)
def test_simultaneous_open_settles_on_one_connection_whatever_the_interleaving(seed):
    net = _race(seed)
    low, high = net.sides
    assert low.state is State.ESTABLISHED, (low.last_error, high.last_error)
    assert high.state is State.ESTABLISHED, (low.last_error, high.last_error)
    # One connection carries the session, and both ends agree which one.
    assert net.links[(0, low._primary.conn_id)] == (1, high._primary.conn_id)
    # §6.8 lets one end be Established on the connection the other end has just ruled out;
    # that race may cost one reset, never a second (a livelock showed up as seven).
    assert sum(net.established) <= 3, net.established
    assert net.both_up_at is not None and net.both_up_at - 1000.0 < 5.0


def test_crossed_connections_rarely_cost_a_reset():
    # Before the fix, closing our in-flight attempt when the peer's connection arrived, and
    # leaving a candidate behind when the primary was Ceased, cost a reset in half of these
    # interleavings; now only the race §6.8 cannot avoid remains.
    clean = sum(1 for seed in SEEDS if sum(_race(seed).downs) == 0)
    assert clean >= 0.95 * len(SEEDS), clean


def _peer_open(rid: int) -> bytes:
    return encode_message(build_open(_cfg(rid)))


def _drain(s: Session) -> list:
    return list(iter(s.next_event, None))


def _two_connections() -> tuple[Session, int, int]:
    """The low side, OpenSent on its own connection, with the peer's connection as candidate."""
    low = Session(_cfg(RID_LOW), random.Random(1))
    low.start(0.0)
    (req,) = [e.conn_id for e in _drain(low) if isinstance(e, ConnectRequested)]
    low.connection_made(req, 0.0)
    theirs = low.new_incoming(0.0)
    assert theirs is not None and low.state is State.OPENSENT
    sent = dict(low.data_to_send())
    assert sent[req][18] == 1 and sent[theirs][18] == 1  # our OPEN on both
    _drain(low)
    return low, req, theirs


def test_a_cease_on_the_primary_hands_the_session_to_the_candidate():
    low, ours, theirs = _two_connections()
    low.receive_data(ours, encode_notification(E.CEASE, E.CEASE_COLLISION_RESOLUTION), 0.1)
    events = _drain(low)
    # The handshake carries on over the peer's connection: no session loss is reported.
    assert not [e for e in events if isinstance(e, SessionDown)]
    assert CloseConnection(ours) in events
    assert low.state is State.OPENSENT and low.last_error.startswith("received Cease")
    low.receive_data(theirs, _peer_open(RID_HIGH) + encode_keepalive(), 0.2)
    assert low.state is State.ESTABLISHED
    assert [e for e in _drain(low) if isinstance(e, SessionEstablished)]


def test_the_candidates_open_decides_by_identifier_and_keeps_the_higher_ones_connection():
    low, ours, theirs = _two_connections()
    low.receive_data(theirs, _peer_open(RID_HIGH), 0.1)
    events = _drain(low)
    # The peer has the higher identifier: its connection stays, ours ends with Cease 6/7.
    assert CloseConnection(ours) in events
    out = dict(low.data_to_send())
    assert out[ours][18] == 3 and out[ours][19:21] == bytes([6, 7])
    assert low.state is State.OPENCONFIRM and low._primary.conn_id == theirs


def test_an_incoming_connection_does_not_abort_our_attempt_in_flight():
    low = Session(_cfg(RID_LOW), random.Random(1))
    low.start(0.0)
    (req,) = [e.conn_id for e in _drain(low) if isinstance(e, ConnectRequested)]
    theirs = low.new_incoming(0.0)
    # Crossed SYNs: the far end may already have accepted our attempt as its primary.
    assert CloseConnection(req) not in _drain(low)
    low.connection_made(req, 0.1)
    assert CloseConnection(req) not in _drain(low)
    assert low._candidate is not None and low._candidate.conn_id == req
    assert low._primary.conn_id == theirs


def test_a_cease_with_our_attempt_in_flight_waits_for_it_in_connect():
    low = Session(_cfg(RID_LOW), random.Random(1))
    low.start(0.0)
    (req,) = [e.conn_id for e in _drain(low) if isinstance(e, ConnectRequested)]
    theirs = low.new_incoming(0.0)
    _drain(low)
    low.receive_data(theirs, encode_notification(E.CEASE, E.CEASE_COLLISION_RESOLUTION), 0.1)
    assert low.state is State.CONNECT
    assert CloseConnection(req) not in _drain(low)
    low.connection_made(req, 0.2)
    assert low.state is State.OPENSENT and low._primary.conn_id == req
