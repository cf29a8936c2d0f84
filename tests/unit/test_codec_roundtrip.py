"""Property tests: every message, attribute and capability survives encode -> decode unchanged."""

from __future__ import annotations

import math
from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from bgpd.speaker.attrdecode import decode_attributes
from bgpd.speaker.attributes import (
    ATTRIBUTE_TABLE,
    PathAttributes,
    encode_attributes,
)
from bgpd.speaker.capabilities import (
    CAPABILITY_TABLE,
    AddPath,
    EnhancedRouteRefresh,
    ExtendedMessage,
    ExtendedNextHop,
    FourOctetAS,
    GracefulRestart,
    Hostname,
    Multiprotocol,
    RouteRefresh,
    UnknownCapability,
    decode_capability,
    decode_optional_parameters,
    encode_capability,
    encode_optional_parameters,
)
from bgpd.speaker.context import CodecContext
from bgpd.speaker.messages import (
    Keepalive,
    Notification,
    Open,
    Update,
    decode_message,
    encode_end_of_rib,
    encode_message,
    encode_updates,
    encode_withdrawals,
    split_messages,
)
from bgpd.speaker.messages import (
    RouteRefresh as RouteRefreshMsg,
)
from bgpd.speaker.nlri import decode_prefixes, encode_prefixes
from bgpd.speaker.types import IPV4_UNICAST, IPV6_UNICAST, Family

FAST = settings(max_examples=150, deadline=None)

u8 = st.integers(0, 255)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
families = st.builds(Family, u16, u8)
unicast = st.sampled_from([IPV4_UNICAST, IPV6_UNICAST])


@st.composite
def prefixes(draw, afi: int, addpath: bool = False):
    width = 32 if afi == 1 else 128
    plen = draw(st.integers(0, width))
    addr = draw(st.integers(0, (1 << width) - 1))
    addr &= ((1 << plen) - 1) << (width - plen)
    return (addr, plen, draw(u32) if addpath else 0)


def nlri_lists(afi: int, addpath: bool, max_size: int = 20, min_size: int = 1):
    return st.lists(prefixes(afi, addpath), min_size=min_size, max_size=max_size)


contexts = st.builds(
    CodecContext,
    asn4=st.booleans(),
    addpath_rx=st.frozensets(unicast),
    extended_message=st.just(True),
)


@given(st.sampled_from([1, 2]), st.booleans(), st.data())
@FAST
def test_prefixes_roundtrip(afi, addpath, data):
    nlri = data.draw(nlri_lists(afi, addpath, max_size=50, min_size=0))
    assert decode_prefixes(encode_prefixes(nlri, afi, addpath), afi, addpath) == nlri


# --- attributes ---------------------------------------------------------------------------------

asn = st.integers(1, 0xFFFFFFFF)
nonmartian = (
    st.integers(1, 223)
    .filter(lambda o: o != 127)
    .map(lambda o: o << 24)
    .flatmap(lambda hi: st.integers(hi, hi + 0xFFFFFF))
)
unknown_types = sorted(set(range(19, 255)) - set(ATTRIBUTE_TABLE))


@st.composite
def as_paths(draw, asn4: bool):
    segs = []
    # Confederation segments only lead the path (RFC 5065), and a 2-octet peer cannot carry
    # 4-octet confederation members at all, so bound those to 16 bits there.
    for _ in range(draw(st.integers(0, 2))):
        member = asn if asn4 else st.integers(1, 0xFFFF)
        segs.append(
            (draw(st.sampled_from([3, 4])), tuple(draw(st.lists(member, min_size=1, max_size=5))))
        )
    for _ in range(draw(st.integers(0, 4))):
        segs.append(
            (draw(st.sampled_from([1, 2])), tuple(draw(st.lists(asn, min_size=1, max_size=12))))
        )
    return tuple(segs)


@st.composite
def path_attributes(draw, asn4: bool = True, with_next_hop: bool = True):
    aggr_asn = asn if asn4 else st.integers(0x10000, 0xFFFFFFFF)
    utypes = draw(st.lists(st.sampled_from(unknown_types), unique=True, max_size=3))
    return PathAttributes(
        origin=draw(st.integers(0, 2)),
        as_path=draw(as_paths(asn4)),
        next_hop=draw(nonmartian) if with_next_hop else None,
        med=draw(st.none() | u32),
        local_pref=draw(st.none() | u32),
        atomic_aggregate=draw(st.booleans()),
        aggregator=draw(st.none() | st.tuples(aggr_asn, u32)),
        communities=tuple(draw(st.lists(u32, max_size=80))),
        originator_id=draw(st.none() | u32),
        cluster_list=tuple(draw(st.lists(u32, max_size=5))),
        ext_communities=tuple(draw(st.lists(st.binary(min_size=8, max_size=8), max_size=4))),
        large_communities=tuple(draw(st.lists(st.tuples(u32, u32, u32), max_size=4))),
        unknown=tuple((0xE0, t, draw(st.binary(min_size=0, max_size=300))) for t in sorted(utypes)),
    )


@given(st.booleans(), st.data())
@FAST
def test_attributes_roundtrip(asn4, data):
    ctx = CodecContext(asn4=asn4)
    attrs = data.draw(path_attributes(asn4))
    block = decode_attributes(encode_attributes(attrs, ctx), ctx, ipv4_nlri=True)
    assert block.action == "none", block.diagnostics
    assert block.attrs == attrs


def test_attribute_table_rows_are_complete():
    # One row per attribute we interpret; no decoder table is filled anywhere else.
    assert set(ATTRIBUTE_TABLE) == {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 14, 15, 16, 17, 18, 32}
    for code, spec in ATTRIBUTE_TABLE.items():
        assert spec.action in ("treat-as-withdraw", "attribute-discard", "session-reset"), code
        assert spec.flags in (0x40, 0x80, 0xC0), code


def test_as_path_helpers():
    attrs = PathAttributes(as_path=((3, (65010,)), (2, (65001, 65002)), (1, (7, 8, 9))))
    assert attrs.as_path_length() == 3
    assert attrs.first_asn() == 65001
    assert attrs.asns() == (65010, 65001, 65002, 7, 8, 9)
    assert PathAttributes(as_path=((1, (5, 6)),)).first_asn() is None
    assert PathAttributes().as_path_length() == 0


# --- capabilities and OPEN ----------------------------------------------------------------------

capabilities = st.one_of(
    st.builds(Multiprotocol, families),
    st.just(RouteRefresh()),
    st.just(EnhancedRouteRefresh()),
    st.just(ExtendedMessage()),
    st.builds(
        GracefulRestart,
        st.integers(0, 4095),
        st.booleans(),
        st.booleans(),
        st.lists(st.tuples(families, st.booleans()), max_size=4).map(tuple),
    ),
    st.builds(AddPath, st.lists(st.tuples(families, st.integers(1, 3)), max_size=4).map(tuple)),
    st.builds(
        ExtendedNextHop,
        st.lists(st.tuples(st.builds(Family, u16, u16), u16), max_size=4).map(tuple),
    ),
    st.builds(
        Hostname, st.text("abcdefghij-0123456789.", max_size=60), st.text("abc.", max_size=30)
    ),
    st.builds(
        UnknownCapability,
        u8.filter(lambda c: c not in CAPABILITY_TABLE),
        st.binary(max_size=40),
    ),
)


@given(st.lists(capabilities, max_size=12))
@FAST
def test_optional_parameters_roundtrip(caps):
    assert decode_optional_parameters(encode_optional_parameters(caps)) == tuple(caps)


SAMPLE_CAPABILITIES = {
    1: Multiprotocol(IPV6_UNICAST),
    2: RouteRefresh(),
    5: ExtendedNextHop(((IPV4_UNICAST, 2),)),
    6: ExtendedMessage(),
    64: GracefulRestart(120, families=((IPV4_UNICAST, True),)),
    65: FourOctetAS(4200000000),
    69: AddPath(((IPV4_UNICAST, 3),)),
    70: EnhancedRouteRefresh(),
    73: Hostname("node-1", "example.org"),
}


def test_capability_table_has_every_supported_code():
    # Every code we claim to support has a row, and each row decodes what it encodes.
    assert set(CAPABILITY_TABLE) == set(SAMPLE_CAPABILITIES)
    for code, cap in SAMPLE_CAPABILITIES.items():
        wire = encode_capability(cap)
        assert wire[0] == code
        assert decode_capability(code, wire[2:]) == cap
        assert CAPABILITY_TABLE[code].cls is type(cap)
    assert decode_capability(71, b"\x01") == UnknownCapability(71, b"\x01")


def test_extended_optional_parameters_used_when_needed():
    caps = tuple(Hostname("h" * 200, "d" * 50) for _ in range(2))
    wire = encode_optional_parameters(caps)
    assert wire[:2] == b"\xff\xff"  # RFC 9072 marker
    assert decode_optional_parameters(wire) == caps


@st.composite
def opens(draw):
    caps = draw(st.lists(capabilities, max_size=8))
    my_asn = draw(asn)
    if my_asn > 0xFFFF or draw(st.booleans()):
        caps.append(FourOctetAS(my_asn))
    hold = draw(st.just(0) | st.integers(3, 0xFFFF))
    return Open(my_asn, hold, draw(st.integers(1, 0xFFFFFFFF)), tuple(caps))


def _wire_roundtrip(msg, ctx):
    buf = bytearray(encode_message(msg, ctx))
    frames = split_messages(buf, ctx)
    assert not buf and len(frames) == 1
    return decode_message(*frames[0], ctx)


@given(opens())
@FAST
def test_open_roundtrip(msg):
    assert _wire_roundtrip(msg, CodecContext()) == msg


@given(u8, u8, st.binary(max_size=60))
@FAST
def test_notification_roundtrip(code, subcode, data):
    msg = Notification(code, subcode, data)
    assert _wire_roundtrip(msg, CodecContext()) == msg


@given(families, st.integers(0, 2))
@FAST
def test_route_refresh_roundtrip(fam, subtype):
    msg = RouteRefreshMsg(fam, subtype)
    assert _wire_roundtrip(msg, CodecContext()) == msg


def test_keepalive_roundtrip():
    assert _wire_roundtrip(Keepalive(), CodecContext()) == Keepalive()


# --- UPDATE -------------------------------------------------------------------------------------


@st.composite
def updates(draw, ctx: CodecContext):
    v4_ap = IPV4_UNICAST in ctx.addpath_rx
    v6_ap = IPV6_UNICAST in ctx.addpath_rx
    upd = Update()
    kind = draw(st.sampled_from(["v4", "v6", "withdraw-only", "mixed"]))
    if kind in ("v4", "mixed"):
        upd.attrs = draw(path_attributes(ctx.asn4, with_next_hop=True))
        upd.announce[IPV4_UNICAST] = draw(nlri_lists(1, v4_ap))
        upd.next_hop[IPV4_UNICAST] = (upd.attrs.next_hop,)
    if kind in ("v6", "mixed"):
        if upd.attrs is None:
            upd.attrs = draw(path_attributes(ctx.asn4, with_next_hop=False))
        upd.announce[IPV6_UNICAST] = draw(nlri_lists(2, v6_ap))
        upd.next_hop[IPV6_UNICAST] = tuple(
            draw(st.lists(st.integers(1, (1 << 128) - 1), min_size=1, max_size=2))
        )
    if kind in ("withdraw-only", "mixed") or draw(st.booleans()):
        upd.withdraw[IPV4_UNICAST] = draw(nlri_lists(1, v4_ap))
    if kind == "withdraw-only" or draw(st.booleans()):
        upd.withdraw[IPV6_UNICAST] = draw(nlri_lists(2, v6_ap))
    return upd


@given(contexts.flatmap(lambda c: st.tuples(st.just(c), updates(c))))
@FAST
def test_update_roundtrip(pair):
    ctx, upd = pair
    # The receiver's rx view is the sender's tx view.
    tx = CodecContext(
        asn4=ctx.asn4, addpath_tx=ctx.addpath_rx, extended_message=ctx.extended_message
    )
    wire = encode_message(upd, tx)
    buf = bytearray(wire)
    (frame,) = split_messages(buf, ctx)
    got = decode_message(*frame, ctx)
    assert got == upd, got.diagnostics


@given(unicast)
def test_end_of_rib_roundtrip(fam):
    wire = encode_end_of_rib(fam)
    got = decode_message(wire[18], wire[19:], CodecContext())
    assert got.end_of_rib() == fam


def test_ordinary_update_is_not_end_of_rib():
    upd = Update(withdraw={IPV6_UNICAST: [(0, 0, 0)]})
    assert upd.end_of_rib() is None
    assert Update(attrs=PathAttributes(origin=0)).end_of_rib() is None


# --- packed fast path ---------------------------------------------------------------------------


@given(
    unicast,
    st.booleans(),
    st.booleans(),
    st.data(),
)
@settings(max_examples=40, deadline=None)
def test_packed_updates_roundtrip(fam, addpath, extended, data):
    afi = fam.afi
    nlri = data.draw(nlri_lists(afi, addpath, max_size=3000))
    attrs = data.draw(path_attributes(True, with_next_hop=False))
    nh = (data.draw(nonmartian),) if afi == 1 else (0xFD00 << 112 | 1, 0xFE80 << 112 | 1)
    tx = CodecContext(
        addpath_tx=frozenset({fam}) if addpath else frozenset(), extended_message=extended
    )
    rx = CodecContext(addpath_rx=tx.addpath_tx, extended_message=extended)
    wires = encode_updates(tx, fam, attrs, nlri, nh)
    got = []
    for wire in wires:
        assert len(wire) <= tx.max_message_len
        buf = bytearray(wire)
        ((mtype, body),) = split_messages(buf, rx)
        upd = decode_message(mtype, body, rx)
        assert not upd.treat_as_withdraw
        assert upd.next_hop[fam] == nh
        expect_attrs = attrs if afi == 2 else replace(attrs, next_hop=nh[0])
        assert upd.attrs == expect_attrs
        got.extend(upd.announce[fam])
    assert got == nlri
    # Packed: no more messages than the bytes need, plus one for the partial last one.
    per = (1 + 16 + (4 if addpath else 0)) if afi == 2 else (1 + 4 + (4 if addpath else 0))
    total = sum(1 + (p[1] + 7) // 8 + (4 if addpath else 0) for p in nlri)
    room = tx.max_message_len - 19 - 4 - len(encode_attributes(attrs, tx)) - 64
    assert len(wires) <= math.ceil(total / (room - per)) + 1


@given(unicast, st.data())
@settings(max_examples=30, deadline=None)
def test_packed_withdrawals_roundtrip(fam, data):
    nlri = data.draw(nlri_lists(fam.afi, False, max_size=3000))
    ctx = CodecContext()
    got = []
    for wire in encode_withdrawals(ctx, fam, nlri):
        assert len(wire) <= 4096
        upd = decode_message(wire[18], wire[19:], ctx)
        assert upd.announce == {} and upd.attrs is None
        got.extend(upd.withdraw[fam])
    assert got == nlri


def test_packed_update_fills_messages():
    nlri = [(i << 8, 24, 0) for i in range(5000)]
    wires = encode_updates(
        CodecContext(), IPV4_UNICAST, PathAttributes(origin=0), nlri, (0x0A000001,)
    )
    # 4 bytes per /24, roughly 4050 bytes of room per message -> 5 messages, all but one full
    assert len(wires) == 5
    assert all(len(w) > 4090 for w in wires[:-1])
