"""OPEN optional parameters and capabilities (RFC 5492, 9072) and what two OPENs negotiate."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

from bgpd.speaker.context import CodecContext
from bgpd.speaker.errors import (
    OPEN_MESSAGE_ERROR,
    UNSPECIFIC,
    UNSUPPORTED_OPTIONAL_PARAMETER,
    NotificationError,
)
from bgpd.speaker.types import AFI_IPV6, IPV4_UNICAST, Family

if TYPE_CHECKING:
    from bgpd.speaker.messages import Open

# Capability codes (IANA "Capability Codes" registry).
CAP_MULTIPROTOCOL = 1
CAP_ROUTE_REFRESH = 2
CAP_EXTENDED_NEXTHOP = 5
CAP_EXTENDED_MESSAGE = 6
CAP_GRACEFUL_RESTART = 64
CAP_FOUR_OCTET_AS = 65
CAP_ADD_PATH = 69
CAP_ENHANCED_ROUTE_REFRESH = 70
CAP_LONG_LIVED_GR = 71
CAP_FQDN = 73
CAP_ROUTE_REFRESH_CISCO = 128

PARAM_CAPABILITIES = 2
# RFC 9072: Opt Parm Len 255 followed by Non-Ext OP Type 255 announces 2-octet lengths.
PARAM_EXTENDED = 255

ADDPATH_RECEIVE = 1
ADDPATH_SEND = 2
ADDPATH_BOTH = 3

GR_RESTARTING = 0x8000
GR_NOTIFICATION = 0x4000  # RFC 8538 "N" bit
GR_TIME_MASK = 0x0FFF
GR_FORWARDING = 0x80


@dataclass(frozen=True, slots=True)
class Multiprotocol:
    family: Family


@dataclass(frozen=True, slots=True)
class RouteRefresh:
    pass


@dataclass(frozen=True, slots=True)
class EnhancedRouteRefresh:
    pass


@dataclass(frozen=True, slots=True)
class FourOctetAS:
    asn: int


@dataclass(frozen=True, slots=True)
class GracefulRestart:
    """RFC 4724; families pair each family with its forwarding-state-preserved bit."""

    restart_time: int
    restarting: bool = False
    notification: bool = False
    families: tuple[tuple[Family, bool], ...] = ()


@dataclass(frozen=True, slots=True)
class AddPath:
    """RFC 7911; each family maps to 1 = receive, 2 = send, 3 = both."""

    families: tuple[tuple[Family, int], ...]


@dataclass(frozen=True, slots=True)
class ExtendedMessage:
    pass


@dataclass(frozen=True, slots=True)
class ExtendedNextHop:
    """RFC 8950; entries pair an NLRI family with the next-hop AFI it may carry."""

    entries: tuple[tuple[Family, int], ...]


@dataclass(frozen=True, slots=True)
class Hostname:
    """FQDN capability (draft-walton-bgp-hostname-capability), as FRR and GoBGP send it."""

    hostname: str
    domain: str = ""


@dataclass(frozen=True, slots=True)
class UnknownCapability:
    """Any capability we do not interpret (Long-lived GR, Cisco route refresh, ...), kept raw."""

    code: int
    value: bytes


Capability = (
    Multiprotocol
    | RouteRefresh
    | EnhancedRouteRefresh
    | FourOctetAS
    | GracefulRestart
    | AddPath
    | ExtendedMessage
    | ExtendedNextHop
    | Hostname
    | UnknownCapability
)


def _malformed(code: int, reason: str) -> NotificationError:
    # RFC 4271 §6.2: a recognised optional parameter that is malformed gets subcode 0.
    return NotificationError(OPEN_MESSAGE_ERROR, UNSPECIFIC, b"", f"capability {code}: {reason}")


def _need_len(code: int, value: bytes, expected: int) -> None:
    if len(value) != expected:
        raise _malformed(code, f"length {len(value)}, expected {expected}")


def _need_multiple(code: int, value: bytes, header: int, unit: int) -> None:
    if len(value) < header or (len(value) - header) % unit:
        raise _malformed(code, f"length {len(value)} is not {header} + n*{unit}")


def _dec_mp(value: bytes) -> Capability:
    _need_len(CAP_MULTIPROTOCOL, value, 4)
    return Multiprotocol(Family(int.from_bytes(value[0:2], "big"), value[3]))


def _enc_mp(cap: Multiprotocol) -> bytes:
    return cap.family.afi.to_bytes(2, "big") + bytes((0, cap.family.safi))


def _dec_empty(cls: type) -> Callable[[bytes], Capability]:
    code = {RouteRefresh: 2, ExtendedMessage: 6, EnhancedRouteRefresh: 70}[cls]

    def decode(value: bytes) -> Capability:
        _need_len(code, value, 0)
        return cls()

    return decode


def _enc_empty(cap: Capability) -> bytes:
    return b""


def _dec_as4(value: bytes) -> Capability:
    _need_len(CAP_FOUR_OCTET_AS, value, 4)
    return FourOctetAS(int.from_bytes(value, "big"))


def _enc_as4(cap: FourOctetAS) -> bytes:
    return cap.asn.to_bytes(4, "big")


def _dec_gr(value: bytes) -> Capability:
    _need_multiple(CAP_GRACEFUL_RESTART, value, 2, 4)
    head = int.from_bytes(value[0:2], "big")
    fams = tuple(
        (Family(int.from_bytes(value[i : i + 2], "big"), value[i + 2]), bool(value[i + 3] & 0x80))
        for i in range(2, len(value), 4)
    )
    return GracefulRestart(
        restart_time=head & GR_TIME_MASK,
        restarting=bool(head & GR_RESTARTING),
        notification=bool(head & GR_NOTIFICATION),
        families=fams,
    )


def _enc_gr(cap: GracefulRestart) -> bytes:
    head = (cap.restart_time & GR_TIME_MASK) | (GR_RESTARTING if cap.restarting else 0)
    head |= GR_NOTIFICATION if cap.notification else 0
    out = bytearray(head.to_bytes(2, "big"))
    for fam, fwd in cap.families:
        out += fam.afi.to_bytes(2, "big") + bytes((fam.safi, GR_FORWARDING if fwd else 0))
    return bytes(out)


def _dec_addpath(value: bytes) -> Capability:
    _need_multiple(CAP_ADD_PATH, value, 0, 4)
    return AddPath(
        tuple(
            (Family(int.from_bytes(value[i : i + 2], "big"), value[i + 2]), value[i + 3])
            for i in range(0, len(value), 4)
        )
    )


def _enc_addpath(cap: AddPath) -> bytes:
    return b"".join(f.afi.to_bytes(2, "big") + bytes((f.safi, mode)) for f, mode in cap.families)


def _dec_enh(value: bytes) -> Capability:
    _need_multiple(CAP_EXTENDED_NEXTHOP, value, 0, 6)
    return ExtendedNextHop(
        tuple(
            (
                Family(
                    int.from_bytes(value[i : i + 2], "big"),
                    int.from_bytes(value[i + 2 : i + 4], "big"),
                ),
                int.from_bytes(value[i + 4 : i + 6], "big"),
            )
            for i in range(0, len(value), 6)
        )
    )


def _enc_enh(cap: ExtendedNextHop) -> bytes:
    return b"".join(
        f.afi.to_bytes(2, "big") + f.safi.to_bytes(2, "big") + nh.to_bytes(2, "big")
        for f, nh in cap.entries
    )


def _dec_fqdn(value: bytes) -> Capability:
    if len(value) < 2 or 1 + value[0] >= len(value):
        raise _malformed(CAP_FQDN, "hostname overruns the capability")
    hlen = value[0]
    dpos = 1 + hlen
    dlen = value[dpos]
    if dpos + 1 + dlen != len(value):
        raise _malformed(CAP_FQDN, f"domain length {dlen} does not match the capability")
    # surrogateescape keeps arbitrary bytes round-trippable; hostnames are advisory text.
    host = value[1:dpos].decode("utf-8", "surrogateescape")
    domain = value[dpos + 1 :].decode("utf-8", "surrogateescape")
    return Hostname(host, domain)


def _enc_fqdn(cap: Hostname) -> bytes:
    host = cap.hostname.encode("utf-8", "surrogateescape")[:255]
    domain = cap.domain.encode("utf-8", "surrogateescape")[:255]
    return bytes((len(host),)) + host + bytes((len(domain),)) + domain


class CapSpec(NamedTuple):
    name: str
    cls: type
    decode: Callable[[bytes], Capability]
    encode: Callable[..., bytes]


# The registry: one row per capability code we interpret. Nothing else adds to it.
CAPABILITY_TABLE: dict[int, CapSpec] = {
    CAP_MULTIPROTOCOL: CapSpec("multiprotocol", Multiprotocol, _dec_mp, _enc_mp),
    CAP_ROUTE_REFRESH: CapSpec("route-refresh", RouteRefresh, _dec_empty(RouteRefresh), _enc_empty),
    CAP_EXTENDED_NEXTHOP: CapSpec("extended-nexthop", ExtendedNextHop, _dec_enh, _enc_enh),
    CAP_EXTENDED_MESSAGE: CapSpec(
        "extended-message", ExtendedMessage, _dec_empty(ExtendedMessage), _enc_empty
    ),
    CAP_GRACEFUL_RESTART: CapSpec("graceful-restart", GracefulRestart, _dec_gr, _enc_gr),
    CAP_FOUR_OCTET_AS: CapSpec("four-octet-as", FourOctetAS, _dec_as4, _enc_as4),
    CAP_ADD_PATH: CapSpec("add-path", AddPath, _dec_addpath, _enc_addpath),
    CAP_ENHANCED_ROUTE_REFRESH: CapSpec(
        "enhanced-route-refresh",
        EnhancedRouteRefresh,
        _dec_empty(EnhancedRouteRefresh),
        _enc_empty,
    ),
    CAP_FQDN: CapSpec("fqdn", Hostname, _dec_fqdn, _enc_fqdn),
}

# Reverse index for encoding, derived from the table above (not a second registry).
CAPABILITY_CODES: dict[type, int] = {spec.cls: code for code, spec in CAPABILITY_TABLE.items()}


def capability_name(code: int) -> str:
    spec = CAPABILITY_TABLE.get(code)
    return spec.name if spec else f"capability-{code}"


def decode_capability(code: int, value: bytes) -> Capability:
    """One capability TLV value; unknown codes are kept raw rather than rejected."""
    spec = CAPABILITY_TABLE.get(code)
    if spec is None:
        return UnknownCapability(code, bytes(value))
    return spec.decode(bytes(value))


def encode_capability(cap: Capability) -> bytes:
    """Code, length and value of one capability."""
    if isinstance(cap, UnknownCapability):
        code, value = cap.code, cap.value
    else:
        code = CAPABILITY_CODES[type(cap)]
        value = CAPABILITY_TABLE[code].encode(cap)
    if len(value) > 255:
        raise ValueError(f"capability {code} value is {len(value)} bytes, more than 255")
    return bytes((code, len(value))) + value


def _decode_capability_param(value: bytes, offset: int) -> list[Capability]:
    caps: list[Capability] = []
    i = 0
    end = len(value)
    while i < end:
        if i + 2 > end:
            raise NotificationError(
                OPEN_MESSAGE_ERROR,
                UNSPECIFIC,
                b"",
                f"capability header truncated at optional-parameter offset {offset + i}",
            )
        code, clen = value[i], value[i + 1]
        if i + 2 + clen > end:
            raise NotificationError(
                OPEN_MESSAGE_ERROR,
                UNSPECIFIC,
                b"",
                f"capability {code} length {clen} at offset {offset + i} overruns its parameter",
            )
        caps.append(decode_capability(code, value[i + 2 : i + 2 + clen]))
        i += 2 + clen
    return caps


def decode_optional_parameters(data: bytes | memoryview) -> tuple[Capability, ...]:
    """Decode the OPEN body from the Optional Parameters Length octet to its end.

    Handles several parameters, several capabilities per parameter and the RFC 9072
    extended-length form. Offsets in reasons are relative to the length octet.
    """
    buf = bytes(data)
    if not buf:
        raise NotificationError(OPEN_MESSAGE_ERROR, UNSPECIFIC, b"", "no Opt Parm Len octet")
    total = buf[0]
    if total == 255 and len(buf) >= 2 and buf[1] == PARAM_EXTENDED:
        if len(buf) < 4:
            raise NotificationError(
                OPEN_MESSAGE_ERROR, UNSPECIFIC, b"", "extended parameters length truncated"
            )
        total = int.from_bytes(buf[2:4], "big")
        start, hdr = 4, 3
    else:
        start, hdr = 1, 2
    if start + total != len(buf):
        raise NotificationError(
            OPEN_MESSAGE_ERROR,
            UNSPECIFIC,
            b"",
            f"optional parameters length {total} but {len(buf) - start} bytes follow",
        )
    caps: list[Capability] = []
    i = start
    end = len(buf)
    while i < end:
        if i + hdr > end:
            raise NotificationError(
                OPEN_MESSAGE_ERROR, UNSPECIFIC, b"", f"parameter header truncated at offset {i}"
            )
        ptype = buf[i]
        plen = buf[i + 1] if hdr == 2 else int.from_bytes(buf[i + 1 : i + 3], "big")
        vstart = i + hdr
        if vstart + plen > end:
            raise NotificationError(
                OPEN_MESSAGE_ERROR,
                UNSPECIFIC,
                b"",
                f"parameter {ptype} length {plen} at offset {i} overruns the parameters",
            )
        if ptype != PARAM_CAPABILITIES:
            raise NotificationError(
                OPEN_MESSAGE_ERROR,
                UNSUPPORTED_OPTIONAL_PARAMETER,
                b"",
                f"optional parameter type {ptype} at offset {i}",
            )
        caps.extend(_decode_capability_param(buf[vstart : vstart + plen], vstart))
        i = vstart + plen
    return tuple(caps)


def encode_optional_parameters(caps: tuple[Capability, ...] | list[Capability]) -> bytes:
    """Opt Parm Len plus parameters; switches to the RFC 9072 form only when 255 is too small."""
    encoded = [encode_capability(c) for c in caps]
    if not encoded:
        return b"\x00"
    # Pack capabilities into as few type-2 parameters as fit 255 bytes each, as BIRD and FRR do.
    params: list[bytes] = []
    cur = b""
    for tlv in encoded:
        if len(cur) + len(tlv) > 255:
            params.append(cur)
            cur = b""
        cur += tlv
    params.append(cur)
    short = b"".join(bytes((PARAM_CAPABILITIES, len(p))) + p for p in params)
    if len(short) < 255:
        return bytes((len(short),)) + short
    body = b"".join(encoded)
    ext = bytes((PARAM_CAPABILITIES,)) + len(body).to_bytes(2, "big") + body
    return bytes((255, PARAM_EXTENDED)) + len(ext).to_bytes(2, "big") + ext


@dataclass(frozen=True, slots=True)
class Negotiated:
    """What a session agreed in its OPEN exchange; `context` is the codec view of it."""

    families: frozenset[Family]
    asn4: bool
    route_refresh: bool
    enhanced_route_refresh: bool
    addpath_rx: frozenset[Family]
    addpath_tx: frozenset[Family]
    extended_message: bool
    extended_nexthop: frozenset[Family]
    remote_gr: GracefulRestart | None
    hold_time: int
    remote_asn: int
    remote_router_id: int
    hostname: Hostname | None

    @property
    def context(self) -> CodecContext:
        return CodecContext(
            asn4=self.asn4,
            addpath_rx=self.addpath_rx,
            addpath_tx=self.addpath_tx,
            extended_message=self.extended_message,
            extended_nexthop=self.extended_nexthop,
        )


def _first(caps: tuple[Capability, ...], cls: type) -> Capability | None:
    for cap in caps:
        if isinstance(cap, cls):
            return cap
    return None


def _addpath_modes(caps: tuple[Capability, ...]) -> dict[Family, int]:
    modes: dict[Family, int] = {}
    for cap in caps:
        if isinstance(cap, AddPath):
            for fam, mode in cap.families:
                modes[fam] = mode
    return modes


def _mp_families(caps: tuple[Capability, ...]) -> frozenset[Family]:
    fams = frozenset(c.family for c in caps if isinstance(c, Multiprotocol))
    # RFC 4760 §8: a speaker that sends no MP capability at all speaks IPv4 unicast only.
    return fams or frozenset({IPV4_UNICAST})


def _has_route_refresh(caps: tuple[Capability, ...]) -> bool:
    return any(
        isinstance(c, RouteRefresh)
        or (isinstance(c, UnknownCapability) and c.code == CAP_ROUTE_REFRESH_CISCO)
        for c in caps
    )


def negotiate(local: Open, remote: Open) -> Negotiated:
    """Combine our OPEN with the peer's. Policy checks (peer AS, required caps) are the FSM's."""
    lc, rc = tuple(local.capabilities), tuple(remote.capabilities)
    families = _mp_families(lc) & _mp_families(rc)
    lmodes, rmodes = _addpath_modes(lc), _addpath_modes(rc)
    # RFC 7911 §4: we receive path ids where we said "receive" and the peer said "send",
    # and we send them where we said "send" and the peer said "receive".
    addpath_rx = frozenset(
        f
        for f in families
        if lmodes.get(f, 0) & ADDPATH_RECEIVE and rmodes.get(f, 0) & ADDPATH_SEND
    )
    addpath_tx = frozenset(
        f
        for f in families
        if lmodes.get(f, 0) & ADDPATH_SEND and rmodes.get(f, 0) & ADDPATH_RECEIVE
    )
    lenh = {(f, nh) for c in lc if isinstance(c, ExtendedNextHop) for f, nh in c.entries}
    renh = {(f, nh) for c in rc if isinstance(c, ExtendedNextHop) for f, nh in c.entries}
    extended_nexthop = frozenset(f for f, nh in lenh & renh if nh == AFI_IPV6 and f in families)
    rgr = _first(rc, GracefulRestart)
    rhost = _first(rc, Hostname)
    return Negotiated(
        families=families,
        asn4=_first(lc, FourOctetAS) is not None and _first(rc, FourOctetAS) is not None,
        route_refresh=_has_route_refresh(lc) and _has_route_refresh(rc),
        enhanced_route_refresh=_first(lc, EnhancedRouteRefresh) is not None
        and _first(rc, EnhancedRouteRefresh) is not None,
        addpath_rx=addpath_rx,
        addpath_tx=addpath_tx,
        extended_message=_first(lc, ExtendedMessage) is not None
        and _first(rc, ExtendedMessage) is not None,
        extended_nexthop=extended_nexthop,
        remote_gr=rgr if isinstance(rgr, GracefulRestart) else None,
        hold_time=min(local.hold_time, remote.hold_time),
        remote_asn=remote.asn,
        remote_router_id=remote.router_id,
        hostname=rhost if isinstance(rhost, Hostname) else None,
    )
