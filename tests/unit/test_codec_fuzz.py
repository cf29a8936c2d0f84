"""Fuzzing the decoder: random and mutated bytes may only ever raise NotificationError."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bgpd.speaker.attrdecode import AttrCache
from bgpd.speaker.attributes import PathAttributes
from bgpd.speaker.capabilities import AddPath, FourOctetAS, GracefulRestart, Hostname, Multiprotocol
from bgpd.speaker.context import CodecContext
from bgpd.speaker.errors import NotificationError
from bgpd.speaker.messages import (
    Notification,
    Open,
    RouteRefresh,
    decode_message,
    encode_end_of_rib,
    encode_keepalive,
    encode_message,
    encode_updates,
    encode_withdrawals,
    split_messages,
)
from bgpd.speaker.types import IPV4_UNICAST, IPV6_UNICAST
from tests.malformed_cases import CASES

BOTH = frozenset({IPV4_UNICAST, IPV6_UNICAST})
CONTEXTS = [
    CodecContext(),
    CodecContext(asn4=False),
    CodecContext(addpath_rx=BOTH, addpath_tx=BOTH),
    CodecContext(extended_message=True, extended_nexthop=frozenset({IPV4_UNICAST})),
]
ATTRS = PathAttributes(
    origin=0,
    as_path=((2, (65001, 4200000000)), (1, (1, 2))),
    med=10,
    local_pref=100,
    aggregator=(4200000001, 0x0A000001),
    communities=(0xFFFF0001,),
    ext_communities=(b"\x00\x02\xfd\xe9\x00\x00\x00\x01",),
    large_communities=((1, 2, 3),),
    unknown=((0xE0, 99, b"abc"),),
)


def _seeds() -> list[bytes]:
    seeds = [c.raw for c in CASES]
    for ctx in CONTEXTS:
        tx = CodecContext(asn4=ctx.asn4, addpath_tx=ctx.addpath_rx)
        seeds += encode_updates(
            tx,
            IPV4_UNICAST,
            ATTRS,
            [(0x0A000000 + i * 256, 24, i) for i in range(5)],
            (0x0A000001,),
        )
        seeds += encode_updates(
            tx, IPV6_UNICAST, ATTRS, [(0xFD << 120 | i << 64, 64, i) for i in range(5)], (1, 2)
        )
        seeds += encode_withdrawals(tx, IPV6_UNICAST, [(0xFD << 120, 8, 1)])
    seeds.append(
        encode_message(
            Open(
                4200000000,
                90,
                1,
                (
                    Multiprotocol(IPV4_UNICAST),
                    FourOctetAS(4200000000),
                    AddPath(((IPV4_UNICAST, 3),)),
                    GracefulRestart(120, False, True, ((IPV4_UNICAST, True),)),
                    Hostname("h", "d"),
                ),
            )
        )
    )
    seeds += [
        encode_keepalive(),
        encode_end_of_rib(IPV6_UNICAST),
        encode_message(Notification(6, 2, b"\x05hello")),
        encode_message(RouteRefresh(IPV4_UNICAST, 1)),
    ]
    return seeds


SEEDS = _seeds()
_ADDPATH_SEEDS = set(
    encode_updates(
        CodecContext(addpath_tx=BOTH),
        IPV4_UNICAST,
        ATTRS,
        [(0x0A000000 + i * 256, 24, i) for i in range(5)],
        (0x0A000001,),
    )
    + encode_updates(
        CodecContext(addpath_tx=BOTH),
        IPV6_UNICAST,
        ATTRS,
        [(0xFD << 120 | i << 64, 64, i) for i in range(5)],
        (1, 2),
    )
    + encode_withdrawals(CodecContext(addpath_tx=BOTH), IPV6_UNICAST, [(0xFD << 120, 8, 1)])
)


def _feed(raw: bytes) -> None:
    for ctx in CONTEXTS:
        cache = AttrCache()
        try:
            for mtype, body in split_messages(bytearray(raw), ctx):
                decode_message(mtype, body, ctx, cache)
                decode_message(mtype, body, ctx, cache)  # second pass hits the cache
        except NotificationError:
            pass
        # decode_message must also be safe on bodies that never went through framing
        for mtype in (1, 2, 3, 4, 5):
            try:
                decode_message(mtype, raw[19:], ctx)
            except NotificationError:
                pass


@st.composite
def mutated(draw) -> bytes:
    raw = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "byte", "truncate", "length", "insert", "delete"]))
        if not raw:
            break
        pos = draw(st.integers(0, len(raw) - 1))
        if op == "flip":
            raw[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "byte":
            raw[pos] = draw(st.integers(0, 255))
        elif op == "truncate":
            del raw[pos:]
        elif op == "length" and len(raw) > pos + 1:
            # length fields are 1 or 2 octets wherever they sit; write either at random
            raw[pos : pos + 2] = draw(st.integers(0, 0xFFFF)).to_bytes(2, "big")
        elif op == "insert":
            raw[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        else:
            del raw[pos : pos + draw(st.integers(1, 8))]
    # keep the header's length honest half the time so the body decoders get exercised
    if len(raw) >= 19 and draw(st.booleans()):
        raw[16:18] = min(len(raw), 0xFFFF).to_bytes(2, "big")
    return bytes(raw)


def test_generated_seeds_are_valid_messages():
    # Mutating garbage proves little; the generated seeds must decode cleanly in the default
    # context (add-path seeds carry path ids and still parse, as longer prefixes or errors).
    ctx = CodecContext(extended_message=True)
    for raw in SEEDS[len(CASES) :]:
        if raw[18] == 2 and raw in _ADDPATH_SEEDS:
            continue
        frames = split_messages(bytearray(raw), ctx)
        assert len(frames) == 1
        decode_message(*frames[0], ctx)


@given(mutated())
@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_mutated_messages_only_raise_notification_error(raw):
    _feed(raw)


@given(st.binary(max_size=200))
@settings(max_examples=500, deadline=None)
def test_random_bytes_only_raise_notification_error(raw):
    _feed(raw)
    _feed(b"\xff" * 16 + raw)


@given(st.integers(1, 5), st.binary(max_size=120))
@settings(max_examples=800, deadline=None)
def test_random_bodies_with_valid_header(mtype, body):
    _feed(b"\xff" * 16 + (19 + len(body)).to_bytes(2, "big") + bytes((mtype,)) + body)
