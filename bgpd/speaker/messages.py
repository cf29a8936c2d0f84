"""BGP messages: framing a byte stream, decoding each message type, and encoding them (incl. packed UPDATEs)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from bgpd.speaker.attrdecode import AttrCache, cached_attributes, decode_attribute_field
from bgpd.speaker.attributes import (
    ACTION_WITHDRAW,
    AS_TRANS,
    ATTR_MP_REACH_NLRI,
    ATTR_MP_UNREACH_NLRI,
    EMPTY_ATTRIBUTES,
    FLAG_OPTIONAL,
    PathAttributes,
    encode_attribute,
    encode_attributes,
    encode_attributes_around,
    encode_mp_reach,
    encode_mp_unreach,
)
from bgpd.speaker.capabilities import (
    Capability,
    FourOctetAS,
    decode_optional_parameters,
    encode_optional_parameters,
)
from bgpd.speaker.context import DEFAULT_CONTEXT, CodecContext
from bgpd.speaker.errors import (
    BAD_BGP_IDENTIFIER,
    BAD_MESSAGE_LENGTH,
    BAD_MESSAGE_TYPE,
    CONNECTION_NOT_SYNCHRONIZED,
    INVALID_MESSAGE_LENGTH,
    MALFORMED_ATTRIBUTE_LIST,
    MESSAGE_HEADER_ERROR,
    OPEN_MESSAGE_ERROR,
    ROUTE_REFRESH_MESSAGE_ERROR,
    UNACCEPTABLE_HOLD_TIME,
    UNSUPPORTED_VERSION_NUMBER,
    UPDATE_MESSAGE_ERROR,
    NotificationError,
)
from bgpd.speaker.nlri import decode_prefixes, encode_prefixes, pack_prefixes
from bgpd.speaker.types import (
    AFI_IPV4,
    HEADER_LEN,
    IPV4_UNICAST,
    MARKER,
    MAX_MESSAGE_LEN,
    MSG_KEEPALIVE,
    MSG_NOTIFICATION,
    MSG_OPEN,
    MSG_ROUTE_REFRESH,
    MSG_UPDATE,
    NLRI,
    Family,
)

__all__ = [
    "AttrCache",
    "Keepalive",
    "MessageReader",
    "Notification",
    "Open",
    "RouteRefresh",
    "Update",
    "decode_message",
    "encode_end_of_rib",
    "encode_keepalive",
    "encode_message",
    "encode_notification",
    "encode_updates",
    "encode_withdrawals",
    "split_messages",
]

BGP_VERSION = 4
ROUTE_REFRESH_NORMAL = 0
ROUTE_REFRESH_BORR = 1
ROUTE_REFRESH_EORR = 2

# (minimum, maximum or None for "the negotiated maximum") total length per message type.
# RFC 8654 §3: OPEN and KEEPALIVE stay within 4096 even with Extended Message.
_LENGTH_LIMITS: dict[int, tuple[int, int | None]] = {
    MSG_OPEN: (29, MAX_MESSAGE_LEN),
    MSG_UPDATE: (23, None),
    MSG_NOTIFICATION: (21, None),
    MSG_KEEPALIVE: (19, 19),
    MSG_ROUTE_REFRESH: (23, 23),
}
_MIN_UPDATE_LEN = _LENGTH_LIMITS[MSG_UPDATE][0]


@dataclass(frozen=True, slots=True)
class Open:
    """OPEN; asn is the real (possibly 4-octet) ASN, not the 2-octet field."""

    asn: int
    hold_time: int
    router_id: int
    capabilities: tuple[Capability, ...] = ()
    version: int = BGP_VERSION


@dataclass(frozen=True, slots=True)
class Keepalive:
    pass


@dataclass(frozen=True, slots=True)
class Notification:
    code: int
    subcode: int
    data: bytes = b""


@dataclass(frozen=True, slots=True)
class RouteRefresh:
    """ROUTE-REFRESH (RFC 2918); subtype 1/2 are BoRR/EoRR from RFC 7313."""

    family: Family
    subtype: int = ROUTE_REFRESH_NORMAL


@dataclass(slots=True)
class Update:
    """A decoded UPDATE, per family. IPv4 unicast classic NLRI lands in IPV4_UNICAST.

    When treat_as_withdraw is set (RFC 7606) the announced NLRI have already been moved into
    `withdraw` and `announce` is empty; `diagnostics` says why.
    attrs is None when the UPDATE carried no attributes besides MP_(UN)REACH_NLRI.
    """

    attrs: PathAttributes | None = None
    announce: dict[Family, list[NLRI]] = field(default_factory=dict)
    next_hop: dict[Family, tuple[int, ...]] = field(default_factory=dict)
    withdraw: dict[Family, list[NLRI]] = field(default_factory=dict)
    treat_as_withdraw: bool = False
    diagnostics: tuple[str, ...] = ()

    def end_of_rib(self) -> Family | None:
        """The family this UPDATE marks End-of-RIB for (RFC 4724 §2), else None."""
        if self.attrs is not None or self.announce or self.treat_as_withdraw:
            return None
        if not self.withdraw:
            return IPV4_UNICAST
        if len(self.withdraw) == 1:
            ((fam, nlri),) = self.withdraw.items()
            if not nlri and fam != IPV4_UNICAST:
                return fam
        return None


Message = Open | Update | Notification | Keepalive | RouteRefresh


# --- framing ------------------------------------------------------------------------------------


def _header_error(subcode: int, data: bytes, reason: str) -> NotificationError:
    return NotificationError(MESSAGE_HEADER_ERROR, subcode, data, reason)


def split_messages(buf: bytearray, ctx: CodecContext = DEFAULT_CONTEXT) -> list[tuple[int, bytes]]:
    """Remove every complete message from the front of buf; return (type, body) pairs.

    A partial message stays in buf. Header errors are raised as soon as the 19-byte header is
    there, without waiting for the body, so a desynchronised peer is cut off promptly.
    """
    out: list[tuple[int, bytes]] = []
    pos = 0
    avail = len(buf)
    max_len = ctx.max_message_len
    # One copy of the buffer, so each body is a single slice (not a bytearray slice copied again)
    # and the marker is compared in place.
    data = bytes(buf)
    try:
        while avail - pos >= HEADER_LEN:
            if not data.startswith(MARKER, pos):
                raise _header_error(
                    CONNECTION_NOT_SYNCHRONIZED,
                    b"",
                    f"marker is not all ones at stream offset {pos}",
                )
            length = (data[pos + 16] << 8) | data[pos + 17]
            mtype = data[pos + 18]
            if mtype == MSG_UPDATE and _MIN_UPDATE_LEN <= length <= max_len:
                # The bulk of any stream: an UPDATE of an allowed length, without the table.
                if avail - pos < length:
                    break
                out.append((MSG_UPDATE, data[pos + HEADER_LEN : pos + length]))
                pos += length
                continue
            if length < HEADER_LEN or length > max_len:
                raise _header_error(
                    BAD_MESSAGE_LENGTH,
                    data[pos + 16 : pos + 18],
                    f"length {length} outside 19..{max_len}",
                )
            limits = _LENGTH_LIMITS.get(mtype)
            if limits is None:
                raise _header_error(BAD_MESSAGE_TYPE, bytes((mtype,)), f"message type {mtype}")
            lo, hi = limits
            hi = max_len if hi is None else hi
            if not lo <= length <= hi:
                if mtype == MSG_ROUTE_REFRESH and length >= 22:
                    # RFC 7313 §5: a BoRR/EoRR of the wrong size is a ROUTE-REFRESH error whose
                    # data is the whole message, so wait until all of it has arrived.
                    if avail - pos < length:
                        break
                    if data[pos + 21] in (ROUTE_REFRESH_BORR, ROUTE_REFRESH_EORR):
                        raise NotificationError(
                            ROUTE_REFRESH_MESSAGE_ERROR,
                            INVALID_MESSAGE_LENGTH,
                            data[pos : pos + length],
                            f"ROUTE-REFRESH subtype {data[pos + 21]} with length {length}",
                        )
                raise _header_error(
                    BAD_MESSAGE_LENGTH,
                    data[pos + 16 : pos + 18],
                    f"type {mtype} length {length} not in {lo}..{hi}",
                )
            if avail - pos < length:
                break
            out.append((mtype, data[pos + HEADER_LEN : pos + length]))
            pos += length
    finally:
        # Consume what was framed even when a later message raised, so callers see a clean cut.
        if pos:
            del buf[:pos]
    return out


class MessageReader:
    """Accumulates stream bytes and yields whole messages; swap `ctx` once OPENs are exchanged."""

    def __init__(self, ctx: CodecContext = DEFAULT_CONTEXT) -> None:
        self.ctx = ctx
        self.buffer = bytearray()

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        self.buffer += data
        return split_messages(self.buffer, self.ctx)


# --- decoding -----------------------------------------------------------------------------------


def decode_open(body: bytes) -> Open:
    """OPEN body; checks version, hold time and BGP identifier. Peer AS is the FSM's to check."""
    if len(body) < 10:
        raise _header_error(
            BAD_MESSAGE_LENGTH, (len(body) + HEADER_LEN).to_bytes(2, "big"), "OPEN too short"
        )
    version = body[0]
    if version != BGP_VERSION:
        raise NotificationError(
            OPEN_MESSAGE_ERROR,
            UNSUPPORTED_VERSION_NUMBER,
            BGP_VERSION.to_bytes(2, "big"),
            f"version {version}",
        )
    my_as = int.from_bytes(body[1:3], "big")
    hold_time = int.from_bytes(body[3:5], "big")
    if hold_time in (1, 2):
        raise NotificationError(
            OPEN_MESSAGE_ERROR, UNACCEPTABLE_HOLD_TIME, b"", f"hold time {hold_time}"
        )
    router_id = int.from_bytes(body[5:9], "big")
    if router_id == 0:
        raise NotificationError(OPEN_MESSAGE_ERROR, BAD_BGP_IDENTIFIER, b"", "BGP identifier 0")
    caps = decode_optional_parameters(body[9:])
    asn = my_as
    for cap in caps:
        if isinstance(cap, FourOctetAS):
            asn = cap.asn
            break
    return Open(asn, hold_time, router_id, caps, version)


# By prefix length: the size of an NLRI field holding just that one IPv4 prefix (0 where the
# length is not an IPv4 one, which no field size matches); shifts and masks as in nlri.py.
_ONE_V4_LEN: tuple[int, ...] = tuple(2 + (p - 1) // 8 if p else 1 for p in range(33)) + (0,) * 223
_V4_SHIFT: tuple[int, ...] = tuple(32 - 8 * k for k in range(5))
_V4_MASK: tuple[int, ...] = tuple(((1 << p) - 1) << (32 - p) for p in range(33))


def decode_update(body: bytes, ctx: CodecContext, cache: AttrCache | None = None) -> Update:
    """UPDATE body: withdrawn routes, attributes (RFC 7606 outcome applied) and NLRI."""
    n = len(body)
    if n < 4:
        raise NotificationError(
            UPDATE_MESSAGE_ERROR, MALFORMED_ATTRIBUTE_LIST, b"", "UPDATE < 4 bytes"
        )
    wlen = (body[0] << 8) | body[1]
    if 4 + wlen > n:
        raise NotificationError(
            UPDATE_MESSAGE_ERROR,
            MALFORMED_ATTRIBUTE_LIST,
            b"",
            f"withdrawn routes length {wlen} overruns the {n}-byte body",
        )
    alen = (body[2 + wlen] << 8) | body[3 + wlen]
    astart = 4 + wlen
    if astart + alen > n:
        raise NotificationError(
            UPDATE_MESSAGE_ERROR,
            MALFORMED_ATTRIBUTE_LIST,
            b"",
            f"total path attribute length {alen} at offset {2 + wlen} overruns the body",
        )
    addpath_rx = ctx.addpath_rx
    v4_addpath = IPV4_UNICAST in addpath_rx if addpath_rx else False
    upd = Update(None, {}, {}, {})
    if wlen:
        upd.withdraw[IPV4_UNICAST] = decode_prefixes(body[2 : 2 + wlen], AFI_IPV4, v4_addpath)
    nstart = astart + alen
    if nstart == n:
        nlri = []
    elif n - nstart == _ONE_V4_LEN[body[nstart]] and not v4_addpath:
        # The NLRI field is one IPv4 prefix (a feed with an attribute set per route): what
        # decode_prefixes would make of it, without the call and its loop.
        plen = body[nstart]
        addr = int.from_bytes(body[nstart + 1 :], "big") << _V4_SHIFT[n - nstart - 1]
        nlri = [(addr & _V4_MASK[plen], plen, 0)]
    else:
        nlri = decode_prefixes(body[nstart:], AFI_IPV4, v4_addpath)
    if not alen and not nlri:
        return upd
    if nlri and cache is not None:
        # The attributes of the last UPDATE again with another MED (a feed that gives each
        # route its own): the outcome is known to be clean, so only the NLRI is left to add.
        attrs = cached_attributes(body, astart, nstart, ctx.asn4, True, cache)  # type: ignore[assignment]
        if attrs is not None:
            upd.attrs = attrs
            upd.announce[IPV4_UNICAST] = nlri
            nh = attrs.next_hop
            if nh is not None:
                hops = cache.hops
                if not hops or hops[0] != nh:
                    hops = cache.hops = (nh,)
                upd.next_hop[IPV4_UNICAST] = hops
            return upd
    attrs, mp_reach, mp_unreach, action, upd.diagnostics = decode_attribute_field(
        body[astart:nstart], ctx, bool(nlri), cache
    )
    if attrs is not EMPTY_ATTRIBUTES:
        upd.attrs = attrs
    if nlri:
        upd.announce[IPV4_UNICAST] = nlri
        nh = attrs.next_hop
        if nh is not None:
            if cache is None:
                upd.next_hop[IPV4_UNICAST] = (nh,)
            else:
                hops = cache.hops
                if not hops or hops[0] != nh:
                    hops = cache.hops = (nh,)
                upd.next_hop[IPV4_UNICAST] = hops
    if mp_reach is not None:
        fam, hops, mp_nlri = mp_reach
        if mp_nlri:
            upd.announce.setdefault(fam, []).extend(mp_nlri)
            upd.next_hop[fam] = hops
    if mp_unreach is not None:
        fam, mp_w = mp_unreach
        upd.withdraw.setdefault(fam, []).extend(mp_w)
    if action == ACTION_WITHDRAW:
        upd.treat_as_withdraw = True
        for fam, items in upd.announce.items():
            upd.withdraw.setdefault(fam, []).extend(items)
        upd.announce = {}
        upd.next_hop = {}
    return upd


_EMPTY_ATTRS = EMPTY_ATTRIBUTES


def decode_notification(body: bytes) -> Notification:
    return Notification(body[0], body[1], bytes(body[2:]))


def decode_route_refresh(body: bytes) -> RouteRefresh:
    return RouteRefresh(Family(int.from_bytes(body[0:2], "big"), body[3]), body[2])


def decode_message(
    msg_type: int, body: bytes, ctx: CodecContext = DEFAULT_CONTEXT, cache: AttrCache | None = None
) -> Message:
    """Decode one framed message body (as split_messages returns it)."""
    if msg_type == MSG_UPDATE:
        return decode_update(body, ctx, cache)
    if msg_type == MSG_KEEPALIVE:
        if body:
            raise _header_error(
                BAD_MESSAGE_LENGTH,
                (len(body) + HEADER_LEN).to_bytes(2, "big"),
                "KEEPALIVE with body",
            )
        return Keepalive()
    if msg_type == MSG_OPEN:
        return decode_open(body)
    # Lengths below are re-checked here so decode_message is safe on unframed input too.
    if msg_type == MSG_NOTIFICATION:
        if len(body) < 2:
            raise _header_error(
                BAD_MESSAGE_LENGTH, (len(body) + HEADER_LEN).to_bytes(2, "big"), "NOTIFICATION < 21"
            )
        return decode_notification(body)
    if msg_type == MSG_ROUTE_REFRESH:
        if len(body) != 4:
            raise _header_error(
                BAD_MESSAGE_LENGTH,
                (len(body) + HEADER_LEN).to_bytes(2, "big"),
                "ROUTE-REFRESH != 23",
            )
        return decode_route_refresh(body)
    raise _header_error(BAD_MESSAGE_TYPE, bytes((msg_type & 0xFF,)), f"message type {msg_type}")


# --- encoding -----------------------------------------------------------------------------------


def frame(msg_type: int, body: bytes) -> bytes:
    """Header + body."""
    return MARKER + (HEADER_LEN + len(body)).to_bytes(2, "big") + bytes((msg_type,)) + body


_KEEPALIVE = frame(MSG_KEEPALIVE, b"")


def encode_keepalive() -> bytes:
    return _KEEPALIVE


def encode_notification(code: int, subcode: int, data: bytes = b"") -> bytes:
    return frame(MSG_NOTIFICATION, bytes((code, subcode)) + data)


def encode_open(msg: Open) -> bytes:
    caps = tuple(msg.capabilities)
    if msg.asn > 0xFFFF and not any(isinstance(c, FourOctetAS) for c in caps):
        caps += (FourOctetAS(msg.asn),)
    my_as = msg.asn if msg.asn <= 0xFFFF else AS_TRANS
    body = (
        bytes((msg.version,))
        + my_as.to_bytes(2, "big")
        + msg.hold_time.to_bytes(2, "big")
        + msg.router_id.to_bytes(4, "big")
        + encode_optional_parameters(caps)
    )
    return frame(MSG_OPEN, body)


def encode_route_refresh(msg: RouteRefresh) -> bytes:
    body = msg.family.afi.to_bytes(2, "big") + bytes((msg.subtype, msg.family.safi))
    return frame(MSG_ROUTE_REFRESH, body)


def encode_end_of_rib(family: Family) -> bytes:
    """RFC 4724 End-of-RIB: empty UPDATE for IPv4 unicast, empty MP_UNREACH otherwise."""
    if family == IPV4_UNICAST:
        return frame(MSG_UPDATE, b"\x00\x00\x00\x00")
    attr = encode_attribute(FLAG_OPTIONAL, ATTR_MP_UNREACH_NLRI, encode_mp_unreach(family, b""))
    return frame(MSG_UPDATE, b"\x00\x00" + len(attr).to_bytes(2, "big") + attr)


def _update_body(withdrawn: bytes, attrs: bytes, nlri: bytes) -> bytes:
    return (
        len(withdrawn).to_bytes(2, "big") + withdrawn + len(attrs).to_bytes(2, "big") + attrs + nlri
    )


def _nh_width(family: Family, next_hop: tuple[int, ...], nh_afi: int | None) -> int:
    if nh_afi is not None:
        return 4 if nh_afi == AFI_IPV4 else 16
    if family.afi == AFI_IPV4 and len(next_hop) == 1 and next_hop[0] <= 0xFFFFFFFF:
        return 4
    return 16


def encode_update(msg: Update, ctx: CodecContext) -> bytes:
    """One UPDATE from an Update object (round-trip path; the fast path is encode_updates)."""
    v4_tx = IPV4_UNICAST in ctx.addpath_tx
    withdrawn = encode_prefixes(msg.withdraw.get(IPV4_UNICAST, ()), AFI_IPV4, v4_tx)
    attrs = msg.attrs or _EMPTY_ATTRS
    nlri = b""
    mp_reach = b""
    mp_unreach = b""
    mp_fams = [f for f in msg.announce if f != IPV4_UNICAST]
    v4 = msg.announce.get(IPV4_UNICAST)
    if v4:
        nh = msg.next_hop.get(IPV4_UNICAST, ())
        if nh and _nh_width(IPV4_UNICAST, nh, None) == 16:
            mp_fams.append(IPV4_UNICAST)  # RFC 8950: IPv4 NLRI with an IPv6 next hop
        else:
            if nh and attrs.next_hop != nh[0]:
                attrs = replace(attrs, next_hop=nh[0])
            nlri = encode_prefixes(v4, AFI_IPV4, v4_tx)
    if len(mp_fams) > 1:
        raise ValueError("an UPDATE carries at most one MP_REACH_NLRI family")
    for fam in mp_fams:
        nh = msg.next_hop.get(fam, ())
        mp_reach = encode_mp_reach(
            fam,
            nh,
            encode_prefixes(msg.announce[fam], fam.afi, fam in ctx.addpath_tx),
            _nh_width(fam, nh, None),
        )
    un_fams = [f for f in msg.withdraw if f != IPV4_UNICAST]
    if len(un_fams) > 1:
        raise ValueError("an UPDATE carries at most one MP_UNREACH_NLRI family")
    for fam in un_fams:
        mp_unreach = encode_mp_unreach(
            fam, encode_prefixes(msg.withdraw[fam], fam.afi, fam in ctx.addpath_tx)
        )
    head, tail = encode_attributes_around(attrs, ctx, ATTR_MP_REACH_NLRI)
    mid = b""
    if mp_reach:
        mid += encode_attribute(FLAG_OPTIONAL, ATTR_MP_REACH_NLRI, mp_reach)
    if mp_unreach:
        mid += encode_attribute(FLAG_OPTIONAL, ATTR_MP_UNREACH_NLRI, mp_unreach)
    return frame(MSG_UPDATE, _update_body(withdrawn, head + mid + tail, nlri))


def encode_message(msg: Message, ctx: CodecContext = DEFAULT_CONTEXT) -> bytes:
    """Encode any message object to wire bytes."""
    if isinstance(msg, Update):
        return encode_update(msg, ctx)
    if isinstance(msg, Keepalive):
        return _KEEPALIVE
    if isinstance(msg, Open):
        return encode_open(msg)
    if isinstance(msg, Notification):
        return encode_notification(msg.code, msg.subcode, msg.data)
    if isinstance(msg, RouteRefresh):
        return encode_route_refresh(msg)
    raise TypeError(f"not a BGP message: {type(msg).__name__}")


# Fixed per-UPDATE overhead: header, withdrawn length, total attribute length.
_UPDATE_OVERHEAD = HEADER_LEN + 4


def encode_updates(
    ctx: CodecContext,
    family: Family,
    attrs: PathAttributes,
    nlri: Sequence[NLRI],
    next_hop: tuple[int, ...],
    *,
    nh_afi: int | None = None,
) -> list[bytes]:
    """Announce nlri with one attribute set in as few UPDATEs as ctx.max_message_len allows.

    IPv4 unicast with an IPv4 next hop uses the classic NLRI field and NEXT_HOP; everything
    else (IPv6, or IPv4 with an RFC 8950 IPv6 next hop; force with nh_afi) goes in MP_REACH.
    The attributes are encoded once per call.
    """
    if not nlri:
        return []
    max_len = ctx.max_message_len
    addpath = family in ctx.addpath_tx
    width = 32 if family.afi == AFI_IPV4 else 128
    nh_width = _nh_width(family, next_hop, nh_afi)
    if family == IPV4_UNICAST and nh_width == 4:
        if next_hop and attrs.next_hop != next_hop[0]:
            attrs = replace(attrs, next_hop=next_hop[0])
        attr_bytes = encode_attributes(attrs, ctx)
        prefix = len(attr_bytes).to_bytes(2, "big") + attr_bytes
        room = max_len - _UPDATE_OVERHEAD - len(attr_bytes)
        out = []
        for run in pack_prefixes(nlri, width, addpath, room):
            body = b"\x00\x00" + prefix + run
            out.append(MARKER + (HEADER_LEN + len(body)).to_bytes(2, "big") + b"\x02" + body)
        return out
    if attrs.next_hop is not None:
        attrs = replace(attrs, next_hop=None)  # MP next hop lives in MP_REACH only
    head, tail = encode_attributes_around(attrs, ctx, ATTR_MP_REACH_NLRI)
    mp_head = encode_mp_reach(family, next_hop, b"", nh_width)
    # Budget for the 4-byte extended attribute header; short runs may use 3 and stay under.
    room = max_len - _UPDATE_OVERHEAD - len(head) - len(tail) - 4 - len(mp_head)
    out = []
    for run in pack_prefixes(nlri, width, addpath, room):
        attr_block = (
            head + encode_attribute(FLAG_OPTIONAL, ATTR_MP_REACH_NLRI, mp_head + run) + tail
        )
        body = b"\x00\x00" + len(attr_block).to_bytes(2, "big") + attr_block
        out.append(MARKER + (HEADER_LEN + len(body)).to_bytes(2, "big") + b"\x02" + body)
    return out


def encode_withdrawals(ctx: CodecContext, family: Family, nlri: Sequence[NLRI]) -> list[bytes]:
    """Withdraw nlri in as few UPDATEs as fit: classic field for IPv4, MP_UNREACH otherwise."""
    if not nlri:
        return []
    max_len = ctx.max_message_len
    addpath = family in ctx.addpath_tx
    width = 32 if family.afi == AFI_IPV4 else 128
    out = []
    if family == IPV4_UNICAST:
        for run in pack_prefixes(nlri, width, addpath, max_len - _UPDATE_OVERHEAD):
            out.append(frame(MSG_UPDATE, _update_body(run, b"", b"")))
        return out
    mp_head = encode_mp_unreach(family, b"")
    room = max_len - _UPDATE_OVERHEAD - 4 - len(mp_head)
    for run in pack_prefixes(nlri, width, addpath, room):
        attr = encode_attribute(FLAG_OPTIONAL, ATTR_MP_UNREACH_NLRI, mp_head + run)
        out.append(frame(MSG_UPDATE, _update_body(b"", attr, b"")))
    return out
