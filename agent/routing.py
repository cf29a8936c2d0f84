"""The node's routing decisions, pure: what it originates, and how a learned prefix is forwarded.

Origination follows calico/node: every affine IPAM block as an aggregate with a kernel
blackhole, a /32 (/128) for each address borrowed from another host's block, nothing from a
pool with ``disableBGPExport``, and the service CIDRs of BGPConfiguration with the communities
its ``prefixAdvertisements`` attach. Forwarding follows the pool of the learned prefix:
ipipMode/vxlanMode ``Always`` tunnel, ``CrossSubnet`` tunnels only to nodes outside our
subnet, ``Never`` routes directly via the node address.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from bgpd.fib.types import NextHop, Prefix, Route
from bgpd.model.bgp import BGPConfiguration, Node
from bgpd.model.ipam import IPPool

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

VXLAN_DEVICE = "vxlan.calico"
IPIP_DEVICE = "tunl0"


def to_prefix(net: IPNetwork) -> Prefix:
    return (net.version, int(net.network_address), net.prefixlen)


def to_network(prefix: Prefix) -> IPNetwork:
    version, addr, plen = prefix
    if version == 4:
        return ipaddress.IPv4Network((addr, plen))
    return ipaddress.IPv6Network((addr, plen))


@dataclass(frozen=True, slots=True)
class Origination:
    """One prefix this node announces, and the communities it carries ("aa:nn" strings)."""

    prefix: Prefix
    communities: tuple[str, ...] = ()


def pool_of(net: IPNetwork, pools: Iterable[IPPool]) -> IPPool | None:
    """The most specific pool containing ``net``, or None (say, a route from outside)."""
    best: IPPool | None = None
    for pool in pools:
        pnet = pool.spec.network
        if pnet.version != net.version or not net.subnet_of(pnet):  # type: ignore[arg-type]
            continue
        if best is None or pnet.prefixlen > best.spec.network.prefixlen:
            best = pool
    return best


def _community_values(config: BGPConfiguration | None, cidr: IPNetwork) -> tuple[str, ...]:
    """Communities for ``cidr``: those of every prefixAdvertisement that contains it."""
    if config is None:
        return ()
    spec = config.spec
    named = {c.name: c.value for c in spec.communities or ()}
    out: list[str] = []
    for adv in spec.prefix_advertisements or ():
        adv_net = ipaddress.ip_network(adv.cidr, strict=False)
        if adv_net.version == cidr.version and cidr.subnet_of(adv_net):  # type: ignore[arg-type]
            for community in adv.communities or ():
                value = named.get(community, community)
                if value not in out:
                    out.append(value)
    return tuple(out)


def originations(
    blocks: Iterable[IPNetwork],
    borrowed: Iterable[IPAddress],
    pools: Sequence[IPPool],
    config: BGPConfiguration | None = None,
) -> list[Origination]:
    """Everything this node announces, sorted, without duplicates."""
    out: dict[Prefix, Origination] = {}

    def add(net: IPNetwork) -> None:
        pool = pool_of(net, pools)
        if pool is not None and pool.spec.disable_bgp_export:
            return
        prefix = to_prefix(net)
        out.setdefault(prefix, Origination(prefix, _community_values(config, net)))

    for block in blocks:
        add(block)
    for addr in borrowed:
        add(ipaddress.ip_network(addr))
    if config is not None:
        spec = config.spec
        for group in (
            spec.service_cluster_ips,
            spec.service_external_ips,
            spec.service_load_balancer_ips,
        ):
            for svc in group or ():
                add(ipaddress.ip_network(svc.cidr, strict=False))
    return [out[p] for p in sorted(out)]


def blackholes(blocks: Iterable[IPNetwork]) -> list[Route]:
    """A kernel blackhole per affine block, so traffic to an unused address in it is dropped
    here rather than bounced along the default route (Calico does the same)."""
    return [Route(to_prefix(b), blackhole=True) for b in sorted(blocks, key=to_prefix)]


@dataclass(frozen=True, slots=True)
class NodeAddressing:
    """What forwarding needs to know about one node, taken from its Node resource."""

    name: str
    ipv4: ipaddress.IPv4Interface | None
    ipv6: ipaddress.IPv6Interface | None
    vxlan_v4: ipaddress.IPv4Address | None
    vxlan_v6: ipaddress.IPv6Address | None

    @classmethod
    def from_node(cls, node: Node) -> NodeAddressing:
        spec = node.spec
        bgp = spec.bgp if spec is not None else None
        v4 = ipaddress.IPv4Interface(bgp.ipv4_address) if bgp and bgp.ipv4_address else None
        v6 = ipaddress.IPv6Interface(bgp.ipv6_address) if bgp and bgp.ipv6_address else None
        vx4 = spec.ipv4_vxlan_tunnel_addr if spec is not None else None
        vx6 = spec.ipv6_vxlan_tunnel_addr if spec is not None else None
        return cls(
            name=node.metadata.name,
            ipv4=v4,
            ipv6=v6,
            vxlan_v4=ipaddress.IPv4Address(vx4) if vx4 else None,
            vxlan_v6=ipaddress.IPv6Address(vx6) if vx6 else None,
        )


def nodes_by_address(nodes: Iterable[Node]) -> dict[IPAddress, NodeAddressing]:
    """Node addressing keyed by each BGP address, to find the node behind a next hop."""
    out: dict[IPAddress, NodeAddressing] = {}
    for node in nodes:
        info = NodeAddressing.from_node(node)
        for iface in (info.ipv4, info.ipv6):
            if iface is not None:
                out[iface.ip] = info
    return out


def _same_subnet(me: NodeAddressing, peer_ip: IPAddress) -> bool:
    iface = me.ipv4 if peer_ip.version == 4 else me.ipv6
    return iface is not None and peer_ip in iface.network


def _encap(mode: str, me: NodeAddressing, peer_ip: IPAddress) -> bool:
    if mode == "Always":
        return True
    if mode == "CrossSubnet":
        return not _same_subnet(me, peer_ip)
    return False


def forward_route(
    prefix: Prefix,
    gateways: Sequence[IPAddress],
    *,
    me: NodeAddressing,
    pools: Sequence[IPPool],
    nodes: Mapping[IPAddress, NodeAddressing],
    ipip_available: bool = True,
) -> Route | None:
    """The kernel route for a learned prefix whose BGP next hops are ``gateways``.

    Returns None when the pool wants VXLAN but the far node has no VTEP address yet: a
    route straight at a node in another subnet would only black-hole the traffic.
    """
    net = to_network(prefix)
    pool = pool_of(net, pools)
    hops: list[NextHop] = []
    for gw in gateways:
        vxlan = pool is not None and _encap(pool.spec.vxlan_mode, me, gw)
        ipip = pool is not None and ipip_available and _encap(pool.spec.ipip_mode, me, gw)
        if vxlan:
            far = nodes.get(gw)
            vtep = None if far is None else (far.vxlan_v4 if gw.version == 4 else far.vxlan_v6)
            if vtep is None:
                continue
            hops.append(NextHop(int(vtep), VXLAN_DEVICE, onlink=True))
        elif ipip and gw.version == 4:
            hops.append(NextHop(int(gw), IPIP_DEVICE, onlink=True))
        else:
            hops.append(NextHop(int(gw)))
    if not hops:
        return None
    return Route(prefix, tuple(hops))
