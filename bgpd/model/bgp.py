"""BGP kinds: BGPConfiguration, BGPPeer, BGPFilter and Node (the node's BGP identity and tunnel
addresses), with Calico's rules for each."""

from __future__ import annotations

import ipaddress
from typing import Annotated, ClassVar, Literal

from pydantic import AfterValidator, Field, model_validator

from .base import (
    CIDR,
    MAC,
    ASNumber,
    Duration,
    IPAddr,
    IPInterface,
    IPv4Addr,
    Model,
    Name,
    PortNumber,
    Problems,
    Resource,
    Selector,
)


def _check_community(value: str) -> str:
    """Standard (aa:nn, 16-bit parts) or large (aa:nn:mm, 32-bit parts) community."""
    parts = value.split(":")
    limit = {2: 0xFFFF, 3: 0xFFFFFFFF}.get(len(parts))
    if limit is None or not all(p.isdigit() and int(p) <= limit for p in parts):
        raise ValueError(
            f"{value!r} is not a community: expected aa:nn (each 0..65535) "
            "or a large community aa:nn:mm (each 0..4294967295)"
        )
    return value


def split_peer_ip(value: str) -> tuple[str, int | None]:
    """Split a BGPPeer peerIP ("198.18.1.1", "198.18.1.1:179", "[fd00::1]:179") into
    address and optional port."""
    port: str | None = None
    if value.startswith("["):
        host, sep, rest = value[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"{value!r} is not IP, IP:port or [IPv6]:port")
        port = rest[1:] if rest else None
    elif value.count(":") == 1:
        host, port = value.split(":")
    else:
        host = value
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{value!r} is not IP, IP:port or [IPv6]:port") from None
    if port is None:
        return host, None
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"{value!r}: port must be 1..65535")
    return host, int(port)


def _check_peer_ip(value: str) -> str:
    split_peer_ip(value)
    return value


Community = Annotated[str, AfterValidator(_check_community)]
PeerIP = Annotated[str, AfterValidator(_check_peer_ip)]
LogSeverity = Literal["Trace", "Debug", "Info", "Warning", "Error", "Fatal"]


class SecretKeyRef(Model):
    name: Name
    key: str = Field(min_length=1)


class BGPPassword(Model):
    secret_key_ref: SecretKeyRef


class ServiceCIDR(Model):
    cidr: CIDR


class CommunityDef(Model):
    name: str = Field(min_length=1)
    value: Community


class PrefixAdvertisement(Model):
    cidr: CIDR
    communities: list[str] | None = None


# --- BGPConfiguration ---------------------------------------------------------------------------


class BGPConfigurationSpec(Model):
    log_severity_screen: LogSeverity | None = None
    node_to_node_mesh_enabled: bool | None = None
    as_number: ASNumber | None = None
    listen_port: PortNumber | None = None
    service_cluster_ips: list[ServiceCIDR] | None = Field(default=None, alias="serviceClusterIPs")
    service_external_ips: list[ServiceCIDR] | None = Field(default=None, alias="serviceExternalIPs")
    service_load_balancer_ips: list[ServiceCIDR] | None = Field(
        default=None, alias="serviceLoadBalancerIPs"
    )
    communities: list[CommunityDef] | None = None
    prefix_advertisements: list[PrefixAdvertisement] | None = None
    ignored_interfaces: list[str] | None = None
    bind_mode: Literal["None", "NodeIP"] | None = None
    node_mesh_password: BGPPassword | None = None
    node_mesh_max_restart_time: Duration | None = None
    local_workload_peering_ipv4: IPAddr | None = Field(
        default=None, alias="localWorkloadPeeringIPV4"
    )
    local_workload_peering_ipv6: IPAddr | None = Field(
        default=None, alias="localWorkloadPeeringIPV6"
    )

    @model_validator(mode="after")
    def _check_config(self) -> BGPConfigurationSpec:
        problems = Problems()
        if self.listen_port == 0:
            problems.add("listenPort", "must be 1..65535")
        names = [c.name for c in self.communities or ()]
        # A prefix advertisement names a community defined above, or gives a literal value.
        for i, adv in enumerate(self.prefix_advertisements or ()):
            for j, community in enumerate(adv.communities or ()):
                if community in names:
                    continue
                try:
                    _check_community(community)
                except ValueError:
                    problems.add(
                        f"prefixAdvertisements[{i}].communities[{j}]",
                        f"{community!r} is neither a community defined in spec.communities "
                        "nor a community value (aa:nn or aa:nn:mm)",
                    )
        for field, version in (
            ("local_workload_peering_ipv4", 4),
            ("local_workload_peering_ipv6", 6),
        ):
            value = getattr(self, field)
            if value is not None and ipaddress.ip_address(value).version != version:
                alias = type(self).model_fields[field].alias or field
                problems.add(alias, f"must be an IPv{version} address")
        problems.raise_if_any()
        return self


class BGPConfiguration(Resource):
    KIND: ClassVar[str] = "BGPConfiguration"
    spec: BGPConfigurationSpec = Field(default_factory=BGPConfigurationSpec)


# --- BGPPeer ------------------------------------------------------------------------------------


class BGPPeerSpec(Model):
    node: Name | None = None
    node_selector: Selector | None = None
    peer_ip: PeerIP | None = Field(default=None, alias="peerIP")
    peer_selector: Selector | None = None
    as_number: ASNumber | None = None
    password: BGPPassword | None = None
    keep_original_next_hop: bool | None = None
    next_hop_mode: Literal["Auto", "Self", "Keep"] | None = None
    max_restart_time: Duration | None = None
    ttl_security: int | None = Field(default=None, ge=0, le=255)
    filters: list[Name] | None = None
    source_address: Literal["UseNodeIP", "None"] | None = None
    num_allowed_local_as_numbers: int | None = Field(
        default=None, ge=0, alias="numAllowedLocalASNumbers"
    )
    reachable_by: IPAddr | None = None
    local_workload_selector: Selector | None = None

    @model_validator(mode="after")
    def _check_peer(self) -> BGPPeerSpec:
        problems = Problems()
        if self.node is not None and self.node_selector is not None:
            problems.add("nodeSelector", "node and nodeSelector cannot both be set")
        if self.peer_ip is not None and self.peer_selector is not None:
            problems.add("peerSelector", "peerIP and peerSelector cannot both be set")
        if self.as_number is not None and self.peer_selector is not None:
            # Selected peers are nodes; their AS comes from their Node resource.
            problems.add("asNumber", "must not be set with peerSelector (the nodes' AS is used)")
        if self.keep_original_next_hop and self.next_hop_mode not in (None, "Keep"):
            problems.add(
                "nextHopMode",
                f"{self.next_hop_mode} contradicts keepOriginalNextHop: true",
            )
        if self.reachable_by is not None and self.peer_ip is None:
            problems.add("reachableBy", "only applies to a peer given by peerIP")
        problems.raise_if_any()
        return self


class BGPPeer(Resource):
    KIND: ClassVar[str] = "BGPPeer"
    spec: BGPPeerSpec = Field(default_factory=BGPPeerSpec)


# --- BGPFilter ----------------------------------------------------------------------------------


class PrefixLength(Model):
    min: int | None = Field(default=None, ge=0, le=128)
    max: int | None = Field(default=None, ge=0, le=128)


class BGPFilterRule(Model):
    action: Literal["Accept", "Reject"]
    match_operator: Literal["Equal", "NotEqual", "In", "NotIn"] | None = None
    cidr: CIDR | None = None
    prefix_length: PrefixLength | None = None
    source: Literal["RemotePeers"] | None = None
    interface: str | None = None

    def check(self, version: int, path: str, problems: Problems) -> None:
        # Calico: cidr and matchOperator go together; the prefix bounds fit the family.
        if (self.cidr is None) != (self.match_operator is None):
            problems.add(path + ".matchOperator", "cidr and matchOperator must be set together")
        if self.cidr is not None:
            net = ipaddress.ip_network(self.cidr, strict=False)
            if net.version != version:
                problems.add(path + ".cidr", f"must be an IPv{version} CIDR")
        if self.prefix_length is not None:
            bound = 32 if version == 4 else 128
            lo, hi = self.prefix_length.min, self.prefix_length.max
            for key, value in (("min", lo), ("max", hi)):
                if value is not None and value > bound:
                    problems.add(f"{path}.prefixLength.{key}", f"must be 0..{bound}")
            if lo is not None and hi is not None and lo > hi:
                problems.add(path + ".prefixLength", "min must not exceed max")
            if self.cidr is None:
                problems.add(path + ".prefixLength", "needs a cidr")


class BGPFilterSpec(Model):
    export_v4: list[BGPFilterRule] | None = Field(default=None, alias="exportV4")
    import_v4: list[BGPFilterRule] | None = Field(default=None, alias="importV4")
    export_v6: list[BGPFilterRule] | None = Field(default=None, alias="exportV6")
    import_v6: list[BGPFilterRule] | None = Field(default=None, alias="importV6")

    @model_validator(mode="after")
    def _check_rules(self) -> BGPFilterSpec:
        problems = Problems()
        for alias, rules in (
            ("exportV4", self.export_v4),
            ("importV4", self.import_v4),
            ("exportV6", self.export_v6),
            ("importV6", self.import_v6),
        ):
            for i, rule in enumerate(rules or ()):
                rule.check(4 if alias.endswith("V4") else 6, f"{alias}[{i}]", problems)
        problems.raise_if_any()
        return self


class BGPFilter(Resource):
    KIND: ClassVar[str] = "BGPFilter"
    spec: BGPFilterSpec = Field(default_factory=BGPFilterSpec)


# --- Node ---------------------------------------------------------------------------------------


class NodeBGPSpec(Model):
    ipv4_address: IPInterface | None = None
    ipv6_address: IPInterface | None = None
    as_number: ASNumber | None = None
    route_reflector_cluster_id: IPv4Addr | None = Field(
        default=None, alias="routeReflectorClusterID"
    )
    ipv4_ipip_tunnel_addr: IPAddr | None = Field(default=None, alias="ipv4IPIPTunnelAddr")

    @model_validator(mode="after")
    def _check_families(self) -> NodeBGPSpec:
        problems = Problems()
        for alias, value, version in (
            ("ipv4Address", self.ipv4_address, 4),
            ("ipv6Address", self.ipv6_address, 6),
            ("ipv4IPIPTunnelAddr", self.ipv4_ipip_tunnel_addr, 4),
        ):
            if value is not None and ipaddress.ip_interface(value).version != version:
                problems.add(alias, f"must be an IPv{version} address")
        problems.raise_if_any()
        return self


class NodeAddress(Model):
    address: str = Field(min_length=1)
    type: Literal["InternalIP", "ExternalIP", "CalicoNodeIP"] | None = None


class OrchRef(Model):
    node_name: str | None = None
    orchestrator: str


class NodeWireguardSpec(Model):
    interface_ipv4_address: IPAddr | None = Field(default=None, alias="interfaceIPv4Address")
    interface_ipv6_address: IPAddr | None = Field(default=None, alias="interfaceIPv6Address")


class NodeSpec(Model):
    bgp: NodeBGPSpec | None = None
    ipv4_vxlan_tunnel_addr: IPAddr | None = Field(default=None, alias="ipv4VXLANTunnelAddr")
    ipv6_vxlan_tunnel_addr: IPAddr | None = Field(default=None, alias="ipv6VXLANTunnelAddr")
    vxlan_tunnel_mac_addr: MAC | None = Field(default=None, alias="vxlanTunnelMACAddr")
    vxlan_tunnel_mac_addr_v6: MAC | None = Field(default=None, alias="vxlanTunnelMACAddrV6")
    addresses: list[NodeAddress] | None = None
    orch_refs: list[OrchRef] | None = None
    wireguard: NodeWireguardSpec | None = None


class NodeBGPStatus(Model):
    version: str | None = None
    number_established_v4: int | None = Field(default=None, alias="numberEstablishedV4")
    number_established_v6: int | None = Field(default=None, alias="numberEstablishedV6")
    number_not_established_v4: int | None = Field(default=None, alias="numberNotEstablishedV4")
    number_not_established_v6: int | None = Field(default=None, alias="numberNotEstablishedV6")
    peers_v4: list[str] | None = Field(default=None, alias="peersV4")
    peers_v6: list[str] | None = Field(default=None, alias="peersV6")


class NodeStatus(Model):
    """What `get node -o yaml` shows; accepted so its output can be applied back."""

    wireguard_public_key: str | None = None
    wireguard_public_key_v6: str | None = Field(default=None, alias="wireguardPublicKeyV6")
    bird_ready: bool | None = None
    pod_cidrs: list[CIDR] | None = Field(default=None, alias="podCIDRs")
    bgp: NodeBGPStatus | None = None


class Node(Resource):
    KIND: ClassVar[str] = "Node"
    spec: NodeSpec = Field(default_factory=NodeSpec)
    status: NodeStatus | None = None

    @model_validator(mode="after")
    def _check_vxlan_family(self) -> Node:
        problems = Problems()
        for alias, value, version in (
            ("spec.ipv4VXLANTunnelAddr", self.spec.ipv4_vxlan_tunnel_addr, 4),
            ("spec.ipv6VXLANTunnelAddr", self.spec.ipv6_vxlan_tunnel_addr, 6),
        ):
            if value is not None and ipaddress.ip_address(value).version != version:
                problems.add(alias, f"must be an IPv{version} address")
        problems.raise_if_any()
        return self
