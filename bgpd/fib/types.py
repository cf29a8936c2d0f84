"""Plain values of the FIB writer: prefixes, next hops, routes, kernel routes and route errors.

Knows nothing of BGP or netlink; the RIB hands these in and the writer turns them into messages.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

# (ip version 4|6, address as int, prefix length), like the speaker's (int, len) plus a version
# so that one dict can hold both families.
Prefix = tuple[int, int, int]

# Default rtm_protocol of our routes; registered as "routemesh" in docs/fib.md (rt_protocols).
DEFAULT_PROTOCOL = 80
MAIN_TABLE = 254

# Kernel route types we read back (rtm_type); see docs/fib.md.
RTN_UNICAST = 1
RTN_LOCAL = 2
RTN_BLACKHOLE = 6
RTN_UNREACHABLE = 7
RTN_PROHIBIT = 8


def bits(version: int) -> int:
    """Address width of an IP version."""
    return 32 if version == 4 else 128


def check_prefix(prefix: Prefix) -> None:
    """Raise ValueError naming what is wrong with ``prefix`` (version, length, host bits)."""
    version, addr, length = prefix
    if version not in (4, 6):
        raise ValueError(f"prefix {prefix!r}: ip version must be 4 or 6, not {version!r}")
    width = bits(version)
    if not 0 <= length <= width:
        raise ValueError(f"prefix {prefix!r}: length {length} outside 0..{width}")
    if not 0 <= addr < (1 << width):
        raise ValueError(f"prefix {prefix!r}: address does not fit IPv{version}")
    if addr & ((1 << (width - length)) - 1):
        raise ValueError(f"prefix {prefix_str(prefix)}: host bits set")


def parse_prefix(text: str) -> Prefix:
    """'10.244.1.0/26' or 'fd00::/64' as a Prefix (host bits must be clear)."""
    net = ipaddress.ip_network(text, strict=True)
    return (net.version, int(net.network_address), net.prefixlen)


def prefix_str(prefix: Prefix) -> str:
    """The usual text form, e.g. '10.244.1.0/26'."""
    version, addr, length = prefix
    ip = ipaddress.IPv4Address(addr) if version == 4 else ipaddress.IPv6Address(addr)
    return f"{ip}/{length}"


def addr_str(version: int, addr: int) -> str:
    """An address int in text form."""
    return str(ipaddress.IPv4Address(addr) if version == 4 else ipaddress.IPv6Address(addr))


def parse_addr(text: str) -> tuple[int, int]:
    """'198.18.0.1' → (4, int); 'fd00::1' → (6, int)."""
    ip = ipaddress.ip_address(text)
    return ip.version, int(ip)


@dataclass(frozen=True, slots=True)
class NextHop:
    """One path: a gateway address (same version as the prefix), and/or an output device.

    ``onlink`` tells the kernel the gateway is on ``device`` even without a connected route
    (IPIP's ``via <node> dev tunl0 onlink``, VXLAN's remote VTEP on ``vxlan.calico``).
    """

    gateway: int | None
    device: str | None = None
    onlink: bool = False

    def __post_init__(self) -> None:
        if self.gateway is None and self.device is None:
            raise ValueError("next hop needs a gateway or a device")
        if self.onlink and self.device is None:
            raise ValueError("an onlink next hop needs a device")
        if self.device is not None and not 0 < len(self.device) < 16:
            raise ValueError(f"device name {self.device!r} must be 1..15 characters")

    def sort_key(self) -> tuple[int, int, str, bool]:
        gw = -1 if self.gateway is None else self.gateway
        return (gw, 0, self.device or "", self.onlink)


@dataclass(frozen=True, slots=True)
class Route:
    """What the kernel should hold for one prefix: one next hop, several (ECMP), or a blackhole.

    Next hops are kept sorted and deduplicated, so equal routes compare and hash equal whatever
    order the RIB listed its multipath set in.
    """

    prefix: Prefix
    nexthops: tuple[NextHop, ...] = ()
    blackhole: bool = False

    def __post_init__(self) -> None:
        check_prefix(self.prefix)
        hops = tuple(sorted(set(self.nexthops), key=NextHop.sort_key))
        if hops != self.nexthops:
            object.__setattr__(self, "nexthops", hops)
        if self.blackhole and hops:
            raise ValueError(f"route {prefix_str(self.prefix)}: a blackhole has no next hops")
        if not self.blackhole and not hops:
            raise ValueError(f"route {prefix_str(self.prefix)}: needs a next hop or blackhole")
        width = bits(self.prefix[0])
        for hop in hops:
            if hop.gateway is not None and not 0 <= hop.gateway < (1 << width):
                raise ValueError(
                    f"route {prefix_str(self.prefix)}: gateway does not fit IPv{self.prefix[0]}"
                )

    @property
    def version(self) -> int:
        return self.prefix[0]

    @classmethod
    def via(cls, prefix: Prefix, gateways: tuple[int, ...] | list[int]) -> Route:
        """A route through plain gateway addresses (a RIB multipath set's next hops)."""
        return cls(prefix, tuple(NextHop(g) for g in gateways))

    def __str__(self) -> str:
        if self.blackhole:
            return f"blackhole {prefix_str(self.prefix)}"
        hops = []
        for hop in self.nexthops:
            parts = []
            if hop.gateway is not None:
                parts.append(f"via {addr_str(self.version, hop.gateway)}")
            if hop.device is not None:
                parts.append(f"dev {hop.device}")
            if hop.onlink:
                parts.append("onlink")
            hops.append(" ".join(parts))
        return f"{prefix_str(self.prefix)} " + " nexthop ".join(hops)


# A route's paths without its prefix: sorted, deduplicated next hops, or () for a blackhole
# (a Route has next hops exactly when it is not a blackhole). The FIB keeps one interned Hops
# per distinct next-hop set, not one Route per prefix: 500k prefixes share a handful.
Hops = tuple[NextHop, ...]


def hops_of(route: Route) -> Hops:
    """The Hops of ``route`` (() for a blackhole)."""
    return () if route.blackhole else route.nexthops


def route_of(prefix: Prefix, hops: Hops) -> Route:
    """The Route at ``prefix`` with ``hops`` (() is a blackhole)."""
    return Route(prefix, hops, blackhole=not hops)


@dataclass(frozen=True, slots=True)
class KernelRoute:
    """A route as a kernel dump or event shows it, with who owns it.

    ``route`` is None for kinds we never write (local, unreachable, multicast…); ``kind`` is the
    rtm_type so a conflict report can still name them.
    """

    prefix: Prefix
    protocol: int
    table: int
    metric: int
    kind: int
    route: Route | None = None
    # Output ifindexes of the paths, for connected-route tracking (device names may be unknown).
    oifs: tuple[int, ...] = field(default=(), compare=False)


@dataclass(frozen=True, slots=True)
class RouteError:
    """The kernel (or the writer) refused one route; names the route and the reason."""

    prefix: Prefix
    op: str  # "add", "replace" or "delete"
    errno: int
    message: str
    route: Route | None = None

    def __str__(self) -> str:
        what = str(self.route) if self.route is not None else prefix_str(self.prefix)
        return f"{self.op} {what}: {self.message} (errno {self.errno})"


class FibError(Exception):
    """One route could not be written; ``.error`` says which and why."""

    def __init__(self, error: RouteError) -> None:
        super().__init__(str(error))
        self.error = error
