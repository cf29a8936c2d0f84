"""Workload endpoint plumbing in the kernel: the cali veth pair, its addresses, gateway routes,
host sysctls and the host's /32 (/128) route, created, checked, deleted and reconciled.

Calico's layout: the host side is ``cali`` + 11 hex digits of sha1("<namespace>.<name>") with
MAC ee:ee:ee:ee:ee:ee and proxy ARP, so the workload's default route via 169.254.1.1 (IPv6:
the host side's link-local fe80::ecee:eeff:feee:eeee) always resolves to the host. Every host
route we add carries our own rtm_protocol, so reconcile can tell ours from anyone else's.
"""

from __future__ import annotations

import errno
import hashlib
import ipaddress
import logging
import os
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from pyroute2 import AsyncIPRoute
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl.ifaddrmsg import IFA_F_NODAD

from agent.netlink import (
    collect,
    link_by_name,
    link_kind,
    link_names,
    netns_exists,
    open_netns,
    read_sysctls,
    rtnl,
    write_sysctls,
)

log = logging.getLogger(__name__)

VETH_PREFIX = "cali"
HOST_MAC = "ee:ee:ee:ee:ee:ee"
IPV4_GATEWAY = "169.254.1.1"
# The EUI-64 link-local of HOST_MAC; we add it ourselves (no DAD) so it is usable at once.
IPV6_GATEWAY = "fe80::ecee:eeff:feee:eeee"
# The BGP FIB writer uses 80; endpoint routes get their own number so neither prunes the other.
DEFAULT_ROUTE_PROTOCOL = 81
DEFAULT_MTU = 1500
_SCOPE_LINK = 253
_MAIN_TABLE = 254

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class EndpointError(Exception):
    """The endpoint cannot be plumbed as asked (a name clash, a missing netns, a kernel error)."""


def workload_id(namespace: str, name: str) -> str:
    """The id Calico hashes for a Kubernetes pod: "<namespace>.<pod>"."""
    return f"{namespace}.{name}"


def veth_name(workload: str, prefix: str = VETH_PREFIX) -> str:
    """Host-side interface name: prefix + sha1 hex, 15 characters (Linux IFNAMSIZ - 1)."""
    digest = hashlib.sha1(workload.encode()).hexdigest()
    return prefix + digest[: 15 - len(prefix)]


@dataclass(frozen=True)
class EndpointSpec:
    """What one workload interface should look like."""

    namespace: str
    name: str
    netns: str
    addresses: tuple[IPAddress, ...]
    ifname: str = "eth0"
    mtu: int = DEFAULT_MTU
    prefix: str = VETH_PREFIX

    @property
    def host_ifname(self) -> str:
        return veth_name(workload_id(self.namespace, self.name), self.prefix)


@dataclass(frozen=True)
class Plumbed:
    """What create() built: names, MACs and addresses, as a CNI result needs them."""

    host_ifname: str
    host_mac: str
    ifname: str
    mac: str
    netns: str
    addresses: tuple[IPAddress, ...]
    mtu: int


@dataclass(frozen=True)
class HostEndpoint:
    """One cali link found on the host, with the addresses our routes send to it."""

    host_ifname: str
    index: int
    mtu: int
    up: bool
    addresses: tuple[IPAddress, ...]


@dataclass
class ReconcileReport:
    removed: list[str] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)
    in_sync: list[str] = field(default_factory=list)
    stale_routes: list[str] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)


def _host_sysctls(ifname: str, ipv6: bool) -> list[tuple[str, str]]:
    items = [
        (f"net/ipv4/conf/{ifname}/proxy_arp", "1"),
        (f"net/ipv4/neigh/{ifname}/proxy_delay", "0"),
        (f"net/ipv4/conf/{ifname}/forwarding", "1"),
    ]
    if ipv6:
        items += [
            (f"net/ipv6/conf/{ifname}/proxy_ndp", "1"),
            (f"net/ipv6/conf/{ifname}/forwarding", "1"),
            (f"net/ipv6/conf/{ifname}/accept_ra", "0"),
        ]
    return items


def _plen(addr: IPAddress) -> int:
    return 32 if addr.version == 4 else 128


def _family(addr: IPAddress) -> int:
    return socket.AF_INET if addr.version == 4 else socket.AF_INET6


def _nl_error(exc: NetlinkError, what: str) -> EndpointError:
    return EndpointError(f"{what}: {os.strerror(exc.code)} (netlink error {exc.code})")


class EndpointDataplane:
    """Creates, checks, deletes and reconciles workload veths in one host namespace.

    ``host_netns`` None means our own namespace (the agent or the CNI plugin on a real host);
    tests pass a lab namespace so nothing touches the machine's own network.
    """

    def __init__(
        self,
        *,
        host_netns: str | None = None,
        route_protocol: int = DEFAULT_ROUTE_PROTOCOL,
        prefix: str = VETH_PREFIX,
    ) -> None:
        if not 0 < route_protocol < 256:
            raise ValueError(f"route_protocol {route_protocol} is not 1..255")
        self.host_netns = host_netns
        self.route_protocol = route_protocol
        self.prefix = prefix

    # -- create -----------------------------------------------------------------------------

    async def create(self, spec: EndpointSpec) -> Plumbed:
        """Build (or repair) the endpoint; running it twice changes nothing the second time."""
        if not spec.addresses:
            raise EndpointError(f"endpoint {spec.namespace}/{spec.name}: no addresses")
        if not netns_exists(spec.netns):
            raise EndpointError(f"network namespace {spec.netns!r} does not exist")
        host_if = spec.host_ifname
        ipv6 = any(a.version == 6 for a in spec.addresses)
        async with rtnl(self.host_netns) as host, rtnl(spec.netns) as wl:
            host_link = await link_by_name(host, host_if)
            wl_link = await link_by_name(wl, spec.ifname)
            if host_link is not None and not _are_peers(host_link, wl_link):
                # A veth whose other end is gone or elsewhere: the old workload died.
                log.info("replacing stale %s (its peer is not %s)", host_if, spec.ifname)
                await host.link("del", index=host_link["index"])
                host_link = None
            if host_link is None:
                if wl_link is not None:
                    raise EndpointError(
                        f"{spec.ifname} already exists in {spec.netns!r} and is not ours"
                    )
                await self._add_veth(host, spec)
                host_link = await link_by_name(host, host_if)
                wl_link = await link_by_name(wl, spec.ifname)
                if host_link is None or wl_link is None:
                    raise EndpointError(f"veth {host_if}/{spec.ifname} vanished after creation")
            await self._setup_host_side(host, host_link, spec, ipv6)
            await self._setup_workload_side(wl, wl_link, spec)
            await self._sync_host_routes(host, host_link["index"], spec.addresses)
            return Plumbed(
                host_ifname=host_if,
                host_mac=HOST_MAC,
                ifname=spec.ifname,
                mac=wl_link.get("IFLA_ADDRESS"),
                netns=spec.netns,
                addresses=spec.addresses,
                mtu=spec.mtu,
            )

    async def _add_veth(self, host: AsyncIPRoute, spec: EndpointSpec) -> None:
        fd = open_netns(spec.netns)
        try:
            # One request makes both ends, the peer directly inside the workload namespace,
            # so a host interface called eth0 can never clash with the workload's name.
            await host.link(
                "add",
                ifname=spec.host_ifname,
                kind="veth",
                mtu=spec.mtu,
                peer={"ifname": spec.ifname, "net_ns_fd": fd, "mtu": spec.mtu},
            )
        except NetlinkError as exc:
            raise _nl_error(exc, f"creating veth {spec.host_ifname}") from exc
        finally:
            os.close(fd)

    async def _setup_host_side(
        self, host: AsyncIPRoute, link: Any, spec: EndpointSpec, ipv6: bool
    ) -> None:
        index = link["index"]
        changes: dict[str, Any] = {}
        if (link.get("IFLA_ADDRESS") or "").lower() != HOST_MAC:
            changes["address"] = HOST_MAC
        if link.get("IFLA_MTU") != spec.mtu:
            changes["mtu"] = spec.mtu
        if changes:
            await host.link("set", index=index, **changes)
        # Sysctls before the link goes up, so the first ARP already gets a proxy answer.
        write_sysctls(_host_sysctls(spec.host_ifname, ipv6), netns=self.host_netns)
        if ipv6:
            await _ensure_addr(host, index, ipaddress.ip_address(IPV6_GATEWAY), 64)
        if not link["flags"] & 1:
            await host.link("set", index=index, state="up")

    async def _setup_workload_side(self, wl: AsyncIPRoute, link: Any, spec: EndpointSpec) -> None:
        index = link["index"]
        if link.get("IFLA_MTU") != spec.mtu:
            await wl.link("set", index=index, mtu=spec.mtu)
        if not link["flags"] & 1:
            await wl.link("set", index=index, state="up")
        want = set(spec.addresses)
        for msg in await collect(wl.addr("dump", index=index)):
            addr = ipaddress.ip_address(msg.get("IFA_ADDRESS"))
            if addr.is_link_local:
                continue
            if addr not in want or msg["prefixlen"] != _plen(addr):
                await wl.addr("del", index=index, address=str(addr), prefixlen=msg["prefixlen"])
        for addr in spec.addresses:
            await _ensure_addr(wl, index, addr, _plen(addr))
        if any(a.version == 4 for a in spec.addresses):
            await wl.route(
                "replace", dst=f"{IPV4_GATEWAY}/32", oif=index, scope=_SCOPE_LINK, proto=4
            )
            await wl.route("replace", dst="0.0.0.0/0", gateway=IPV4_GATEWAY, oif=index, proto=4)
        if any(a.version == 6 for a in spec.addresses):
            await wl.route(
                "replace", family=socket.AF_INET6, dst="::/0", gateway=IPV6_GATEWAY, oif=index
            )

    async def _sync_host_routes(
        self, host: AsyncIPRoute, index: int, addresses: Iterable[IPAddress]
    ) -> None:
        want = {(a, _plen(a)) for a in addresses}
        for msg in await self._our_routes(host):
            if msg.get("RTA_OIF") != index:
                continue
            key = (ipaddress.ip_address(msg.get("RTA_DST")), msg["dst_len"])
            if key not in want:
                await _del_route(host, msg)
        for addr, plen in sorted(want, key=lambda k: (k[0].version, k[0])):
            await host.route(
                "replace",
                family=_family(addr),
                dst=f"{addr}/{plen}",
                oif=index,
                scope=_SCOPE_LINK,
                proto=self.route_protocol,
            )

    async def _our_routes(self, host: AsyncIPRoute) -> list[Any]:
        out = []
        for fam in (socket.AF_INET, socket.AF_INET6):
            for msg in await collect(host.route("dump", family=fam)):
                if msg["proto"] == self.route_protocol and msg.get("RTA_DST") is not None:
                    out.append(msg)
        return out

    # -- delete -----------------------------------------------------------------------------

    async def delete(self, namespace: str, name: str) -> bool:
        """Remove the endpoint's veth (its routes and peer go with it); False if none existed.

        Works when the workload namespace is already gone: the host side alone is enough.
        """
        return await self.delete_link(veth_name(workload_id(namespace, name), self.prefix))

    async def delete_link(self, host_ifname: str) -> bool:
        async with rtnl(self.host_netns) as host:
            link = await link_by_name(host, host_ifname)
            if link is None:
                return False
            try:
                await host.link("del", index=link["index"])
            except NetlinkError as exc:
                if exc.code in (errno.ENODEV, errno.ENOENT):
                    return False
                raise _nl_error(exc, f"deleting {host_ifname}") from exc
            # Routes on a deleted link vanish with it; any of ours left elsewhere is stale.
            return True

    # -- check ------------------------------------------------------------------------------

    async def check(self, spec: EndpointSpec) -> list[str]:
        """Everything that differs from ``spec``, one sentence each; empty when in sync."""
        problems: list[str] = []
        host_if = spec.host_ifname
        ipv6 = any(a.version == 6 for a in spec.addresses)
        async with rtnl(self.host_netns) as host:
            host_link = await link_by_name(host, host_if)
            if host_link is None:
                return [f"host interface {host_if} is missing"]
            if link_kind(host_link) != "veth":
                problems.append(f"{host_if} is not a veth")
            if (host_link.get("IFLA_ADDRESS") or "").lower() != HOST_MAC:
                problems.append(f"{host_if} MAC is {host_link.get('IFLA_ADDRESS')}, not {HOST_MAC}")
            if host_link.get("IFLA_MTU") != spec.mtu:
                problems.append(f"{host_if} MTU is {host_link.get('IFLA_MTU')}, not {spec.mtu}")
            if not host_link["flags"] & 1:
                problems.append(f"{host_if} is down")
            routes = {
                (ipaddress.ip_address(m.get("RTA_DST")), m["dst_len"])
                for m in await self._our_routes(host)
                if m.get("RTA_OIF") == host_link["index"]
            }
            for addr in spec.addresses:
                if (addr, _plen(addr)) not in routes:
                    problems.append(f"host route {addr}/{_plen(addr)} dev {host_if} is missing")
        want = dict(_host_sysctls(host_if, ipv6))
        try:
            got = read_sysctls(want, netns=self.host_netns)
        except OSError as exc:
            problems.append(f"cannot read sysctls of {host_if}: {exc}")
        else:
            problems += [f"sysctl {k} is {got[k]}, not {v}" for k, v in want.items() if got[k] != v]
        if not netns_exists(spec.netns):
            return [*problems, f"network namespace {spec.netns!r} does not exist"]
        async with rtnl(spec.netns) as wl:
            wl_link = await link_by_name(wl, spec.ifname)
            if wl_link is None:
                return [*problems, f"{spec.ifname} is missing in {spec.netns!r}"]
            if not _are_peers(host_link, wl_link):
                problems.append(f"{spec.ifname} in {spec.netns!r} is not the peer of {host_if}")
            if not wl_link["flags"] & 1:
                problems.append(f"{spec.ifname} is down")
            have = {
                (ipaddress.ip_address(m.get("IFA_ADDRESS")), m["prefixlen"])
                for m in await collect(wl.addr("dump", index=wl_link["index"]))
            }
            for addr in spec.addresses:
                if (addr, _plen(addr)) not in have:
                    problems.append(f"{addr}/{_plen(addr)} is not on {spec.ifname}")
            gateways = set()
            for fam in (socket.AF_INET, socket.AF_INET6):
                for m in await collect(wl.route("dump", family=fam)):
                    if m["dst_len"] == 0 and m.get("RTA_OIF") == wl_link["index"]:
                        gateways.add(m.get("RTA_GATEWAY"))
            if any(a.version == 4 for a in spec.addresses) and IPV4_GATEWAY not in gateways:
                problems.append(f"default route via {IPV4_GATEWAY} is missing")
            if ipv6 and IPV6_GATEWAY not in gateways:
                problems.append(f"IPv6 default route via {IPV6_GATEWAY} is missing")
        return problems

    # -- list and reconcile -----------------------------------------------------------------

    async def list(self) -> list[HostEndpoint]:
        """Every host link with our prefix, and the addresses our routes point at it."""
        async with rtnl(self.host_netns) as host:
            links = await link_names(host, self.prefix)
            by_index: dict[int, list[IPAddress]] = {}
            for msg in await self._our_routes(host):
                by_index.setdefault(msg.get("RTA_OIF"), []).append(
                    ipaddress.ip_address(msg.get("RTA_DST"))
                )
        return [
            HostEndpoint(
                host_ifname=name,
                index=msg["index"],
                mtu=msg.get("IFLA_MTU"),
                up=bool(msg["flags"] & 1),
                addresses=tuple(sorted(by_index.get(msg["index"], []), key=_addr_key)),
            )
            for name, msg in sorted(links.items())
        ]

    async def repair_host_side(self, host_ifname: str, addresses: Iterable[IPAddress]) -> list[str]:
        """The agent's half (Felix's): MAC, sysctls, up state and our routes on an existing
        host veth, without entering the workload's namespace. Returns what it changed.

        EndpointError if the link is gone: only the CNI plugin can rebuild a veth, because
        only it knows the workload's namespace.
        """
        addrs = tuple(addresses)
        ipv6 = any(a.version == 6 for a in addrs)
        changed: list[str] = []
        async with rtnl(self.host_netns) as host:
            link = await link_by_name(host, host_ifname)
            if link is None:
                raise EndpointError(f"host interface {host_ifname} is missing")
            index = link["index"]
            if (link.get("IFLA_ADDRESS") or "").lower() != HOST_MAC:
                await host.link("set", index=index, address=HOST_MAC)
                changed.append("mac")
            want = dict(_host_sysctls(host_ifname, ipv6))
            got = read_sysctls(want, netns=self.host_netns)
            wrong = [(k, v) for k, v in want.items() if got[k] != v]
            if wrong:
                write_sysctls(wrong, netns=self.host_netns)
                changed += [f"sysctl {k}" for k, _ in wrong]
            if ipv6:
                await _ensure_addr(host, index, ipaddress.ip_address(IPV6_GATEWAY), 64)
            if not link["flags"] & 1:
                await host.link("set", index=index, state="up")
                changed.append("up")
            have = {
                (ipaddress.ip_address(m.get("RTA_DST")), m["dst_len"])
                for m in await self._our_routes(host)
                if m.get("RTA_OIF") == index
            }
            if have != {(a, _plen(a)) for a in addrs}:
                await self._sync_host_routes(host, index, addrs)
                changed.append("routes")
        return changed

    async def prune_routes(self, links: Iterable[str]) -> list[str]:
        """Delete our routes whose device is not one of ``links``; returns them as text."""
        keep = set(links)
        pruned = []
        async with rtnl(self.host_netns) as host:
            by_name = await link_names(host, "")
            owned = {msg["index"] for name, msg in by_name.items() if name in keep}
            for msg in await self._our_routes(host):
                if msg.get("RTA_OIF") not in owned:
                    pruned.append(f"{msg.get('RTA_DST')}/{msg['dst_len']}")
                    await _del_route(host, msg)
        return pruned

    async def reconcile(
        self, desired: Iterable[EndpointSpec], *, keep: Iterable[str] = ()
    ) -> ReconcileReport:
        """Make the host match ``desired``: remove our links nobody wants, repair the rest,
        and drop our routes that point at links we do not own. Alien links are left alone,
        and so are the links named in ``keep`` (wanted, but not checkable right now)."""
        report = ReconcileReport()
        want = {spec.host_ifname: spec for spec in desired}
        spare = set(keep) | set(want)
        for ep in await self.list():
            if ep.host_ifname not in spare and await self.delete_link(ep.host_ifname):
                report.removed.append(ep.host_ifname)
        for name, spec in sorted(want.items()):
            try:
                problems = await self.check(spec)
                if problems:
                    log.info("repairing %s: %s", name, "; ".join(problems))
                    await self.create(spec)
                    report.repaired.append(name)
                else:
                    report.in_sync.append(name)
            except (EndpointError, OSError, NetlinkError) as exc:
                report.errors[name] = str(exc)
        async with rtnl(self.host_netns) as host:
            links = await link_names(host, self.prefix)
            owned = {msg["index"] for n, msg in links.items() if n in spare}
            for msg in await self._our_routes(host):
                if msg.get("RTA_OIF") not in owned:
                    report.stale_routes.append(f"{msg.get('RTA_DST')}/{msg['dst_len']}")
                    await _del_route(host, msg)
        return report


def _addr_key(addr: IPAddress) -> tuple[int, int]:
    return (addr.version, int(addr))


def _are_peers(host_link: Any, wl_link: Any | None) -> bool:
    # Each veth end names the other's ifindex in IFLA_LINK; the indexes are per namespace,
    # so both directions must agree (a coincidence in one direction is possible).
    if wl_link is None or link_kind(host_link) != "veth" or link_kind(wl_link) != "veth":
        return False
    return (
        host_link.get("IFLA_LINK") == wl_link["index"]
        and wl_link.get("IFLA_LINK") == host_link["index"]
    )


async def _ensure_addr(ipr: AsyncIPRoute, index: int, addr: IPAddress, plen: int) -> None:
    try:
        await ipr.addr(
            "add",
            index=index,
            address=str(addr),
            prefixlen=plen,
            flags=IFA_F_NODAD if addr.version == 6 else 0,
        )
    except NetlinkError as exc:
        if exc.code != errno.EEXIST:
            raise _nl_error(exc, f"adding {addr}/{plen}") from exc


async def _del_route(ipr: AsyncIPRoute, msg: Any) -> None:
    try:
        await ipr.route(
            "del",
            family=msg["family"],
            dst=f"{msg.get('RTA_DST')}/{msg['dst_len']}",
            oif=msg.get("RTA_OIF"),
            proto=msg["proto"],
            # The kernel matches the scope on delete; pyroute2 would send 0 (universe).
            scope=msg["scope"],
            table=msg.get("RTA_TABLE") or _MAIN_TABLE,
        )
    except NetlinkError as exc:
        if exc.code not in (errno.ESRCH, errno.ENOENT):
            raise
