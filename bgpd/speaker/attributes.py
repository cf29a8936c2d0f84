"""UPDATE path attributes: PathAttributes, the attribute registry with its value codecs, the
encoder, and RFC 6793 AS4 path merging. Decoding a whole attribute field is attrdecode.py."""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

from bgpd.speaker.context import CodecContext
from bgpd.speaker.errors import (
    ATTRIBUTE_LENGTH_ERROR,
    INVALID_NEXT_HOP_ATTRIBUTE,
    INVALID_ORIGIN_ATTRIBUTE,
    MALFORMED_AS_PATH,
    OPTIONAL_ATTRIBUTE_ERROR,
)
from bgpd.speaker.nlri import decode_prefixes
from bgpd.speaker.types import AFI_IPV4, AFI_IPV6, NLRI, Family

# Attribute type codes (IANA "BGP Path Attributes").
ATTR_ORIGIN = 1
ATTR_AS_PATH = 2
ATTR_NEXT_HOP = 3
ATTR_MED = 4
ATTR_LOCAL_PREF = 5
ATTR_ATOMIC_AGGREGATE = 6
ATTR_AGGREGATOR = 7
ATTR_COMMUNITIES = 8
ATTR_ORIGINATOR_ID = 9
ATTR_CLUSTER_LIST = 10
ATTR_MP_REACH_NLRI = 14
ATTR_MP_UNREACH_NLRI = 15
ATTR_EXT_COMMUNITIES = 16
ATTR_AS4_PATH = 17
ATTR_AS4_AGGREGATOR = 18
ATTR_LARGE_COMMUNITIES = 32

FLAG_OPTIONAL = 0x80
FLAG_TRANSITIVE = 0x40
FLAG_PARTIAL = 0x20
FLAG_EXTENDED_LENGTH = 0x10
WELL_KNOWN = FLAG_TRANSITIVE
OPTIONAL_TRANSITIVE = FLAG_OPTIONAL | FLAG_TRANSITIVE
OPTIONAL_NON_TRANSITIVE = FLAG_OPTIONAL

ORIGIN_IGP = 0
ORIGIN_EGP = 1
ORIGIN_INCOMPLETE = 2

AS_SET = 1
AS_SEQUENCE = 2
AS_CONFED_SEQUENCE = 3
AS_CONFED_SET = 4
AS_TRANS = 23456

# RFC 7606 approaches, weakest first (attrdecode.py picks the strongest when several apply).
ACTION_NONE = "none"
ACTION_DISCARD = "attribute-discard"
ACTION_WITHDRAW = "treat-as-withdraw"
ACTION_RESET = "session-reset"

AsPath = tuple[tuple[int, tuple[int, ...]], ...]


@dataclass(frozen=True, slots=True)
class PathAttributes:
    """The non-MP attributes of a route, hashable so equal sets can be shared and compared.

    ASNs are always 4-octet in memory; next_hop is the IPv4 NEXT_HOP as an int. `unknown` holds
    optional transitive attributes we pass through as (flags, type, value).
    """

    origin: int | None = None
    as_path: AsPath = ()
    next_hop: int | None = None
    med: int | None = None
    local_pref: int | None = None
    atomic_aggregate: bool = False
    aggregator: tuple[int, int] | None = None
    communities: tuple[int, ...] = ()
    originator_id: int | None = None
    cluster_list: tuple[int, ...] = ()
    ext_communities: tuple[bytes, ...] = ()
    large_communities: tuple[tuple[int, int, int], ...] = ()
    unknown: tuple[tuple[int, int, bytes], ...] = ()
    # asns() computed once per object (and handed on to the MED variants the decoder makes);
    # not part of equality, hash or repr.
    _asns: tuple[int, ...] | None = field(
        default=None, init=False, repr=False, compare=False, hash=False
    )

    def as_path_length(self) -> int:
        """RFC 4271 §9.1.2.2 a: an AS_SET counts 1, confederation segments count 0."""
        return _path_count(self.as_path)

    def first_asn(self) -> int | None:
        """Leftmost ASN of the first non-confederation segment, None if that is an AS_SET."""
        for seg_type, asns in self.as_path:
            if seg_type in (AS_CONFED_SEQUENCE, AS_CONFED_SET):
                continue
            return asns[0] if seg_type == AS_SEQUENCE and asns else None
        return None

    def asns(self) -> tuple[int, ...]:
        """Every ASN on the path in order, for loop detection."""
        got = self._asns
        if got is None:
            got = tuple(a for _, seg in self.as_path for a in seg)
            object.__setattr__(self, "_asns", got)
        return got


EMPTY_ATTRIBUTES = PathAttributes()


def _path_count(path: AsPath) -> int:
    n = 0
    for seg_type, asns in path:
        if seg_type == AS_SEQUENCE:
            n += len(asns)
        elif seg_type == AS_SET:
            n += 1
    return n


MpReach = tuple[Family, tuple[int, ...], list[NLRI]]
MpUnreach = tuple[Family, list[NLRI]]


class Malformed(Exception):
    """Raised by a value decoder; the registry row decides what RFC 7606 does with it."""

    def __init__(self, subcode: int, reason: str) -> None:
        super().__init__(reason)
        self.subcode = subcode
        self.reason = reason


# --- value decoders: (value, ctx) -> field value --------------------------------------------


def _dec_origin(value: bytes, ctx: CodecContext) -> int:
    if len(value) != 1:
        raise Malformed(ATTRIBUTE_LENGTH_ERROR, f"length {len(value)}, expected 1")
    if value[0] > ORIGIN_INCOMPLETE:
        raise Malformed(INVALID_ORIGIN_ATTRIBUTE, f"undefined value {value[0]}")
    return value[0]


def parse_as_path(value: bytes, asn_size: int) -> AsPath:
    """Segments of an AS_PATH/AS4_PATH; raises Malformed per RFC 7606 §7.2."""
    segs = []
    i = 0
    end = len(value)
    fmt = "!%dI" if asn_size == 4 else "!%dH"
    while i < end:
        if i + 2 > end:
            raise Malformed(MALFORMED_AS_PATH, f"segment header truncated at offset {i}")
        seg_type, count = value[i], value[i + 1]
        if seg_type not in (AS_SET, AS_SEQUENCE, AS_CONFED_SEQUENCE, AS_CONFED_SET):
            raise Malformed(MALFORMED_AS_PATH, f"segment type {seg_type} at offset {i}")
        if count == 0:
            raise Malformed(MALFORMED_AS_PATH, f"empty segment at offset {i}")
        j = i + 2 + count * asn_size
        if j > end:
            raise Malformed(MALFORMED_AS_PATH, f"segment at offset {i} overruns by {j - end}")
        segs.append((seg_type, struct.unpack_from(fmt % count, value, i + 2)))
        i = j
    return tuple(segs)


def _dec_as_path(value: bytes, ctx: CodecContext) -> AsPath:
    return parse_as_path(value, 4 if ctx.asn4 else 2)


def _dec_as4_path(value: bytes, ctx: CodecContext) -> AsPath:
    return parse_as_path(value, 4)


_MARTIAN_FIRST_OCTETS = frozenset({0, 127}) | frozenset(range(224, 256))


def _dec_next_hop(value: bytes, ctx: CodecContext) -> int:
    if len(value) != 4:
        raise Malformed(ATTRIBUTE_LENGTH_ERROR, f"length {len(value)}, expected 4")
    # RFC 4271 §6.3 / RFC 7606 §7.3: a syntactically impossible host address is malformed.
    if value[0] in _MARTIAN_FIRST_OCTETS:
        raise Malformed(INVALID_NEXT_HOP_ATTRIBUTE, f"martian next hop {'.'.join(map(str, value))}")
    return int.from_bytes(value, "big")


def _dec_u32(value: bytes, ctx: CodecContext) -> int:
    if len(value) != 4:
        raise Malformed(ATTRIBUTE_LENGTH_ERROR, f"length {len(value)}, expected 4")
    return int.from_bytes(value, "big")


def _dec_atomic(value: bytes, ctx: CodecContext) -> bool:
    if value:
        raise Malformed(ATTRIBUTE_LENGTH_ERROR, f"length {len(value)}, expected 0")
    return True


def _dec_aggregator(value: bytes, ctx: CodecContext) -> tuple[int, int]:
    size = 4 if ctx.asn4 else 2
    if len(value) != size + 4:
        raise Malformed(ATTRIBUTE_LENGTH_ERROR, f"length {len(value)}, expected {size + 4}")
    return int.from_bytes(value[:size], "big"), int.from_bytes(value[size:], "big")


def _dec_as4_aggregator(value: bytes, ctx: CodecContext) -> tuple[int, int]:
    if len(value) != 8:
        raise Malformed(ATTRIBUTE_LENGTH_ERROR, f"length {len(value)}, expected 8")
    return int.from_bytes(value[:4], "big"), int.from_bytes(value[4:], "big")


def _u32_list(value: bytes, what: str) -> tuple[int, ...]:
    if not value or len(value) % 4:
        raise Malformed(
            ATTRIBUTE_LENGTH_ERROR, f"{what} length {len(value)} not a non-zero multiple of 4"
        )
    return struct.unpack(f"!{len(value) // 4}I", value)


def _dec_communities(value: bytes, ctx: CodecContext) -> tuple[int, ...]:
    return _u32_list(value, "COMMUNITIES")


def _dec_cluster_list(value: bytes, ctx: CodecContext) -> tuple[int, ...]:
    return _u32_list(value, "CLUSTER_LIST")


def _dec_ext_communities(value: bytes, ctx: CodecContext) -> tuple[bytes, ...]:
    if not value or len(value) % 8:
        raise Malformed(ATTRIBUTE_LENGTH_ERROR, f"length {len(value)} not a non-zero multiple of 8")
    return tuple(value[i : i + 8] for i in range(0, len(value), 8))


def _dec_large_communities(value: bytes, ctx: CodecContext) -> tuple[tuple[int, int, int], ...]:
    if not value or len(value) % 12:
        raise Malformed(
            ATTRIBUTE_LENGTH_ERROR, f"length {len(value)} not a non-zero multiple of 12"
        )
    flat = struct.unpack(f"!{len(value) // 4}I", value)
    return tuple(flat[i : i + 3] for i in range(0, len(flat), 3))


def _mp_family(value: bytes) -> Family:
    return Family(int.from_bytes(value[0:2], "big"), value[2])


def _mp_nlri_supported(fam: Family) -> bool:
    # Unicast and multicast share the plain prefix encoding; other SAFIs we do not parse.
    return fam.afi in (AFI_IPV4, AFI_IPV6) and fam.safi in (1, 2)


def _dec_mp_reach(value: bytes, ctx: CodecContext) -> MpReach | None:
    if len(value) < 5:
        raise Malformed(OPTIONAL_ATTRIBUTE_ERROR, f"MP_REACH_NLRI length {len(value)} < 5")
    fam = _mp_family(value)
    nhlen = value[3]
    if 5 + nhlen > len(value):
        raise Malformed(OPTIONAL_ATTRIBUTE_ERROR, f"next-hop length {nhlen} overruns the attribute")
    if not _mp_nlri_supported(fam):
        return None
    nh = value[4 : 4 + nhlen]
    if fam.afi == AFI_IPV4 and nhlen == 4:
        hops: tuple[int, ...] = (int.from_bytes(nh, "big"),)
    elif (fam.afi == AFI_IPV6 or fam in ctx.extended_nexthop) and nhlen in (16, 32):
        # 32 bytes = global + link-local (RFC 2545); IPv4 NLRI may use these per RFC 8950.
        hops = tuple(int.from_bytes(nh[i : i + 16], "big") for i in range(0, nhlen, 16))
    else:
        raise Malformed(OPTIONAL_ATTRIBUTE_ERROR, f"next-hop length {nhlen} invalid for {fam.name}")
    # The reserved octet (old SNPA count) is ignored, as RFC 4760 asks.
    nlri = decode_prefixes(value[5 + nhlen :], fam.afi, fam in ctx.addpath_rx)
    return fam, hops, nlri


def _dec_mp_unreach(value: bytes, ctx: CodecContext) -> MpUnreach | None:
    if len(value) < 3:
        raise Malformed(OPTIONAL_ATTRIBUTE_ERROR, f"MP_UNREACH_NLRI length {len(value)} < 3")
    fam = _mp_family(value)
    if not _mp_nlri_supported(fam):
        return None
    return fam, decode_prefixes(value[3:], fam.afi, fam in ctx.addpath_rx)


# --- value encoders: (field value, ctx) -> bytes; AS-size handling lives in encode_attributes ---


def encode_as_path(path: AsPath, asn_size: int) -> bytes:
    """Segments with ASNs of the given size; segments longer than 255 are split."""
    fmt = "!%dI" if asn_size == 4 else "!%dH"
    out = bytearray()
    for seg_type, asns in path:
        for k in range(0, len(asns), 255):
            chunk = asns[k : k + 255]
            if asn_size == 2:
                chunk = tuple(a if a <= 0xFFFF else AS_TRANS for a in chunk)
            out += bytes((seg_type, len(chunk))) + struct.pack(fmt % len(chunk), *chunk)
    return bytes(out)


def _enc_u8(v: int) -> bytes:
    return bytes((v,))


def _enc_u32(v: int) -> bytes:
    return v.to_bytes(4, "big")


def _enc_u32_list(v: tuple[int, ...]) -> bytes:
    return struct.pack(f"!{len(v)}I", *v)


def _enc_bool(v: bool) -> bytes:
    return b""


def _enc_ext_communities(v: tuple[bytes, ...]) -> bytes:
    return b"".join(v)


def _enc_large(v: tuple[tuple[int, int, int], ...]) -> bytes:
    return b"".join(struct.pack("!III", *c) for c in v)


class AttrSpec(NamedTuple):
    """One registry row: wire flags, where the value lives, how to read/write it, RFC 7606 action."""

    name: str
    flags: int
    field: str | None
    decode: Callable[[bytes, CodecContext], object]
    encode: Callable[..., bytes] | None
    action: str


# The attribute registry (BIRD's bgp_attr_table idea). Fixed at import, never extended elsewhere.
# Actions are RFC 7606 §7 per attribute (RFC 6793 §6 for AS4_*, RFC 8092 for large communities).
ATTRIBUTE_TABLE: dict[int, AttrSpec] = {
    ATTR_ORIGIN: AttrSpec("ORIGIN", WELL_KNOWN, "origin", _dec_origin, _enc_u8, ACTION_WITHDRAW),
    ATTR_AS_PATH: AttrSpec("AS_PATH", WELL_KNOWN, "as_path", _dec_as_path, None, ACTION_WITHDRAW),
    ATTR_NEXT_HOP: AttrSpec(
        "NEXT_HOP", WELL_KNOWN, "next_hop", _dec_next_hop, _enc_u32, ACTION_WITHDRAW
    ),
    ATTR_MED: AttrSpec(
        "MULTI_EXIT_DISC", OPTIONAL_NON_TRANSITIVE, "med", _dec_u32, _enc_u32, ACTION_WITHDRAW
    ),
    ATTR_LOCAL_PREF: AttrSpec(
        "LOCAL_PREF", WELL_KNOWN, "local_pref", _dec_u32, _enc_u32, ACTION_WITHDRAW
    ),
    ATTR_ATOMIC_AGGREGATE: AttrSpec(
        "ATOMIC_AGGREGATE", WELL_KNOWN, "atomic_aggregate", _dec_atomic, _enc_bool, ACTION_DISCARD
    ),
    ATTR_AGGREGATOR: AttrSpec(
        "AGGREGATOR", OPTIONAL_TRANSITIVE, "aggregator", _dec_aggregator, None, ACTION_DISCARD
    ),
    ATTR_COMMUNITIES: AttrSpec(
        "COMMUNITIES",
        OPTIONAL_TRANSITIVE,
        "communities",
        _dec_communities,
        _enc_u32_list,
        ACTION_WITHDRAW,
    ),
    ATTR_ORIGINATOR_ID: AttrSpec(
        "ORIGINATOR_ID",
        OPTIONAL_NON_TRANSITIVE,
        "originator_id",
        _dec_u32,
        _enc_u32,
        ACTION_WITHDRAW,
    ),
    ATTR_CLUSTER_LIST: AttrSpec(
        "CLUSTER_LIST",
        OPTIONAL_NON_TRANSITIVE,
        "cluster_list",
        _dec_cluster_list,
        _enc_u32_list,
        ACTION_WITHDRAW,
    ),
    ATTR_MP_REACH_NLRI: AttrSpec(
        "MP_REACH_NLRI", OPTIONAL_NON_TRANSITIVE, None, _dec_mp_reach, None, ACTION_RESET
    ),
    ATTR_MP_UNREACH_NLRI: AttrSpec(
        "MP_UNREACH_NLRI", OPTIONAL_NON_TRANSITIVE, None, _dec_mp_unreach, None, ACTION_RESET
    ),
    ATTR_EXT_COMMUNITIES: AttrSpec(
        "EXTENDED_COMMUNITIES",
        OPTIONAL_TRANSITIVE,
        "ext_communities",
        _dec_ext_communities,
        _enc_ext_communities,
        ACTION_WITHDRAW,
    ),
    ATTR_AS4_PATH: AttrSpec(
        "AS4_PATH", OPTIONAL_TRANSITIVE, None, _dec_as4_path, None, ACTION_DISCARD
    ),
    ATTR_AS4_AGGREGATOR: AttrSpec(
        "AS4_AGGREGATOR", OPTIONAL_TRANSITIVE, None, _dec_as4_aggregator, None, ACTION_DISCARD
    ),
    ATTR_LARGE_COMMUNITIES: AttrSpec(
        "LARGE_COMMUNITY",
        OPTIONAL_TRANSITIVE,
        "large_communities",
        _dec_large_communities,
        _enc_large,
        ACTION_WITHDRAW,
    ),
}

MP_TYPES = (ATTR_MP_REACH_NLRI, ATTR_MP_UNREACH_NLRI)


def attribute_name(type_code: int) -> str:
    spec = ATTRIBUTE_TABLE.get(type_code)
    return spec.name if spec else f"attribute-{type_code}"


# --- RFC 6793 §4.2.3: rebuild the 4-octet path a 2-octet peer sent us --------------------------


def merge_as4_path(as_path: AsPath, as4_path: AsPath) -> AsPath:
    """Keep the leading ASNs AS_PATH has beyond AS4_PATH's count, then append AS4_PATH."""
    # RFC 6793: confederation segments must not appear in AS4_PATH; drop any that do.
    as4 = tuple(s for s in as4_path if s[0] in (AS_SET, AS_SEQUENCE))
    keep = _path_count(as_path) - _path_count(as4)
    if keep < 0:
        return as_path  # AS4_PATH is longer: ignore it (§4.2.3).
    out: list[tuple[int, tuple[int, ...]]] = []
    for seg_type, asns in as_path:
        if seg_type in (AS_CONFED_SEQUENCE, AS_CONFED_SET):
            if keep > 0 or not out or out[-1][0] in (AS_CONFED_SEQUENCE, AS_CONFED_SET):
                out.append((seg_type, asns))
            continue
        if keep <= 0:
            break
        if seg_type == AS_SET:
            out.append((seg_type, asns))
            keep -= 1
        else:
            take = asns[:keep]
            out.append((seg_type, take))
            keep -= len(take)
    # Join only at the seam: a sequence cut short above continues in AS4_PATH's first segment.
    if as4 and out and as4[0][0] == AS_SEQUENCE and out[-1][0] == AS_SEQUENCE:
        out[-1] = (AS_SEQUENCE, out[-1][1] + as4[0][1])
        as4 = as4[1:]
    out.extend(as4)
    return tuple(out)


# --- the encoder --------------------------------------------------------------------------------


def encode_attribute(flags: int, atype: int, value: bytes) -> bytes:
    """One attribute TLV, switching to the 2-octet length only when the value needs it."""
    if len(value) > 255:
        return bytes((flags | FLAG_EXTENDED_LENGTH, atype)) + len(value).to_bytes(2, "big") + value
    return bytes((flags & ~FLAG_EXTENDED_LENGTH, atype, len(value))) + value


def encode_attributes(attrs: PathAttributes, ctx: CodecContext) -> bytes:
    """Non-MP attributes in type-code order; AS_TRANS plus AS4_* toward a 2-octet peer."""
    return b"".join(encode_attribute(f, t, v) for t, f, v in _attribute_items(attrs, ctx))


def encode_attributes_around(
    attrs: PathAttributes, ctx: CodecContext, type_code: int
) -> tuple[bytes, bytes]:
    """Encoded attributes split before and after type_code, so an MP attribute can be slotted
    in and the UPDATE keeps the ascending type order RFC 4271 §5 asks senders for."""
    items = _attribute_items(attrs, ctx)
    head = b"".join(encode_attribute(f, t, v) for t, f, v in items if t < type_code)
    tail = b"".join(encode_attribute(f, t, v) for t, f, v in items if t > type_code)
    return head, tail


def _attribute_items(attrs: PathAttributes, ctx: CodecContext) -> list[tuple[int, int, bytes]]:
    items: list[tuple[int, int, bytes]] = []
    for atype, spec in ATTRIBUTE_TABLE.items():
        if spec.field is None:
            continue
        v = getattr(attrs, spec.field)
        if v is None or v == () or v is False:
            continue
        if atype == ATTR_AS_PATH:
            continue
        if atype == ATTR_AGGREGATOR:
            continue
        items.append((atype, spec.flags, spec.encode(v)))  # type: ignore[misc]
    # AS_PATH is mandatory whenever ORIGIN is present (announcements); empty is valid iBGP.
    if attrs.as_path or attrs.origin is not None:
        if ctx.asn4:
            items.append((ATTR_AS_PATH, WELL_KNOWN, encode_as_path(attrs.as_path, 4)))
        else:
            items.append((ATTR_AS_PATH, WELL_KNOWN, encode_as_path(attrs.as_path, 2)))
            if any(a > 0xFFFF for a in attrs.asns()):
                as4 = tuple(s for s in attrs.as_path if s[0] in (AS_SET, AS_SEQUENCE))
                items.append((ATTR_AS4_PATH, OPTIONAL_TRANSITIVE, encode_as_path(as4, 4)))
    if attrs.aggregator is not None:
        asn, ip = attrs.aggregator
        if ctx.asn4:
            items.append((ATTR_AGGREGATOR, OPTIONAL_TRANSITIVE, struct.pack("!II", asn, ip)))
        else:
            two = asn if asn <= 0xFFFF else AS_TRANS
            items.append((ATTR_AGGREGATOR, OPTIONAL_TRANSITIVE, struct.pack("!HI", two, ip)))
            if asn > 0xFFFF:
                items.append(
                    (ATTR_AS4_AGGREGATOR, OPTIONAL_TRANSITIVE, struct.pack("!II", asn, ip))
                )
    for flags, atype, value in attrs.unknown:
        # RFC 4271 §5: a transitive attribute we did not understand goes on with Partial set.
        items.append((atype, flags | FLAG_PARTIAL, value))
    items.sort(key=lambda it: it[0])
    return items


def encode_mp_reach(
    family: Family, next_hop: tuple[int, ...], nlri_bytes: bytes, nh_width: int
) -> bytes:
    """MP_REACH_NLRI value; nh_width is 4 or 16 bytes per next-hop address."""
    nh = b"".join(h.to_bytes(nh_width, "big") for h in next_hop)
    return family.afi.to_bytes(2, "big") + bytes((family.safi, len(nh))) + nh + b"\x00" + nlri_bytes


def encode_mp_unreach(family: Family, nlri_bytes: bytes) -> bytes:
    """MP_UNREACH_NLRI value."""
    return family.afi.to_bytes(2, "big") + bytes((family.safi,)) + nlri_bytes
