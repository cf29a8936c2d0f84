"""Fuzzing the session FSM: whatever bytes a peer sends, in whatever pieces, the FSM answers
with events and at most a NOTIFICATION; it never raises and never leaves a broken state."""

from __future__ import annotations

import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bgpd.speaker.events import State
from bgpd.speaker.fsm import Session, SessionConfig
from bgpd.speaker.messages import encode_keepalive, encode_message
from bgpd.speaker.types import IPV4_UNICAST, IPV6_UNICAST, MARKER
from tests.malformed_cases import CASES

BOTH = frozenset({IPV4_UNICAST, IPV6_UNICAST})
LOCAL = SessionConfig(
    local_asn=64512, router_id=0xC6120001, remote_asn=64513, passive=True, families=BOTH
)
REMOTE = SessionConfig(local_asn=64513, router_id=0xC6120002, remote_asn=64512, families=BOTH)
PEER_OPEN = encode_message(Session(REMOTE).local_open)
SEEDS = [c.raw for c in CASES] + [PEER_OPEN, encode_keepalive()]


def fresh(established: bool) -> tuple[Session, int]:
    s = Session(LOCAL, random.Random(0))
    s.start(0.0)
    conn = s.new_incoming(0.0)
    assert conn is not None
    if established:
        s.receive_data(conn, PEER_OPEN + encode_keepalive(), 0.0)
        assert s.state is State.ESTABLISHED
    s.data_to_send()
    while s.next_event() is not None:
        pass
    return s, conn


def mutate(data: bytes, rnd: random.Random) -> bytes:
    buf = bytearray(data)
    for _ in range(rnd.randint(1, 4)):
        op = rnd.randrange(4)
        if op == 0 and buf:
            buf[rnd.randrange(len(buf))] ^= 1 << rnd.randrange(8)
        elif op == 1 and len(buf) > 19:
            del buf[rnd.randrange(19, len(buf)) :]
        elif op == 2 and len(buf) >= 18:
            # Length field edits reach the framing and per-type length checks.
            buf[16:18] = rnd.randrange(0, 70000).to_bytes(3, "big")[-2:]
        else:
            buf += rnd.randbytes(rnd.randrange(1, 16))
    return bytes(buf)


def drive(s: Session, conn: int, stream: bytes, cuts: list[int]) -> None:
    pos, now = 0, 1.0
    for cut in [*sorted({c % (len(stream) + 1) for c in cuts}), len(stream)]:
        s.receive_data(conn, stream[pos:cut], now)
        pos = cut
        now += 0.1
    while s.next_event() is not None:
        pass
    out = b"".join(d for _, d in s.data_to_send())
    # Anything we answered is whole BGP messages.
    i = 0
    while i < len(out):
        assert out[i : i + 16] == MARKER
        i += int.from_bytes(out[i + 16 : i + 18], "big")
    assert i == len(out)
    if s.state is State.IDLE:
        assert s.last_error


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    established=st.booleans(),
    seeds=st.lists(st.sampled_from(SEEDS), min_size=1, max_size=4),
    seed=st.integers(0, 2**32 - 1),
    cuts=st.lists(st.integers(0, 10_000), max_size=6),
)
def test_mutated_messages_never_raise(established, seeds, seed, cuts):
    rnd = random.Random(seed)
    s, conn = fresh(established)
    stream = b"".join(mutate(m, rnd) if rnd.random() < 0.7 else m for m in seeds)
    drive(s, conn, stream, cuts)


@settings(max_examples=300, deadline=None)
@given(established=st.booleans(), junk=st.binary(max_size=600), cuts=st.lists(st.integers()))
def test_random_bytes_never_raise(established, junk, cuts):
    s, conn = fresh(established)
    drive(s, conn, MARKER + junk if len(junk) % 2 else junk, cuts)
