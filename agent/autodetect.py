"""The node's own address, found the way calico/node finds it (IP_AUTODETECTION_METHOD).

Methods: ``first-found``, ``interface=REGEX[,REGEX]``, ``skip-interface=REGEX[,REGEX]``,
``can-reach=DEST`` and ``cidr=CIDR[,CIDR]``. The result is an interface address with its
prefix length (``198.18.0.2/24``), because CrossSubnet needs the node's subnet.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface

# Interfaces calico/node never picks with first-found: container, tunnel and virtual links.
DEFAULT_SKIP = (
    r"^docker.*",
    r"^cbr.*",
    r"^dummy.*",
    r"^virbr.*",
    r"^lxcbr.*",
    r"^veth.*",
    r"^lo$",
    r"^cali.*",
    r"^tunl.*",
    r"^flannel.*",
    r"^kube-ipvs.*",
    r"^cni.*",
    r"^vxlan\.calico$",
    r"^vxlan-v6\.calico$",
    r"^wireguard\.cali$",
    r"^wg-v6\.cali$",
    r"^nodelocaldns.*",
)


class AutodetectError(ValueError):
    """The method is malformed or found no address; the message says which."""


@dataclass(frozen=True, slots=True)
class HostAddress:
    """One address configured on one interface of this host."""

    ifname: str
    address: IPInterface


def host_addresses() -> list[HostAddress]:
    """Global-scope addresses of this network namespace, interface by interface (netlink)."""
    from pyroute2 import IPRoute

    out: list[HostAddress] = []
    with IPRoute() as ipr:
        names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
        for msg in ipr.get_addr():
            if msg["scope"] != 0:  # RT_SCOPE_UNIVERSE only: no link-local or host addresses
                continue
            addr = msg.get_attr("IFA_ADDRESS")
            if addr is None:
                continue
            iface = ipaddress.ip_interface(f"{addr}/{msg['prefixlen']}")
            out.append(HostAddress(names.get(msg["index"], "?"), iface))
    return out


def _regexes(arg: str, method: str) -> list[re.Pattern[str]]:
    try:
        return [re.compile(part) for part in arg.split(",") if part]
    except re.error as err:
        raise AutodetectError(f"{method}: bad regular expression: {err}") from None


def _usable(addr: IPInterface) -> bool:
    ip = addr.ip
    return not (ip.is_loopback or ip.is_link_local or ip.is_multicast or ip.is_unspecified)


def _first(candidates: Iterable[HostAddress], version: int) -> HostAddress | None:
    for cand in candidates:
        if cand.address.version == version and _usable(cand.address):
            return cand
    return None


def _source_for(dest: str) -> str:
    """The address the kernel would send from toward ``dest`` (no packet is sent)."""
    ip = ipaddress.ip_address(dest)
    family = socket.AF_INET if ip.version == 4 else socket.AF_INET6
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.connect((dest, 9))
        return sock.getsockname()[0]


def autodetect(
    method: str, version: int = 4, addresses: Sequence[HostAddress] | None = None
) -> IPInterface:
    """Run one Calico autodetection method; ``addresses`` defaults to this host's own."""
    method = method.strip() or "first-found"
    name, _, arg = method.partition("=")
    if name in ("interface", "skip-interface", "can-reach", "cidr") and not arg:
        raise AutodetectError(f"{name}: needs a value, e.g. {name}=…")
    addrs = list(host_addresses() if addresses is None else addresses)
    found: HostAddress | None
    if name == "first-found":
        skip = [re.compile(p) for p in DEFAULT_SKIP]
        found = _first((a for a in addrs if not any(r.match(a.ifname) for r in skip)), version)
    elif name == "interface":
        pats = _regexes(arg, name)
        found = None
        for pat in pats:
            found = _first((a for a in addrs if pat.match(a.ifname)), version)
            if found is not None:
                break
    elif name == "skip-interface":
        pats = _regexes(arg, name) + [re.compile(p) for p in DEFAULT_SKIP]
        found = _first((a for a in addrs if not any(p.match(a.ifname) for p in pats)), version)
    elif name == "cidr":
        try:
            nets = [ipaddress.ip_network(c, strict=False) for c in arg.split(",") if c]
        except ValueError as err:
            raise AutodetectError(f"cidr: {err}") from None
        # Workload, tunnel and container links never carry the node address, even inside
        # the CIDR (a pool can overlap it).
        skip = [re.compile(p) for p in DEFAULT_SKIP]
        found = _first(
            (
                a
                for a in addrs
                if any(a.address.ip in n for n in nets) and not any(r.match(a.ifname) for r in skip)
            ),
            version,
        )
    elif name == "can-reach":
        try:
            source = ipaddress.ip_address(_source_for(arg))
        except (OSError, ValueError) as err:
            raise AutodetectError(f"can-reach={arg}: {err}") from None
        found = next((a for a in addrs if a.address.ip == source), None)
    else:
        raise AutodetectError(
            f"unknown method {name!r}: use first-found, interface=, skip-interface=, "
            "can-reach= or cidr="
        )
    if found is None:
        raise AutodetectError(f"{method}: no IPv{version} address found")
    return found.address
