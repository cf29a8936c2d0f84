"""Who peers with whom: the node-to-node mesh, route reflectors and BGPPeer selectors.

Pure functions over the Calico resources (BGPConfiguration, Node, BGPPeer) that give one
node its desired set of BGP sessions, the way calico/node's confd computes BIRD's peers:

- a full iBGP mesh with every other node while ``nodeToNodeMeshEnabled`` (default true);
- every BGPPeer that applies to this node (``node``, ``nodeSelector``, or neither = global),
  to ``peerIP`` or to every node its ``peerSelector`` picks;
- a node with ``routeReflectorClusterID`` is a reflector, and a node peer whose cluster id
  differs from ours is its client; reflectors sharing a cluster id peer as non-clients.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from bgpd.model.base import parse_duration
from bgpd.model.bgp import BGPConfiguration, BGPPeer, Node, split_peer_ip
from policy.selector import parse

DEFAULT_ASN = 64512


@dataclass(frozen=True, slots=True)
class PeerSpec:
    """One desired session, in the daemon's neighbor terms. Compared by value for diffs."""

    address: str
    remote_asn: int
    # "mesh", "node:<name>" (picked by a BGPPeer peerSelector) or "bgppeer:<name>".
    source: str
    port: int | None = None
    node: str | None = None
    route_reflector_client: bool = False
    # Reference to a secret ("<secret>/<key>"), never the password itself.
    password_ref: str | None = None
    next_hop: str = "auto"
    ttl_security: int | None = None
    max_restart_time: float | None = None
    filters: tuple[str, ...] = ()
    # Calico's sourceAddress: UseNodeIP (the default) binds to the node's own address.
    source_address: str | None = None
    use_node_ip: bool = True


@dataclass(frozen=True, slots=True)
class Topology:
    """This node's BGP identity and the sessions it should have."""

    node: str
    asn: int
    router_id: str | None
    ipv4_address: str | None
    ipv6_address: str | None
    cluster_id: str | None
    listen_port: int
    peers: tuple[PeerSpec, ...]

    def by_address(self) -> dict[str, PeerSpec]:
        return {p.address: p for p in self.peers}


def _labels(node: Node) -> dict[str, str]:
    labels = dict(node.metadata.labels or {})
    # Calico lets selectors name a node by its name through this implicit label.
    labels.setdefault("projectcalico.org/name", node.metadata.name)
    return labels


def _addr(iface: str | None) -> str | None:
    """'198.18.0.2/24' → '198.18.0.2' (Node.bgp addresses carry their subnet)."""
    if not iface:
        return None
    return str(ipaddress.ip_interface(iface).ip)


def node_asn(node: Node, default: int) -> int:
    bgp = node.spec.bgp if node.spec else None
    return bgp.as_number if bgp is not None and bgp.as_number is not None else default


def node_cluster_id(node: Node) -> str | None:
    bgp = node.spec.bgp if node.spec else None
    return bgp.route_reflector_cluster_id if bgp is not None else None


def node_addresses(node: Node) -> tuple[str | None, str | None]:
    bgp = node.spec.bgp if node.spec else None
    if bgp is None:
        return None, None
    return _addr(bgp.ipv4_address), _addr(bgp.ipv6_address)


def _matches(selector: str | None, labels: Mapping[str, str]) -> bool:
    return parse(selector or "").evaluate(labels)


def _applies_to(peer: BGPPeer, node: Node) -> bool:
    spec = peer.spec
    if spec.node:
        return spec.node == node.metadata.name
    if spec.node_selector:
        return _matches(spec.node_selector, _labels(node))
    return True


def _next_hop_mode(peer: BGPPeer) -> str:
    spec = peer.spec
    if spec.keep_original_next_hop:
        return "keep"
    if spec.next_hop_mode:
        return spec.next_hop_mode.lower()
    return "auto"


def _password_ref(peer_password: object | None) -> str | None:
    ref = getattr(peer_password, "secret_key_ref", None)
    return f"{ref.name}/{ref.key}" if ref is not None else None


def _seconds(duration: str | None) -> float | None:
    return parse_duration(duration) if duration else None


def compute_topology(
    node_name: str,
    nodes: Iterable[Node],
    peers: Iterable[BGPPeer] = (),
    config: BGPConfiguration | None = None,
    *,
    families: tuple[int, ...] = (4, 6),
    is_local: Callable[[str], bool] | None = None,
) -> Topology:
    """The sessions ``node_name`` should have, given the cluster's BGP resources.

    ``is_local`` tells whether a peerIP is one of this host's own addresses (skip it).
    Raises KeyError if the node is not registered.
    """
    by_name = {n.metadata.name: n for n in nodes}
    me = by_name[node_name]
    spec = config.spec if config is not None else None
    default_asn = spec.as_number if spec is not None and spec.as_number is not None else DEFAULT_ASN
    mesh = spec.node_to_node_mesh_enabled if spec is not None else None
    mesh_on = True if mesh is None else mesh
    my_asn = node_asn(me, default_asn)
    my_v4, my_v6 = node_addresses(me)
    my_cluster = node_cluster_id(me)
    mine = {a for a in (my_v4, my_v6) if a}
    own = is_local or (lambda addr: addr in mine)
    out: dict[str, PeerSpec] = {}

    def source_for(version: int, use_node_ip: bool) -> str | None:
        if not use_node_ip:
            return None
        return my_v4 if version == 4 else my_v6

    def node_peers(other: Node, source: str, template: PeerSpec | None) -> None:
        if other.metadata.name == node_name:
            return
        v4, v6 = node_addresses(other)
        other_cluster = node_cluster_id(other)
        client = my_cluster is not None and other_cluster != my_cluster
        for version, addr in ((4, v4), (6, v6)):
            if addr is None or version not in families or addr in out:
                continue
            base = template or PeerSpec(address="", remote_asn=0, source=source)
            out[addr] = PeerSpec(
                address=addr,
                remote_asn=node_asn(other, default_asn),
                source=source,
                node=other.metadata.name,
                route_reflector_client=client,
                password_ref=base.password_ref,
                next_hop=base.next_hop,
                ttl_security=base.ttl_security,
                max_restart_time=base.max_restart_time,
                filters=base.filters,
                source_address=source_for(version, base.use_node_ip),
                use_node_ip=base.use_node_ip,
            )

    # Explicit BGPPeers first: their settings win over the mesh for the same address.
    for peer in sorted(peers, key=lambda p: p.metadata.name):
        ps = peer.spec
        if ps.peer_selector is not None and parse(ps.peer_selector).evaluate(_labels(me)):
            # The far end of a selector peering: the nodes this BGPPeer applies to peer
            # with us, so we peer back with each of them (how reflectors find clients).
            back = PeerSpec(
                address="",
                remote_asn=0,
                source=f"bgppeer:{peer.metadata.name}",
                password_ref=_password_ref(ps.password),
                ttl_security=ps.ttl_security or None,
                max_restart_time=_seconds(ps.max_restart_time),
                use_node_ip=ps.source_address != "None",
            )
            for other in sorted(by_name.values(), key=lambda n: n.metadata.name):
                if _applies_to(peer, other):
                    node_peers(other, back.source, back)
        if not _applies_to(peer, me):
            continue
        template = PeerSpec(
            address="",
            remote_asn=ps.as_number or my_asn,
            source=f"bgppeer:{peer.metadata.name}",
            password_ref=_password_ref(ps.password),
            next_hop=_next_hop_mode(peer),
            ttl_security=ps.ttl_security or None,
            max_restart_time=_seconds(ps.max_restart_time),
            filters=tuple(ps.filters or ()),
            use_node_ip=ps.source_address != "None",
        )
        if ps.peer_ip:
            addr, port = split_peer_ip(ps.peer_ip)
            version = ipaddress.ip_address(addr).version
            if own(addr) or version not in families or addr in out:
                continue
            if ps.as_number is None:
                raise ValueError(f"BGPPeer {peer.metadata.name}: peerIP needs asNumber")
            out[addr] = PeerSpec(
                address=addr,
                remote_asn=ps.as_number,
                source=template.source,
                port=port,
                password_ref=template.password_ref,
                next_hop=template.next_hop,
                ttl_security=template.ttl_security,
                max_restart_time=template.max_restart_time,
                filters=template.filters,
                source_address=source_for(version, template.use_node_ip),
                use_node_ip=template.use_node_ip,
            )
        if ps.peer_selector is not None:
            sel = parse(ps.peer_selector)
            for other in sorted(by_name.values(), key=lambda n: n.metadata.name):
                if sel.evaluate(_labels(other)):
                    node_peers(other, template.source, template)
    if mesh_on:
        for other in sorted(by_name.values(), key=lambda n: n.metadata.name):
            mesh_template = PeerSpec(
                address="",
                remote_asn=0,
                source="mesh",
                password_ref=_password_ref(spec.node_mesh_password) if spec else None,
                max_restart_time=_seconds(spec.node_mesh_max_restart_time) if spec else None,
            )
            node_peers(other, "mesh", mesh_template)
    listen_port = spec.listen_port if spec is not None and spec.listen_port else 179
    return Topology(
        node=node_name,
        asn=my_asn,
        router_id=my_v4,
        ipv4_address=my_v4,
        ipv6_address=my_v6,
        cluster_id=my_cluster,
        listen_port=listen_port,
        peers=tuple(sorted(out.values(), key=lambda p: p.address)),
    )


def diff_peers(
    old: Iterable[PeerSpec], new: Iterable[PeerSpec]
) -> tuple[list[PeerSpec], list[PeerSpec], list[tuple[PeerSpec, PeerSpec]]]:
    """(added, removed, changed) between two peer sets keyed by address.

    A session whose spec is unchanged is in none of the lists, so the node leaves it alone.
    """
    before = {p.address: p for p in old}
    after = {p.address: p for p in new}
    added = [after[a] for a in sorted(after.keys() - before.keys())]
    removed = [before[a] for a in sorted(before.keys() - after.keys())]
    changed = [
        (before[a], after[a]) for a in sorted(before.keys() & after.keys()) if before[a] != after[a]
    ]
    return added, removed, changed
