"""rtnetlink route messages, packed and parsed by hand: RTM_NEWROUTE/DELROUTE/GETROUTE, acks, links.

Plain functions over bytes with a frozen context (protocol, table, metric); no sockets here.
Packing ourselves is what makes bulk writes fast (DESIGN.md principle 7); parsing ourselves
lets dumps and the route monitor skip what is not in our table without building objects.
"""

from __future__ import annotations

import errno as errno_mod
import os
import socket
import struct
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

from bgpd.fib.types import (
    RTN_BLACKHOLE,
    RTN_UNICAST,
    KernelRoute,
    NextHop,
    Prefix,
    Route,
    bits,
)

# netlink header types and flags (linux/netlink.h)
NLMSG_NOOP = 1
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_MULTI = 0x2
NLM_F_ACK = 0x4
NLM_F_DUMP = 0x300
NLM_F_REPLACE = 0x100
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400
NLM_F_CAPPED = 0x100  # on NLMSG_ERROR: the original payload is not echoed
NLM_F_ACK_TLVS = 0x200  # on NLMSG_ERROR: extended-ack attributes follow
NLMSGERR_ATTR_MSG = 1

# rtnetlink (linux/rtnetlink.h)
RTM_NEWLINK = 16
RTM_DELLINK = 17
RTM_GETLINK = 18
RTM_NEWROUTE = 24
RTM_DELROUTE = 25
RTM_GETROUTE = 26
RTA_DST = 1
RTA_OIF = 4
RTA_GATEWAY = 5
RTA_PRIORITY = 6
RTA_MULTIPATH = 9
RTA_TABLE = 15
RTA_VIA = 18
RT_SCOPE_UNIVERSE = 0
RT_SCOPE_LINK = 253
RT_SCOPE_NOWHERE = 255
RTNH_F_ONLINK = 0x4
IFLA_IFNAME = 3
IFF_UP = 0x1
IFF_LOWER_UP = 0x10000

# multicast groups for the monitor (bit numbers are group - 1)
RTMGRP_LINK = 0x1
RTMGRP_IPV4_ROUTE = 0x40
RTMGRP_IPV6_ROUTE = 0x400

FAMILY = {4: socket.AF_INET, 6: socket.AF_INET6}
VERSION = {socket.AF_INET: 4, socket.AF_INET6: 6}

NLMSGHDR = struct.Struct("=IHHII")
RTMSG = struct.Struct("=BBBBBBBBI")
RTATTR = struct.Struct("=HH")
RTNEXTHOP = struct.Struct("=HBBi")
IFINFOMSG = struct.Struct("=BxHiII")
U32 = struct.Struct("=I")
I32 = struct.Struct("=i")
# The hot case packed in one call: header, rtmsg, RTA_TABLE, RTA_DST(v4).
_HEAD_V4 = struct.Struct("=IHHII BBBBBBBBI HHI HH4s")
_HEAD_V6 = struct.Struct("=IHHII BBBBBBBBI HHI HH16s")


@dataclass(frozen=True, slots=True)
class RouteContext:
    """What every message of one writer carries: our rtm_protocol, table and metric."""

    protocol: int
    table: int = 254
    metric: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.protocol <= 255:
            raise ValueError(f"protocol {self.protocol} outside 1..255")
        if not 1 <= self.table <= 0xFFFFFFFF or self.table in (253, 255):
            raise ValueError(f"table {self.table} must be 1..2^32-1 and not default/local")
        if not 0 <= self.metric <= 0xFFFFFFFF:
            raise ValueError(f"metric {self.metric} outside 0..2^32-1")


class PackError(ValueError):
    """A route cannot be expressed as a message (say, an unknown device); carries an errno."""

    def __init__(self, errno: int, message: str) -> None:
        super().__init__(message)
        self.errno = errno


def _attr(kind: int, payload: bytes) -> bytes:
    n = 4 + len(payload)
    return RTATTR.pack(n, kind) + payload + b"\0" * (-n & 3)


def _addr_bytes(version: int, addr: int) -> bytes:
    return addr.to_bytes(4 if version == 4 else 16, "big")


def _ifindex(hop: NextHop, links: Mapping[str, int]) -> int:
    if hop.device is None:
        return 0
    index = links.get(hop.device)
    if index is None:
        raise PackError(errno_mod.ENODEV, f"no device {hop.device!r}")
    return index


def _header(
    msg_type: int,
    flags: int,
    seq: int,
    version: int,
    dst: Prefix,
    ctx: RouteContext,
    scope: int,
    rtype: int,
    rtflags: int,
    body_len: int,
) -> bytes:
    table8 = ctx.table if ctx.table < 256 else 0
    head = _HEAD_V4 if version == 4 else _HEAD_V6
    return head.pack(
        head.size + body_len,
        msg_type,
        flags,
        seq,
        0,
        FAMILY[version],
        dst[2],
        0,
        0,
        table8,
        ctx.protocol,
        scope,
        rtype,
        rtflags,
        8,
        RTA_TABLE,
        ctx.table,
        head.size - 36,
        RTA_DST,
        _addr_bytes(version, dst[1]),
    )


# What a route's next hops pack to: (attributes after RTA_DST, scope, type, rtm_flags).
PathBytes = tuple[bytes, int, int, int]


def pack_paths(route: Route, ctx: RouteContext, links: Mapping[str, int]) -> PathBytes:
    """The part of RTM_NEWROUTE that depends on the next hops only; thousands of routes share
    one next-hop set, so a writer caches this per (version, next hops, blackhole)."""
    version = route.version
    body = b""
    if ctx.metric:
        body += RTATTR.pack(8, RTA_PRIORITY) + U32.pack(ctx.metric)
    rtflags = 0
    scope = RT_SCOPE_UNIVERSE
    if route.blackhole:
        return body, scope, RTN_BLACKHOLE, 0
    hops = route.nexthops
    if len(hops) == 1:
        hop = hops[0]
        if hop.gateway is not None:
            body += _attr(RTA_GATEWAY, _addr_bytes(version, hop.gateway))
        elif version == 4:
            scope = RT_SCOPE_LINK
        if hop.device is not None:
            body += RTATTR.pack(8, RTA_OIF) + I32.pack(_ifindex(hop, links))
        if hop.onlink:
            rtflags = RTNH_F_ONLINK
        return body, scope, RTN_UNICAST, rtflags
    parts = []
    for hop in hops:
        gw = b""
        if hop.gateway is not None:
            gw = _attr(RTA_GATEWAY, _addr_bytes(version, hop.gateway))
        flags = RTNH_F_ONLINK if hop.onlink else 0
        parts.append(RTNEXTHOP.pack(8 + len(gw), flags, 0, _ifindex(hop, links)) + gw)
    return body + _attr(RTA_MULTIPATH, b"".join(parts)), scope, RTN_UNICAST, 0


def pack_newroute(
    route: Route,
    ctx: RouteContext,
    seq: int,
    links: Mapping[str, int],
    *,
    replace: bool,
    ack: bool = False,
    paths: PathBytes | None = None,
) -> bytes:
    """RTM_NEWROUTE for ``route``: REPLACE for a route of ours, else EXCL so that an existing
    route of another protocol is refused (EEXIST) rather than overwritten. ``paths`` is
    ``pack_paths(route, ctx, links)`` when the caller has it cached."""
    flags = NLM_F_REQUEST | NLM_F_CREATE | (NLM_F_REPLACE if replace else NLM_F_EXCL)
    if ack:
        flags |= NLM_F_ACK
    body, scope, rtype, rtflags = paths or pack_paths(route, ctx, links)
    return (
        _header(
            RTM_NEWROUTE,
            flags,
            seq,
            route.prefix[0],
            route.prefix,
            ctx,
            scope,
            rtype,
            rtflags,
            len(body),
        )
        + body
    )


def pack_delroute(prefix: Prefix, ctx: RouteContext, seq: int, *, ack: bool = False) -> bytes:
    """RTM_DELROUTE matching only our protocol (and metric, if set), so a route of another
    protocol to the same prefix is never the one removed."""
    flags = NLM_F_REQUEST | (NLM_F_ACK if ack else 0)
    body = RTATTR.pack(8, RTA_PRIORITY) + U32.pack(ctx.metric) if ctx.metric else b""
    return (
        _header(RTM_DELROUTE, flags, seq, prefix[0], prefix, ctx, RT_SCOPE_NOWHERE, 0, 0, len(body))
        + body
    )


@dataclass(frozen=True, slots=True)
class Template:
    """One kind of route message (version, next hops, flags) with only its sequence number,
    prefix length and destination left open: a bulk write packs each route with one call,
    ``pack_from``, instead of rebuilding the same header and next hops every time."""

    pack: Callable[..., bytes]
    head: bytes  # nlmsg_len, nlmsg_type, nlmsg_flags
    family: int
    middle: bytes  # the rest of rtmsg, RTA_TABLE and the RTA_DST header
    alen: int
    body: bytes  # the attributes after RTA_DST


def _template(dummy: bytes, version: int, body: bytes) -> Template:
    alen = 4 if version == 4 else 16
    st = struct.Struct(f"=8sI4xBB22s{alen}s{len(body)}s")
    return Template(st.pack, dummy[:8], FAMILY[version], dummy[18:40], alen, body)


def newroute_template(
    version: int, paths: PathBytes, ctx: RouteContext, *, replace: bool
) -> Template:
    """The Template of ``pack_newroute`` (without ack) for routes of ``version`` whose next
    hops pack to ``paths``."""
    flags = NLM_F_REQUEST | NLM_F_CREATE | (NLM_F_REPLACE if replace else NLM_F_EXCL)
    body, scope, rtype, rtflags = paths
    dummy = _header(
        RTM_NEWROUTE, flags, 0, version, (version, 0, 0), ctx, scope, rtype, rtflags, len(body)
    )
    return _template(dummy, version, body)


def delroute_template(version: int, ctx: RouteContext) -> Template:
    """The Template of ``pack_delroute`` (without ack) for ``version``."""
    body = RTATTR.pack(8, RTA_PRIORITY) + U32.pack(ctx.metric) if ctx.metric else b""
    dummy = _header(
        RTM_DELROUTE, NLM_F_REQUEST, 0, version, (version, 0, 0), ctx, RT_SCOPE_NOWHERE, 0, 0,
        len(body),
    )  # fmt: skip
    return _template(dummy, version, body)


def pack_from(t: Template, seq: int, prefix: Prefix) -> bytes:
    """The message of Template ``t`` for ``prefix``: the same bytes as pack_newroute or
    pack_delroute (without ack) would give."""
    return t.pack(
        t.head, seq, t.family, prefix[2], t.middle, prefix[1].to_bytes(t.alen, "big"), t.body
    )


def pack_route_dump(version: int, seq: int) -> bytes:
    """RTM_GETROUTE dump of one family (all tables; the parser filters)."""
    return NLMSGHDR.pack(28, RTM_GETROUTE, NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + RTMSG.pack(
        FAMILY[version], 0, 0, 0, 0, 0, 0, 0, 0
    )


def pack_link_dump(seq: int) -> bytes:
    """RTM_GETLINK dump: device names and state."""
    return NLMSGHDR.pack(32, RTM_GETLINK, NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + IFINFOMSG.pack(
        0, 0, 0, 0, 0
    )


# -- parsing ---------------------------------------------------------------------------------


def iter_messages(buf: bytes | memoryview) -> Iterator[tuple[int, int, int, int, int]]:
    """(type, flags, seq, payload start, end) for each netlink message in ``buf``.

    Raises ValueError naming the offset on a truncated or malformed header.
    """
    off = 0
    n = len(buf)
    while off + 16 <= n:
        length, mtype, flags, seq, _pid = NLMSGHDR.unpack_from(buf, off)
        if length < 16 or off + length > n:
            raise ValueError(f"netlink message at offset {off}: bad length {length}")
        yield mtype, flags, seq, off + 16, off + length
        off += (length + 3) & ~3
    if off < n and n - off >= 4:
        raise ValueError(f"netlink message at offset {off}: {n - off} trailing bytes")


def parse_error(buf: bytes | memoryview, start: int, end: int, flags: int) -> tuple[int, str]:
    """(errno, text) of an NLMSG_ERROR payload; errno 0 is an ack. Text comes from the
    kernel's extended ack when it sent one, else strerror."""
    if end - start < 4:
        raise ValueError(f"NLMSG_ERROR at offset {start}: payload {end - start} bytes, need 4")
    (err,) = I32.unpack_from(buf, start)
    err = -err
    text = ""
    if err and flags & NLM_F_ACK_TLVS and end - start >= 20:
        off = start + 4
        (orig_len,) = U32.unpack_from(buf, off)
        off += 16 if flags & NLM_F_CAPPED else (orig_len + 3) & ~3
        while off + 4 <= end:
            alen, akind = RTATTR.unpack_from(buf, off)
            if alen < 4 or off + alen > end:
                break
            if akind == NLMSGERR_ATTR_MSG:
                text = bytes(buf[off + 4 : off + alen]).rstrip(b"\0").decode(errors="replace")
            off += (alen + 3) & ~3
    if err and not text:
        text = os.strerror(err)
    return err, text


def _attrs(buf: bytes | memoryview, off: int, end: int) -> Iterator[tuple[int, int, int]]:
    while off + 4 <= end:
        alen, akind = RTATTR.unpack_from(buf, off)
        if alen < 4 or off + alen > end:
            raise ValueError(f"route attribute at offset {off}: bad length {alen}")
        yield akind & 0x3FFF, off + 4, off + alen
        off += (alen + 3) & ~3


def route_header(buf: bytes | memoryview, start: int) -> tuple[int, int, int, int, int]:
    """(version, dst_len, table8, protocol, type) from an rtmsg, for cheap filtering."""
    family, dst_len, _src, _tos, table8, proto, _scope, rtype, _flags = RTMSG.unpack_from(
        buf, start
    )
    return VERSION.get(family, 0), dst_len, table8, proto, rtype


def route_key(buf: bytes | memoryview, start: int, end: int) -> tuple[Prefix, int, int, int]:
    """(prefix, table, protocol, type) of a route message without building a route: the
    monitor's fast path for the echoes of our own writes."""
    family, dst_len, _src, _tos, table, proto, _scope, rtype, _flags = RTMSG.unpack_from(buf, start)
    version = VERSION.get(family, 0)
    dst = 0
    for akind, a, b in _attrs(buf, start + RTMSG.size, end):
        if akind == RTA_DST:
            dst = int.from_bytes(buf[a:b], "big")
        elif akind == RTA_TABLE and b - a == 4:
            (table,) = U32.unpack_from(buf, a)
    return (version, dst, dst_len), table, proto, rtype


def parse_route(
    buf: bytes | memoryview, start: int, end: int, ifnames: Mapping[int, str]
) -> KernelRoute | None:
    """A route message as a KernelRoute (None for families other than IPv4/IPv6).

    Devices are named through ``ifnames``; an unknown ifindex becomes ``if#<n>``.
    """
    if end - start < RTMSG.size:
        raise ValueError(f"route message at offset {start}: {end - start} bytes, need 12")
    family, dst_len, _src, _tos, table, proto, _scope, rtype, rtflags = RTMSG.unpack_from(
        buf, start
    )
    version = VERSION.get(family)
    if version is None:
        return None
    width = bits(version)
    alen = width // 8
    dst = 0
    metric = 0
    oif = 0
    gateway: int | None = None
    multipath: list[tuple[int | None, int, bool]] = []
    foreign_via = False
    for akind, a, b in _attrs(buf, start + RTMSG.size, end):
        if akind == RTA_DST and b - a == alen:
            dst = int.from_bytes(buf[a:b], "big")
        elif akind == RTA_GATEWAY and b - a == alen:
            gateway = int.from_bytes(buf[a:b], "big")
        elif akind == RTA_OIF and b - a == 4:
            (oif,) = I32.unpack_from(buf, a)
        elif akind == RTA_PRIORITY and b - a == 4:
            (metric,) = U32.unpack_from(buf, a)
        elif akind == RTA_TABLE and b - a == 4:
            (table,) = U32.unpack_from(buf, a)
        elif akind == RTA_VIA:
            foreign_via = True
        elif akind == RTA_MULTIPATH:
            off = a
            while off + 8 <= b:
                hlen, hflags, _hops, hindex = RTNEXTHOP.unpack_from(buf, off)
                if hlen < 8 or off + hlen > b:
                    raise ValueError(f"rtnexthop at offset {off}: bad length {hlen}")
                hgw: int | None = None
                for k, c, d in _attrs(buf, off + 8, off + hlen):
                    if k == RTA_GATEWAY and d - c == alen:
                        hgw = int.from_bytes(buf[c:d], "big")
                    elif k == RTA_VIA:
                        foreign_via = True
                multipath.append((hgw, hindex, bool(hflags & RTNH_F_ONLINK)))
                off += (hlen + 3) & ~3
    if dst_len > width:
        raise ValueError(f"route message at offset {start}: prefix length {dst_len}")
    prefix = (version, dst, dst_len)
    paths = multipath or ([(gateway, oif, bool(rtflags & RTNH_F_ONLINK))] if oif or gateway else [])
    oifs = tuple(p[1] for p in paths if p[1])
    route: Route | None = None
    try:
        if rtype == RTN_BLACKHOLE:
            route = Route(prefix, blackhole=True)
        elif rtype == RTN_UNICAST and paths and not foreign_via:
            route = Route(
                prefix,
                tuple(
                    NextHop(gw, _name(ifnames, idx) if idx else None, onlink)
                    for gw, idx, onlink in paths
                ),
            )
    except ValueError:
        route = None  # e.g. host bits set in a foreign route: still reported, never rewritten
    return KernelRoute(prefix, proto, table, metric, rtype, route, oifs)


def _name(ifnames: Mapping[int, str], index: int) -> str:
    return ifnames.get(index) or f"if#{index}"


def parse_link(buf: bytes | memoryview, start: int, end: int) -> tuple[int, str, bool]:
    """(ifindex, name, up) of an RTM_NEWLINK; up means admin up and carrier (IFF_LOWER_UP)."""
    if end - start < IFINFOMSG.size:
        raise ValueError(f"link message at offset {start}: {end - start} bytes, need 16")
    _family, _type, index, flags, _change = IFINFOMSG.unpack_from(buf, start)
    name = ""
    for akind, a, b in _attrs(buf, start + IFINFOMSG.size, end):
        if akind == IFLA_IFNAME:
            name = bytes(buf[a:b]).rstrip(b"\0").decode(errors="replace")
    return index, name, bool(flags & IFF_UP) and bool(flags & IFF_LOWER_UP)
