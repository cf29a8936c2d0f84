"""Plain value types shared by the codec, FSM and RIB: families, prefixes, message type codes."""

from __future__ import annotations

import ipaddress
from typing import NamedTuple

AFI_IPV4 = 1
AFI_IPV6 = 2
SAFI_UNICAST = 1


class Family(NamedTuple):
    """An address family: (AFI, SAFI)."""

    afi: int
    safi: int

    @property
    def name(self) -> str:
        return FAMILY_NAMES.get(self, f"afi{self.afi}-safi{self.safi}")


IPV4_UNICAST = Family(AFI_IPV4, SAFI_UNICAST)
IPV6_UNICAST = Family(AFI_IPV6, SAFI_UNICAST)
FAMILY_NAMES: dict[Family, str] = {IPV4_UNICAST: "ipv4-unicast", IPV6_UNICAST: "ipv6-unicast"}
FAMILIES_BY_NAME: dict[str, Family] = {v: k for k, v in FAMILY_NAMES.items()}
SUPPORTED_FAMILIES: frozenset[Family] = frozenset(FAMILY_NAMES)

# Message type codes (RFC 4271 §4.1, RFC 2918).
MSG_OPEN = 1
MSG_UPDATE = 2
MSG_NOTIFICATION = 3
MSG_KEEPALIVE = 4
MSG_ROUTE_REFRESH = 5

HEADER_LEN = 19
MARKER = b"\xff" * 16
MAX_MESSAGE_LEN = 4096
MAX_EXTENDED_MESSAGE_LEN = 65535

# A prefix on the wire and in the RIB is an (address-as-int, prefix-length) pair; with ADD-PATH
# an NLRI entry is (address, length, path_id), path_id 0 when ADD-PATH is not negotiated.
Prefix = tuple[int, int]
NLRI = tuple[int, int, int]


def afi_bits(afi: int) -> int:
    """Address width in bits for an AFI."""
    return 32 if afi == AFI_IPV4 else 128


def prefix_from_str(text: str) -> tuple[Family, Prefix]:
    """Parse '10.0.0.0/24' or 'fd00::/64' into its family and integer prefix."""
    net = ipaddress.ip_network(text, strict=True)
    fam = IPV4_UNICAST if net.version == 4 else IPV6_UNICAST
    return fam, (int(net.network_address), net.prefixlen)


def prefix_to_str(afi: int, prefix: Prefix) -> str:
    """Format an integer prefix the way `ip route` prints it."""
    addr, plen = prefix
    if afi == AFI_IPV4:
        return f"{ipaddress.IPv4Address(addr)}/{plen}"
    return f"{ipaddress.IPv6Address(addr)}/{plen}"


def ip_to_str(addr: int, afi: int) -> str:
    """Format an integer address of the given AFI."""
    return str(ipaddress.IPv4Address(addr) if afi == AFI_IPV4 else ipaddress.IPv6Address(addr))
