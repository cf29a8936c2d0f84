"""Desired VXLAN state from the datastore: remote VTEPs from Node resources, and our VTEP
address from IPAM (kept across restarts, re-allocated when it is no longer ours)."""

from __future__ import annotations

import ipaddress
import json
from typing import Any

from agent.tunnels import NODE_PREFIX, read_nodes, vtep_address, vtep_mac, vteps_from_nodes
from bgpd.datastore.memory import MemoryDatastore
from bgpd.model import from_dict, to_dict
from ipam import Ipam


def node(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "projectcalico.org/v3", "kind": "Node", "metadata": {"name": name},
            "spec": spec}  # fmt: skip


async def put(store: MemoryDatastore, key: str, doc: dict[str, Any]) -> None:
    await store.put(key, json.dumps(to_dict(from_dict(doc))).encode())


async def test_vteps_from_nodes_skips_self_and_incomplete_nodes() -> None:
    store = MemoryDatastore()
    await put(store, NODE_PREFIX + "a", node("a", bgp={"ipv4Address": "198.18.0.1/24"},
                                              ipv4VXLANTunnelAddr="10.244.0.0"))  # fmt: skip
    await put(store, NODE_PREFIX + "b", node("b", bgp={"ipv4Address": "198.18.0.2/24"},
                                              ipv4VXLANTunnelAddr="10.244.1.0",
                                              vxlanTunnelMACAddr="66:AA:BB:CC:DD:EE"))  # fmt: skip
    await put(store, NODE_PREFIX + "c", node("c", bgp={"ipv4Address": "198.18.0.3/24"}))
    await put(store, NODE_PREFIX + "d", node("d", ipv4VXLANTunnelAddr="10.244.3.0"))
    await put(store, NODE_PREFIX + "e", node("e", bgp={"ipv4Address": "198.18.0.5/24"},
                                              ipv4VXLANTunnelAddr="10.244.4.0"))  # fmt: skip
    await store.put(NODE_PREFIX + "broken", b"{not json")
    vteps = vteps_from_nodes(await read_nodes(store), "a")
    assert [(v.node, str(v.tunnel_ip), v.mac, str(v.underlay_ip)) for v in vteps] == [
        ("b", "10.244.1.0", "66:aa:bb:cc:dd:ee", "198.18.0.2"),
        ("e", "10.244.4.0", vtep_mac("e"), "198.18.0.5"),
    ]


async def test_vtep_address_is_kept_or_reallocated() -> None:
    store = MemoryDatastore()
    pool = {"apiVersion": "projectcalico.org/v3", "kind": "IPPool",
            "metadata": {"name": "p"}, "spec": {"cidr": "10.244.0.0/16", "vxlanMode": "Always"}}  # fmt: skip
    await put(store, "/routemesh/v1/resources/IPPool/p", pool)
    ipam = Ipam(store, "node-a")
    first = await vtep_address(ipam, "node-a", None)
    assert first in ipaddress.ip_network("10.244.0.0/16")
    # A restart with the address already in our Node: the same address, nothing new taken.
    assert await vtep_address(ipam, "node-a", str(first)) == first
    assert await vtep_address(ipam, "node-a", str(first)) == first
    # Another handle took it meanwhile (e.g. the store was restored): we get a fresh one.
    other = Ipam(store, "node-b")
    await other.release_handle("vxlan-tunnel-addr-node-a")
    await other.assign_ip("someone-else", str(first))
    again = await vtep_address(ipam, "node-a", str(first))
    assert again != first and again in ipaddress.ip_network("10.244.0.0/16")
