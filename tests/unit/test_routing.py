"""The node's origination and forwarding rules: blocks, borrowed /32s, pools' encapsulation."""

from __future__ import annotations

import ipaddress

import pytest

from agent.routing import (
    IPIP_DEVICE,
    VXLAN_DEVICE,
    NodeAddressing,
    blackholes,
    forward_route,
    nodes_by_address,
    originations,
    to_prefix,
)
from bgpd.fib.types import NextHop, parse_prefix, prefix_str
from bgpd.model import load_documents
from bgpd.model.bgp import BGPConfiguration, Node
from bgpd.model.ipam import IPPool

POOLS = """
apiVersion: projectcalico.org/v3
kind: IPPool
metadata: {name: vx-cross}
spec: {cidr: 10.244.0.0/18, vxlanMode: CrossSubnet}
---
apiVersion: projectcalico.org/v3
kind: IPPool
metadata: {name: ipip-always}
spec: {cidr: 10.244.64.0/18, ipipMode: Always}
---
apiVersion: projectcalico.org/v3
kind: IPPool
metadata: {name: plain}
spec: {cidr: 10.244.128.0/18}
---
apiVersion: projectcalico.org/v3
kind: IPPool
metadata: {name: private}
spec: {cidr: 100.64.0.0/16, disableBGPExport: true}
---
apiVersion: projectcalico.org/v3
kind: IPPool
metadata: {name: vx-always}
spec: {cidr: 10.244.192.0/18, vxlanMode: Always}
"""

NODES = """
apiVersion: projectcalico.org/v3
kind: Node
metadata: {name: a}
spec:
  bgp: {ipv4Address: 198.18.0.2/24}
  ipv4VXLANTunnelAddr: 10.244.0.1
---
apiVersion: projectcalico.org/v3
kind: Node
metadata: {name: b}
spec:
  bgp: {ipv4Address: 198.18.0.3/24}
  ipv4VXLANTunnelAddr: 10.244.0.65
---
apiVersion: projectcalico.org/v3
kind: Node
metadata: {name: c}
spec:
  bgp: {ipv4Address: 198.19.1.2/24}
  ipv4VXLANTunnelAddr: 10.244.0.129
---
apiVersion: projectcalico.org/v3
kind: Node
metadata: {name: d-no-vtep}
spec:
  bgp: {ipv4Address: 198.19.2.2/24}
"""

pools = [p for p in load_documents(POOLS) if isinstance(p, IPPool)]
nodes = [n for n in load_documents(NODES) if isinstance(n, Node)]
by_ip = nodes_by_address(nodes)
me = NodeAddressing.from_node(nodes[0])
B, C, D = (ipaddress.ip_address(x) for x in ("198.18.0.3", "198.19.1.2", "198.19.2.2"))


def fwd(prefix: str, *gws: ipaddress.IPv4Address, ipip: bool = True) -> str | None:
    route = forward_route(
        parse_prefix(prefix), gws, me=me, pools=pools, nodes=by_ip, ipip_available=ipip
    )
    return None if route is None else str(route)


def test_cross_subnet_vxlan_is_direct_in_our_subnet_and_tunnelled_outside() -> None:
    assert fwd("10.244.1.0/26", B) == "10.244.1.0/26 via 198.18.0.3"
    assert fwd("10.244.2.0/26", C) == f"10.244.2.0/26 via 10.244.0.129 dev {VXLAN_DEVICE} onlink"


def test_always_modes_tunnel_even_next_door() -> None:
    assert fwd("10.244.200.0/26", B) == f"10.244.200.0/26 via 10.244.0.65 dev {VXLAN_DEVICE} onlink"
    assert fwd("10.244.70.0/26", B) == f"10.244.70.0/26 via 198.18.0.3 dev {IPIP_DEVICE} onlink"


def test_never_and_foreign_prefixes_route_directly() -> None:
    assert fwd("10.244.130.0/26", C) == "10.244.130.0/26 via 198.19.1.2"
    assert fwd("192.0.2.0/24", B) is not None  # outside every pool: plain next hop
    assert fwd("192.0.2.0/24", B) == "192.0.2.0/24 via 198.18.0.3"


def test_ipip_unavailable_falls_back_to_direct() -> None:
    assert fwd("10.244.70.0/26", B, ipip=False) == "10.244.70.0/26 via 198.18.0.3"


def test_vxlan_without_a_known_vtep_installs_nothing() -> None:
    assert fwd("10.244.3.0/26", D) is None
    # With ECMP, the hop that can be tunnelled stays.
    route = forward_route(parse_prefix("10.244.3.0/26"), [C, D], me=me, pools=pools, nodes=by_ip)
    assert route is not None
    assert route.nexthops == (
        NextHop(int(ipaddress.ip_address("10.244.0.129")), VXLAN_DEVICE, True),
    )


def test_ecmp_keeps_every_gateway() -> None:
    route = forward_route(parse_prefix("10.244.130.0/26"), [C, B], me=me, pools=pools, nodes=by_ip)
    assert route is not None and len(route.nexthops) == 2


def test_originations_blocks_borrowed_services_and_no_export_pools() -> None:
    (config,) = load_documents(
        """
apiVersion: projectcalico.org/v3
kind: BGPConfiguration
metadata: {name: default}
spec:
  serviceClusterIPs: [{cidr: 10.96.0.0/12}]
  communities: [{name: svc, value: "64512:300"}]
  prefixAdvertisements:
    - {cidr: 10.96.0.0/12, communities: [svc, "64512:1"]}
    - {cidr: 10.244.0.0/16, communities: ["64512:2"]}
"""
    )
    assert isinstance(config, BGPConfiguration)
    blocks = [ipaddress.ip_network("10.244.1.0/26"), ipaddress.ip_network("100.64.0.0/26")]
    borrowed = [ipaddress.ip_address("10.244.130.7"), ipaddress.ip_address("100.64.5.5")]
    got = {
        prefix_str(o.prefix): o.communities for o in originations(blocks, borrowed, pools, config)
    }
    assert got == {
        "10.244.1.0/26": ("64512:2",),
        "10.244.130.7/32": ("64512:2",),
        "10.96.0.0/12": ("64512:300", "64512:1"),
    }
    # Blackholes cover every affine block, exported or not.
    assert [str(r) for r in blackholes(blocks)] == [
        "blackhole 10.244.1.0/26",
        "blackhole 100.64.0.0/26",
    ]


@pytest.mark.parametrize("cidr", ["10.244.1.0/26", "fd00:1::/122"])
def test_prefix_round_trip(cidr: str) -> None:
    net = ipaddress.ip_network(cidr)
    assert prefix_str(to_prefix(net)) == cidr
