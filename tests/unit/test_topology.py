"""Peer-set computation: mesh, route reflectors via BGPPeer selectors, external peers."""

from __future__ import annotations

from pathlib import Path

import pytest

from bgpd.model import load_documents
from bgpd.model.bgp import BGPConfiguration, BGPPeer, Node
from bgpd.reflector.topology import PeerSpec, compute_topology, diff_peers

EXAMPLES = Path(__file__).resolve().parents[2].parent / "shared" / "examples"


def node(name: str, v4: str, *, labels: dict[str, str] | None = None, **bgp: object) -> Node:
    spec = {"bgp": {"ipv4Address": v4, **bgp}}
    doc = {"apiVersion": "projectcalico.org/v3", "kind": "Node"}
    doc["metadata"] = {"name": name, "labels": labels or {}}
    doc["spec"] = spec
    (res,) = load_documents(_yaml(doc))
    assert isinstance(res, Node)
    return res


def _yaml(doc: dict) -> str:
    import yaml

    return yaml.safe_dump(doc)


def resources(text: str) -> tuple[BGPConfiguration | None, list[Node], list[BGPPeer]]:
    docs = load_documents(text)
    config = next((d for d in docs if isinstance(d, BGPConfiguration)), None)
    return (
        config,
        [d for d in docs if isinstance(d, Node)],
        [d for d in docs if isinstance(d, BGPPeer)],
    )


HOSTS = [
    node("host1", "198.18.0.2/24", labels={"rack": "r1"}),
    node("host2", "198.18.0.3/24"),
    node("host3", "198.18.0.4/24", asNumber=64999),
]


def test_default_is_full_mesh_with_every_other_node() -> None:
    topo = compute_topology("host1", HOSTS)
    assert topo.asn == 64512
    assert topo.router_id == "198.18.0.2"
    assert topo.cluster_id is None
    assert [(p.address, p.remote_asn, p.source, p.node) for p in topo.peers] == [
        ("198.18.0.3", 64512, "mesh", "host2"),
        ("198.18.0.4", 64999, "mesh", "host3"),
    ]
    # Mesh sessions bind to the node's own address, as Calico's BIRD config does.
    assert {p.source_address for p in topo.peers} == {"198.18.0.2"}
    assert not any(p.route_reflector_client for p in topo.peers)


def test_unknown_node_is_an_error() -> None:
    with pytest.raises(KeyError):
        compute_topology("nope", HOSTS)


def test_calico_route_reflector_recipe_from_the_examples() -> None:
    config, rrs, peers = resources((EXAMPLES / "route-reflectors.yaml").read_text())
    nodes = [*rrs, *HOSTS]
    # A plain node peers only with the two reflectors (mesh is off), as their client.
    host = compute_topology("host2", nodes, peers, config)
    assert [(p.address, p.node, p.route_reflector_client) for p in host.peers] == [
        ("198.18.0.10", "rr1", False),
        ("198.18.0.11", "rr2", False),
    ]
    assert {p.source for p in host.peers} == {"bgppeer:peer-with-route-reflectors"}
    # host1 is in rack r1, so the ToR peer applies too, with its own AS, GTSM and secret ref.
    h1 = compute_topology("host1", nodes, peers, config).by_address()
    tor = h1["198.18.1.1"]
    assert (tor.remote_asn, tor.ttl_security, tor.password_ref) == (
        65001,
        1,
        "bgp-secrets/tor-password",
    )
    assert "198.18.1.1" not in compute_topology("host2", nodes, peers, config).by_address()
    # A reflector treats every node outside its cluster as a client, and its twin as a
    # non-client (same cluster id): routes still reach it directly from every client.
    rr1 = compute_topology("rr1", nodes, peers, config)
    assert rr1.cluster_id == "244.0.0.1"
    got = {p.address: p.route_reflector_client for p in rr1.peers}
    assert got == {
        "198.18.0.2": True,
        "198.18.0.3": True,
        "198.18.0.4": True,
        "198.18.0.11": False,
    }


def test_node_specific_peer_and_own_address_skipped() -> None:
    _, _, peers = resources(
        """
apiVersion: projectcalico.org/v3
kind: BGPPeer
metadata: {name: only-host2}
spec: {node: host2, peerIP: 198.18.5.1, asNumber: 65100, keepOriginalNextHop: true}
---
apiVersion: projectcalico.org/v3
kind: BGPPeer
metadata: {name: to-myself}
spec: {peerIP: 198.18.0.3, asNumber: 64512}
"""
    )
    h2 = compute_topology("host2", HOSTS, peers).by_address()
    assert h2["198.18.5.1"].next_hop == "keep"
    assert h2["198.18.5.1"].source == "bgppeer:only-host2"
    assert "198.18.0.3" not in h2  # our own address is never a peer
    h1 = compute_topology("host1", HOSTS, peers).by_address()
    assert "198.18.5.1" not in h1
    # The global peer to 198.18.0.3 is host2 itself; from host1 it wins over the mesh entry.
    assert h1["198.18.0.3"].source == "bgppeer:to-myself"


def test_diff_leaves_unchanged_sessions_alone() -> None:
    before = compute_topology("host1", HOSTS[:2]).peers
    after = compute_topology("host1", HOSTS).peers
    added, removed, changed = diff_peers(before, after)
    assert [p.address for p in added] == ["198.18.0.4"]
    assert removed == [] and changed == []
    added, removed, changed = diff_peers(after, before)
    assert [p.address for p in removed] == ["198.18.0.4"]
    bumped = [PeerSpec(**{**_fields(p), "remote_asn": 65000}) for p in before]
    _, _, changed = diff_peers(before, bumped)
    assert [(a.remote_asn, b.remote_asn) for a, b in changed] == [(64512, 65000)]


def _fields(p: PeerSpec) -> dict:
    return {f: getattr(p, f) for f in p.__slots__}
