"""Each validation rule of the resource model with a failing and a passing case, the loader's
error messages (source, document, kind/name, field path, reason) and the serialising rules."""

from __future__ import annotations

import datetime
from typing import Any

import pytest
import yaml

from bgpd.model import (
    CALICO_API,
    K8S_NETWORKING_API,
    KINDS,
    IPPool,
    ResourceError,
    check_pool_overlap,
    from_dict,
    load_documents,
    to_dict,
    to_yaml,
)
from bgpd.model.bgp import BGPPeerSpec, split_peer_ip
from bgpd.model.ipam import IPPoolSpec


def manifest(kind: str, spec: Any = None, name: str = "x", api: str = CALICO_API, **meta) -> str:
    doc: dict[str, Any] = {"apiVersion": api, "kind": kind, "metadata": {"name": name, **meta}}
    if spec is not None:
        doc["spec"] = spec
    return yaml.safe_dump(doc, sort_keys=False)


def load_one(kind: str, spec: Any = None, **kw) -> Any:
    [resource] = load_documents(manifest(kind, spec, **kw), source="t.yaml")
    return resource


def reject(kind: str, spec: Any = None, **kw) -> ResourceError:
    with pytest.raises(ResourceError) as info:
        load_documents(manifest(kind, spec, **kw), source="t.yaml")
    return info.value


def paths(err: ResourceError) -> list[str]:
    return [e.path for e in err.errors]


def pool(cidr: str, **spec) -> dict:
    return {"cidr": cidr, **spec}


# --- IPPool -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cidr", "size", "ok"),
    [
        ("10.244.0.0/16", 19, False),
        ("10.244.0.0/16", 20, True),
        ("10.244.0.0/16", 32, True),
        ("10.244.0.0/16", 33, False),
        ("fd00:10::/48", 115, False),
        ("fd00:10::/48", 116, True),
        ("fd00:10::/48", 128, True),
        ("fd00:10::/48", 129, False),
    ],
)
def test_pool_block_size_range(cidr: str, size: int, ok: bool) -> None:
    if ok:
        assert load_one("IPPool", pool(cidr, blockSize=size)).spec.block_size == size
    else:
        err = reject("IPPool", pool(cidr, blockSize=size))
        assert paths(err) == ["spec.blockSize"]
        family = 4 if "." in cidr else 6
        low, high = (20, 32) if family == 4 else (116, 128)
        assert f"must be between {low} and {high} for an IPv{family} pool" in str(err)


def test_pool_block_size_not_larger_than_pool() -> None:
    err = reject("IPPool", pool("10.244.0.0/24", blockSize=22))
    assert paths(err) == ["spec.blockSize"]
    assert "larger than the pool" in str(err)
    assert load_one("IPPool", pool("10.244.0.0/24", blockSize=24)).spec.block_size == 24


def test_pool_defaults_are_readable_but_not_written_back() -> None:
    v4 = load_one("IPPool", pool("10.244.0.0/16"))
    v6 = load_one("IPPool", pool("fd00:10::/48"))
    assert (v4.spec.block_size, v6.spec.block_size) == (26, 122)
    assert (v4.spec.ipip_mode, v4.spec.vxlan_mode, v4.spec.node_selector) == (
        "Never",
        "Never",
        "all()",
    )
    assert v4.spec.nat_outgoing is False
    assert to_dict(v4)["spec"] == {"cidr": "10.244.0.0/16"}


def test_pool_cidr_is_stored_as_network_like_calico() -> None:
    res = load_one("IPPool", pool("10.244.7.9/16"))
    assert res.spec.cidr == "10.244.0.0/16"
    assert to_dict(res)["spec"]["cidr"] == "10.244.0.0/16"


@pytest.mark.parametrize("cidr", ["10.300.0.0/16", "10.244.0.0", "10.244.0.0/33", "pool"])
def test_pool_cidr_must_parse(cidr: str) -> None:
    err = reject("IPPool", pool(cidr))
    assert paths(err) == ["spec.cidr"]
    assert repr(cidr) in str(err)


@pytest.mark.parametrize("mode", ["Always", "CrossSubnet"])
def test_ipip_rejected_on_ipv6_pool(mode: str) -> None:
    err = reject("IPPool", pool("fd00:20::/48", ipipMode=mode))
    assert paths(err) == ["spec.ipipMode"]
    assert "IPv6" in str(err)


def test_ipip_never_and_vxlan_allowed_on_ipv6_pool() -> None:
    res = load_one("IPPool", pool("fd00:20::/48", ipipMode="Never", vxlanMode="Always"))
    assert res.spec.vxlan_mode == "Always"


@pytest.mark.parametrize(
    ("ipip", "vxlan", "ok"),
    [
        ("Always", "Always", False),
        ("CrossSubnet", "Always", False),
        ("Always", "CrossSubnet", False),
        ("Always", "Never", True),
        ("Never", "CrossSubnet", True),
    ],
)
def test_ipip_and_vxlan_not_both_enabled(ipip: str, vxlan: str, ok: bool) -> None:
    spec = pool("10.244.0.0/16", ipipMode=ipip, vxlanMode=vxlan)
    if ok:
        load_one("IPPool", spec)
    else:
        err = reject("IPPool", spec)
        assert paths(err) == ["spec.vxlanMode"]
        assert "cannot both be enabled" in str(err)


def test_encap_mode_is_case_sensitive_and_lists_choices() -> None:
    err = reject("IPPool", pool("10.244.0.0/16", ipipMode="always"))
    assert paths(err) == ["spec.ipipMode"]
    assert "'Never', 'Always' or 'CrossSubnet'" in str(err)
    assert "got 'always'" in str(err)


def test_pool_rejects_link_local() -> None:
    assert paths(reject("IPPool", pool("169.254.0.0/16"))) == ["spec.cidr"]
    assert paths(reject("IPPool", pool("fe80::/64", blockSize=122))) == ["spec.cidr"]


def test_pool_allowed_uses_and_node_selector() -> None:
    res = load_one("IPPool", pool("10.244.0.0/16", allowedUses=["Workload", "Tunnel"]))
    assert res.spec.allowed_uses == ["Workload", "Tunnel"]
    assert paths(reject("IPPool", pool("10.244.0.0/16", allowedUses=["Pods"]))) == [
        "spec.allowedUses[0]"
    ]
    assert paths(reject("IPPool", pool("10.244.0.0/16", allowedUses=["Tunnel", "Tunnel"]))) == [
        "spec.allowedUses"
    ]
    err = reject("IPPool", pool("10.244.0.0/16", nodeSelector="rack == "))
    assert paths(err) == ["spec.nodeSelector"]
    assert "position" in str(err)


def test_pool_collects_every_field_error_of_a_document() -> None:
    err = reject("IPPool", pool("10.244.0.0/16", blockSize="26", natOutgoing="yes", color=1))
    assert sorted(paths(err)) == ["spec.blockSize", "spec.color", "spec.natOutgoing"]
    assert len(str(err).splitlines()) == 3


def _pool(name: str, cidr: str) -> IPPool:
    return IPPool(metadata={"name": name}, spec=IPPoolSpec(cidr=cidr))


def test_check_pool_overlap() -> None:
    existing = [_pool("a", "10.244.0.0/16"), _pool("v6", "fd00:10::/48")]
    check_pool_overlap(_pool("b", "10.245.0.0/16"), existing)
    check_pool_overlap(_pool("v6b", "fd00:11::/48"), existing)
    # Updating a pool in place compares it with the others, not with its old self.
    check_pool_overlap(_pool("a", "10.244.0.0/17"), existing)
    with pytest.raises(ResourceError) as info:
        check_pool_overlap(_pool("c", "10.244.128.0/18"), existing)
    assert str(info.value) == (
        "IPPool c: spec.cidr: 10.244.128.0/18 overlaps IPPool a (10.244.0.0/16)"
    )
    with pytest.raises(ResourceError):
        check_pool_overlap(_pool("d", "10.0.0.0/8"), existing)


def test_ipam_configuration_and_reservation() -> None:
    cfg = load_one("IPAMConfiguration", {"strictAffinity": True}, name="default")
    assert cfg.spec.auto_allocate_blocks is True
    assert paths(reject("IPAMConfiguration", {"strictAffinity": True}, name="other")) == [
        "metadata.name"
    ]
    assert paths(reject("IPAMConfiguration", {"maxBlocksPerHost": -1}, name="default")) == [
        "spec.maxBlocksPerHost"
    ]
    res = load_one("IPReservation", {"reservedCIDRs": ["10.244.0.0/24", "10.244.1.1"]})
    assert res.spec.reserved_cidrs == ["10.244.0.0/24", "10.244.1.1"]
    assert paths(reject("IPReservation", {"reservedCIDRs": ["10.244.0.0/24", "x"]})) == [
        "spec.reservedCIDRs[1]"
    ]


# --- AS numbers, BGP ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("asn", "ok"),
    [(0, False), (1, True), (64512, True), (4294967295, True), (4294967296, False)],
)
def test_as_number_range(asn: int, ok: bool) -> None:
    spec = {"asNumber": asn}
    if ok:
        assert load_one("BGPConfiguration", spec, name="default").spec.as_number == asn
    else:
        err = reject("BGPConfiguration", spec, name="default")
        assert paths(err) == ["spec.asNumber"]
        assert "1..4294967295" in str(err)


@pytest.mark.parametrize("asn", ["64512", True, 64512.0])
def test_as_number_must_be_an_integer(asn: Any) -> None:
    assert paths(reject("BGPPeer", {"peerIP": "198.18.1.1", "asNumber": asn})) == ["spec.asNumber"]


def test_bgp_configuration_fields() -> None:
    spec = {
        "asNumber": 64512,
        "listenPort": 1179,
        "logSeverityScreen": "Debug",
        "serviceExternalIPs": [{"cidr": "198.18.200.0/24"}],
        "serviceLoadBalancerIPs": [{"cidr": "198.18.201.0/24"}],
        "communities": [{"name": "gold", "value": "64512:100"}],
        "prefixAdvertisements": [
            {"cidr": "10.244.0.0/16", "communities": ["gold", "64512:200", "1:2:3"]}
        ],
        "ignoredInterfaces": ["eth9"],
        "bindMode": "NodeIP",
        "nodeMeshPassword": {"secretKeyRef": {"name": "bgp", "key": "mesh"}},
        "nodeMeshMaxRestartTime": "120s",
        "localWorkloadPeeringIPV4": "169.254.0.179",
        "localWorkloadPeeringIPV6": "fd00::179",
    }
    res = load_one("BGPConfiguration", spec, name="default")
    assert to_dict(res)["spec"] == spec
    assert res.spec.node_mesh_password.secret_key_ref.key == "mesh"


@pytest.mark.parametrize(
    ("spec", "path"),
    [
        ({"serviceClusterIPs": [{"cidr": "10.96.0.0/33"}]}, "spec.serviceClusterIPs[0].cidr"),
        ({"communities": [{"name": "c", "value": "65536:1"}]}, "spec.communities[0].value"),
        (
            {"prefixAdvertisements": [{"cidr": "10.244.0.0/16", "communities": ["silver"]}]},
            "spec.prefixAdvertisements[0].communities[0]",
        ),
        ({"listenPort": 0}, "spec.listenPort"),
        ({"listenPort": 65536}, "spec.listenPort"),
        ({"logSeverityScreen": "Verbose"}, "spec.logSeverityScreen"),
        ({"bindMode": "Any"}, "spec.bindMode"),
        ({"nodeMeshMaxRestartTime": "2 minutes"}, "spec.nodeMeshMaxRestartTime"),
        ({"localWorkloadPeeringIPV4": "fd00::1"}, "spec.localWorkloadPeeringIPV4"),
        (
            {"nodeMeshPassword": {"secretKeyRef": {"name": "bgp"}}},
            "spec.nodeMeshPassword.secretKeyRef.key",
        ),
    ],
)
def test_bgp_configuration_rejects(spec: dict, path: str) -> None:
    assert paths(reject("BGPConfiguration", spec, name="default")) == [path]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("198.18.1.1", ("198.18.1.1", None)),
        ("198.18.1.1:1179", ("198.18.1.1", 1179)),
        ("fd00::1", ("fd00::1", None)),
        ("[fd00::1]:179", ("fd00::1", 179)),
    ],
)
def test_peer_ip_forms(text: str, expected: tuple) -> None:
    assert split_peer_ip(text) == expected
    assert load_one("BGPPeer", {"peerIP": text, "asNumber": 65001}).spec.peer_ip == text


@pytest.mark.parametrize(
    "text", ["198.18.1", "198.18.1.1:0", "198.18.1.1:70000", "[fd00::1", "h:1"]
)
def test_peer_ip_rejects(text: str) -> None:
    assert paths(reject("BGPPeer", {"peerIP": text})) == ["spec.peerIP"]


def test_bgp_peer_full_spec_round_trips() -> None:
    spec = {
        "node": "node-1",
        "peerIP": "198.18.1.1:179",
        "asNumber": 65001,
        "password": {"secretKeyRef": {"name": "bgp-secrets", "key": "tor"}},
        "keepOriginalNextHop": True,
        "nextHopMode": "Keep",
        "maxRestartTime": "1m30s",
        "ttlSecurity": 2,
        "filters": ["export-only-pools"],
        "sourceAddress": "None",
        "numAllowedLocalASNumbers": 1,
        "reachableBy": "198.18.0.1",
    }
    assert to_dict(load_one("BGPPeer", spec))["spec"] == spec


@pytest.mark.parametrize(
    ("spec", "path"),
    [
        ({"node": "n1", "nodeSelector": "all()"}, "spec.nodeSelector"),
        ({"peerIP": "198.18.1.1", "peerSelector": "rr == 'true'"}, "spec.peerSelector"),
        ({"peerSelector": "rr == 'true'", "asNumber": 65001}, "spec.asNumber"),
        ({"peerSelector": "rr == "}, "spec.peerSelector"),
        ({"keepOriginalNextHop": True, "nextHopMode": "Self"}, "spec.nextHopMode"),
        ({"nextHopMode": "auto"}, "spec.nextHopMode"),
        ({"maxRestartTime": "120"}, "spec.maxRestartTime"),
        ({"ttlSecurity": 256}, "spec.ttlSecurity"),
        ({"sourceAddress": "NodeIP"}, "spec.sourceAddress"),
        ({"filters": ["Not_A_Name"]}, "spec.filters[0]"),
        ({"peerSelector": "all()", "reachableBy": "198.18.0.1"}, "spec.reachableBy"),
        (
            {"password": {"secretKeyRef": {"name": "s", "key": "k", "optional": True}}},
            "spec.password.secretKeyRef.optional",
        ),
    ],
)
def test_bgp_peer_rejects(spec: dict, path: str) -> None:
    assert paths(reject("BGPPeer", spec)) == [path]


def test_bgp_filter() -> None:
    good = {
        "exportV4": [
            {
                "action": "Accept",
                "matchOperator": "In",
                "cidr": "10.244.0.0/16",
                "prefixLength": {"min": 26, "max": 32},
                "source": "RemotePeers",
                "interface": "eth0",
            },
            {"action": "Reject"},
        ],
        "importV6": [{"action": "Reject", "matchOperator": "NotEqual", "cidr": "fd00::/8"}],
    }
    assert to_dict(load_one("BGPFilter", good))["spec"] == good
    bad_cases = [
        ({"exportV4": [{"action": "Drop"}]}, "spec.exportV4[0].action"),
        (
            {"exportV4": [{"action": "Accept", "cidr": "10.0.0.0/8"}]},
            "spec.exportV4[0].matchOperator",
        ),
        (
            {"importV4": [{"action": "Accept", "matchOperator": "In", "cidr": "fd00::/8"}]},
            "spec.importV4[0].cidr",
        ),
        (
            {"exportV6": [{"action": "Accept", "matchOperator": "Like", "cidr": "fd00::/8"}]},
            "spec.exportV6[0].matchOperator",
        ),
        (
            {
                "exportV4": [
                    {
                        "action": "Accept",
                        "matchOperator": "In",
                        "cidr": "10.0.0.0/8",
                        "prefixLength": {"min": 28, "max": 24},
                    }
                ]
            },
            "spec.exportV4[0].prefixLength",
        ),
        (
            {
                "exportV4": [
                    {
                        "action": "Accept",
                        "matchOperator": "In",
                        "cidr": "10.0.0.0/8",
                        "prefixLength": {"max": 64},
                    }
                ]
            },
            "spec.exportV4[0].prefixLength.max",
        ),
    ]
    for spec, path in bad_cases:
        assert paths(reject("BGPFilter", spec)) == [path], spec


def test_node() -> None:
    spec = {
        "bgp": {
            "ipv4Address": "198.18.0.10/24",
            "ipv6Address": "fd00::10/64",
            "asNumber": 64513,
            "routeReflectorClusterID": "244.0.0.1",
        },
        "ipv4VXLANTunnelAddr": "10.244.3.0",
        "vxlanTunnelMACAddr": "66:2d:3f:4e:5a:6b",
        "addresses": [{"address": "198.18.0.10/24", "type": "CalicoNodeIP"}],
        "orchRefs": [{"nodeName": "rr1", "orchestrator": "k8s"}],
    }
    node = load_one("Node", spec, name="rr1", labels={"route-reflector": "true"})
    assert to_dict(node)["spec"] == spec
    assert node.metadata.labels == {"route-reflector": "true"}
    bad_cases = [
        ({"bgp": {"ipv4Address": "fd00::10/64"}}, "spec.bgp.ipv4Address"),
        ({"bgp": {"ipv4Address": "198.18.0.300/24"}}, "spec.bgp.ipv4Address"),
        ({"bgp": {"routeReflectorClusterID": "fd00::1"}}, "spec.bgp.routeReflectorClusterID"),
        ({"bgp": {"asNumber": 0}}, "spec.bgp.asNumber"),
        ({"ipv4VXLANTunnelAddr": "fd00::1"}, "spec.ipv4VXLANTunnelAddr"),
        ({"vxlanTunnelMACAddr": "66:2d:3f"}, "spec.vxlanTunnelMACAddr"),
    ]
    for spec, path in bad_cases:
        assert paths(reject("Node", spec)) == [path], spec


# --- metadata -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["Bad_Name", "UPPER", "-lead", "trail-", "a" * 254, "a..b", ""])
def test_names_must_be_dns_subdomains(name: str) -> None:
    err = reject("GlobalNetworkSet", {"nets": []}, name=name)
    assert paths(err) == ["metadata.name"]


@pytest.mark.parametrize("name", ["kns.ami-a", "a", "0abc", "node.rr1.example.com"])
def test_names_accepted(name: str) -> None:
    assert load_one("GlobalNetworkSet", {"nets": []}, name=name).name == name


def test_labels_validated_and_strings_only() -> None:
    err = reject("Node", {}, labels={"route-reflector": True})
    assert paths(err) == ["metadata.labels.route-reflector"]
    assert paths(reject("Node", {}, labels={"bad key!": "x"})) == ["metadata.labels"]
    assert paths(reject("Node", {}, labels={"k": "-bad-value"})) == ["metadata.labels"]
    node = load_one("Node", {}, labels={"example.com/rack": "r1", "empty": ""})
    assert node.metadata.labels["example.com/rack"] == "r1"


def test_missing_name() -> None:
    text = "apiVersion: projectcalico.org/v3\nkind: Tier\nmetadata: {}\n"
    with pytest.raises(ResourceError) as info:
        load_documents(text, "t.yaml")
    assert str(info.value) == "t.yaml: document 1 (Tier): metadata.name: required field missing"


def test_namespace_rules() -> None:
    err = reject("IPPool", pool("10.244.0.0/16"), namespace="default")
    assert paths(err) == ["metadata.namespace"]
    assert "not namespaced" in str(err)
    ns = load_one("NetworkSet", {"nets": ["198.18.5.0/24"]})
    assert ns.namespace == "default"
    assert "namespace" not in to_dict(ns)["metadata"]
    assert load_one("NetworkSet", {}, namespace="team-a").namespace == "team-a"
    assert paths(reject("NetworkSet", {}, namespace="Team_A")) == ["metadata.namespace"]


def test_store_metadata_fields_accepted_and_kept() -> None:
    text = (
        "apiVersion: projectcalico.org/v3\nkind: Tier\nmetadata:\n  name: security\n"
        "  resourceVersion: '42'\n  uid: 1d0c5bd2-7a0e-4d1f-9f3b-9d2a6d2f8e11\n"
        "  creationTimestamp: 2024-05-01T10:00:00Z\n  annotations:\n    note: x\n"
        "spec:\n  order: 100\n"
    )
    [tier] = load_documents(text)
    assert tier.metadata.resource_version == "42"
    assert isinstance(tier.metadata.creation_timestamp, datetime.datetime)
    assert to_dict(tier) == yaml.safe_load(text)


# --- policy rules -------------------------------------------------------------------------------


def gnp(*ingress: dict, **spec) -> dict:
    return {"selector": "all()", "types": ["Ingress"], "ingress": list(ingress), **spec}


def test_ports_need_a_port_protocol() -> None:
    err = reject("GlobalNetworkPolicy", gnp({"action": "Allow", "destination": {"ports": [80]}}))
    assert paths(err) == ["spec.ingress[0].destination.ports"]
    assert "TCP, UDP, SCTP or UDPLite" in str(err)
    err = reject(
        "GlobalNetworkPolicy",
        gnp({"action": "Allow", "protocol": "ICMP", "source": {"notPorts": [80]}}),
    )
    assert paths(err) == ["spec.ingress[0].source.notPorts"]
    for proto in ("TCP", "UDP", "SCTP", "UDPLite", 6, "tcp"):
        rule = {
            "action": "Allow",
            "protocol": proto,
            "destination": {"ports": [80, "8080:8090", "http"]},
        }
        assert load_one("GlobalNetworkPolicy", gnp(rule)).spec.ingress[0].protocol == proto


@pytest.mark.parametrize(
    "port", [70000, "90:80", "0:70000", "Bad_Name", "toolongportname16", -1, 1.5]
)
def test_bad_ports(port: Any) -> None:
    rule = {"action": "Allow", "protocol": "TCP", "destination": {"ports": [port]}}
    assert paths(reject("GlobalNetworkPolicy", gnp(rule))) == [
        "spec.ingress[0].destination.ports[0]"
    ]


@pytest.mark.parametrize("proto", [0, 256, "tcpp", "IGMP", True])
def test_bad_protocol(proto: Any) -> None:
    err = reject("GlobalNetworkPolicy", gnp({"action": "Allow", "protocol": proto}))
    assert paths(err) == ["spec.ingress[0].protocol"]


def test_protocol_numbers_and_not_protocol() -> None:
    rule = {"action": "Deny", "protocol": 47, "notProtocol": "UDP"}
    assert load_one("GlobalNetworkPolicy", gnp(rule)).spec.ingress[0].protocol == 47
    err = reject(
        "GlobalNetworkPolicy", gnp({"action": "Deny", "protocol": "TCP", "notProtocol": 6})
    )
    assert paths(err) == ["spec.ingress[0].notProtocol"]


def test_icmp_rules() -> None:
    ok = {"action": "Allow", "protocol": "ICMP", "icmp": {"type": 8, "code": 0}}
    assert load_one("GlobalNetworkPolicy", gnp(ok)).spec.ingress[0].icmp.type == 8
    ok6 = {"action": "Allow", "protocol": "ICMPv6", "ipVersion": 6, "notICMP": {"type": 128}}
    assert to_dict(load_one("GlobalNetworkPolicy", gnp(ok6)))["spec"]["ingress"] == [ok6]
    cases = [
        ({"action": "Allow", "icmp": {"type": 8}}, "spec.ingress[0].icmp"),
        ({"action": "Allow", "protocol": "TCP", "notICMP": {"type": 8}}, "spec.ingress[0].notICMP"),
        ({"action": "Allow", "protocol": "ICMP", "ipVersion": 6}, "spec.ingress[0].protocol"),
        ({"action": "Allow", "protocol": "ICMPv6", "ipVersion": 4}, "spec.ingress[0].protocol"),
        ({"action": "Allow", "protocol": "ICMP", "icmp": {"code": 0}}, "spec.ingress[0].icmp.code"),
        (
            {"action": "Allow", "protocol": "ICMP", "icmp": {"type": 255}},
            "spec.ingress[0].icmp.type",
        ),
        ({"action": "Allow", "ipVersion": 5}, "spec.ingress[0].ipVersion"),
    ]
    for rule, path in cases:
        assert paths(reject("GlobalNetworkPolicy", gnp(rule))) == [path], rule


def test_entity_rule_fields_and_checks() -> None:
    rule = {
        "action": "Allow",
        "protocol": "TCP",
        "ipVersion": 4,
        "source": {
            "nets": ["198.18.0.0/16", "198.18.9.9"],
            "notNets": ["198.18.1.0/24"],
            "selector": "role == 'web'",
            "notSelector": "has(quarantine)",
            "namespaceSelector": "project == 'web'",
            "serviceAccounts": {"names": ["api"], "selector": "team == 'a'"},
        },
        "destination": {"ports": [443], "services": {"name": "kubernetes", "namespace": "default"}},
        "http": {"methods": ["GET"], "paths": [{"exact": "/healthz"}, {"prefix": "/api"}]},
        "metadata": {"annotations": {"why": "web tier"}},
    }
    spec = gnp(rule)
    assert to_dict(load_one("GlobalNetworkPolicy", spec))["spec"] == spec
    cases = [
        (
            {"action": "Allow", "source": {"nets": ["198.18.0.0/33"]}},
            "spec.ingress[0].source.nets[0]",
        ),
        (
            {"action": "Allow", "ipVersion": 4, "source": {"nets": ["fd00::/8"]}},
            "spec.ingress[0].source.nets[0]",
        ),
        (
            {"action": "Allow", "source": {"selector": "role == 'web"}},
            "spec.ingress[0].source.selector",
        ),
        (
            {"action": "Allow", "destination": {"notSelector": "&&"}},
            "spec.ingress[0].destination.notSelector",
        ),
        (
            {"action": "Allow", "destination": {"services": {"name": "k"}, "nets": ["10.0.0.0/8"]}},
            "spec.ingress[0].destination.services",
        ),
        (
            {"action": "Allow", "http": {"paths": [{"exact": "/a", "prefix": "/b"}]}},
            "spec.ingress[0].http.paths[0]",
        ),
        ({"action": "allow"}, "spec.ingress[0].action"),
        ({"protocol": "TCP"}, "spec.ingress[0].action"),
        ({"action": "Allow", "source": {"tag": "x"}}, "spec.ingress[0].source.tag"),
    ]
    for rule, path in cases:
        assert paths(reject("GlobalNetworkPolicy", gnp(rule))) == [path], rule


def test_policy_spec_rules() -> None:
    full = {
        "tier": "security",
        "order": 100.5,
        "selector": "all()",
        "namespaceSelector": "has(org)",
        "serviceAccountSelector": "all()",
        "types": ["Ingress", "Egress"],
        "ingress": [{"action": "Pass"}],
        "egress": [{"action": "Log"}, {"action": "Deny"}],
        "applyOnForward": True,
        "doNotTrack": True,
    }
    assert to_dict(load_one("GlobalNetworkPolicy", full))["spec"] == full
    cases = [
        ({"preDNAT": True, "doNotTrack": True, "applyOnForward": True}, "spec.preDNAT"),
        ({"preDNAT": True}, "spec.applyOnForward"),
        ({"doNotTrack": True}, "spec.applyOnForward"),
        ({"preDNAT": True, "applyOnForward": True, "types": ["Egress"]}, "spec.types"),
        ({"types": ["Egress"], "ingress": [{"action": "Allow"}]}, "spec.ingress"),
        ({"types": ["Ingress"], "egress": [{"action": "Allow"}]}, "spec.egress"),
        ({"types": ["Ingress", "Ingress"]}, "spec.types"),
        ({"types": ["Forward"]}, "spec.types[0]"),
        ({"order": "first"}, "spec.order"),
        ({"selector": "org == "}, "spec.selector"),
        ({"namespaceSelector": "org in {"}, "spec.namespaceSelector"),
        ({"tier": "Security"}, "spec.tier"),
    ]
    for spec, path in cases:
        assert paths(reject("GlobalNetworkPolicy", spec)) == [path], spec


def test_namespaced_policy_has_no_global_fields() -> None:
    np = load_one("NetworkPolicy", {"selector": "app == 'db'", "order": 10}, namespace="db")
    assert (np.namespace, np.spec.order) == ("db", 10.0)
    assert to_dict(np)["spec"]["order"] == 10
    for field in ("namespaceSelector", "preDNAT", "doNotTrack", "applyOnForward"):
        value = "all()" if field == "namespaceSelector" else True
        assert paths(reject("NetworkPolicy", {field: value})) == [f"spec.{field}"]


def test_profile_network_sets_and_tier() -> None:
    prof = load_one("Profile", {"labelsToApply": {"org": "ami"}, "egress": [{"action": "Allow"}]})
    assert prof.spec.labels_to_apply == {"org": "ami"}
    assert paths(reject("Profile", {"labelsToApply": {"org": 1}})) == ["spec.labelsToApply.org"]
    assert paths(reject("GlobalNetworkSet", {"nets": ["198.18.0.0/15", "nope"]})) == [
        "spec.nets[1]"
    ]
    assert load_one("Tier", {"order": 300}).spec.order == 300.0
    assert paths(reject("Tier", {"order": True})) == ["spec.order"]


# --- endpoints ----------------------------------------------------------------------------------


def test_workload_endpoint() -> None:
    spec = {
        "orchestrator": "k8s",
        "workload": "",
        "node": "node-1",
        "containerID": "1337495556942031415926535",
        "pod": "frontend-5gs43",
        "endpoint": "eth0",
        "serviceAccountName": "default",
        "ipNetworks": ["10.244.3.7/32", "fd00:10:244::7/128"],
        "ipNATs": [{"internalIP": "10.244.3.7", "externalIP": "198.18.9.1"}],
        "ipv4Gateway": "169.254.1.1",
        "profiles": ["kns.default", "ksa.default.default"],
        "interfaceName": "cali0ef24ba",
        "mac": "ca:fe:1d:52:bb:e9",
        "ports": [
            {"name": "http", "protocol": "TCP", "port": 80, "hostPort": 8080, "hostIP": "0.0.0.0"}
        ],
    }
    wep = load_one(
        "WorkloadEndpoint", spec, name="node--1-k8s-frontend--5gs43-eth0", namespace="web"
    )
    assert to_dict(wep)["spec"] == spec
    cases = [
        ({"ipNetworks": ["10.244.3.7/40"]}, "spec.ipNetworks[0]"),
        ({"interfaceName": "cali0123456789abcd"}, "spec.interfaceName"),
        ({"mac": "ca:fe"}, "spec.mac"),
        ({"ipv4Gateway": "fe80::1"}, "spec.ipv4Gateway"),
        ({"ports": [{"name": "x", "protocol": "ICMP", "port": 1}]}, "spec.ports[0].protocol"),
        ({"ports": [{"name": "x", "protocol": "TCP", "port": 0}]}, "spec.ports[0].port"),
        (
            {"ports": [{"name": "x", "protocol": "TCP", "port": 1, "hostIP": "198.18.0.1"}]},
            "spec.ports[0].hostIP",
        ),
        (
            {
                "ports": [
                    {"name": "x", "protocol": "TCP", "port": 1},
                    {"name": "x", "protocol": "TCP", "port": 2},
                ]
            },
            "spec.ports[1].name",
        ),
        ({"ipNATs": [{"internalIP": "10.244.3.7"}]}, "spec.ipNATs[0].externalIP"),
    ]
    for bad, path in cases:
        assert paths(reject("WorkloadEndpoint", bad)) == [path], bad


def test_host_endpoint() -> None:
    spec = {
        "node": "node-1",
        "interfaceName": "eth0",
        "expectedIPs": ["198.18.0.10"],
        "profiles": ["ingress-allow"],
        "ports": [{"name": "ssh", "protocol": "TCP", "port": 22}],
    }
    assert to_dict(load_one("HostEndpoint", spec))["spec"] == spec
    assert load_one("HostEndpoint", {"node": "n", "interfaceName": "*"}).spec.interface_name == "*"
    assert paths(reject("HostEndpoint", {"node": "n"})) == ["spec.interfaceName"]
    assert paths(reject("HostEndpoint", {"interfaceName": "eth0"})) == ["spec.node"]
    assert paths(reject("HostEndpoint", {"node": "n", "expectedIPs": ["x"]})) == [
        "spec.expectedIPs[0]"
    ]


# --- Kubernetes NetworkPolicy -------------------------------------------------------------------


def k8s(spec: dict) -> str:
    return manifest("NetworkPolicy", spec, api=K8S_NETWORKING_API, namespace="default")


def k8s_reject(spec: dict) -> list[str]:
    with pytest.raises(ResourceError) as info:
        load_documents(k8s(spec))
    return paths(info.value)


def test_k8s_network_policy() -> None:
    spec = {
        "podSelector": {
            "matchExpressions": [
                {"key": "role", "operator": "In", "values": ["db", "cache"]},
                {"key": "legacy", "operator": "DoesNotExist"},
            ]
        },
        "policyTypes": ["Ingress", "Egress"],
        "ingress": [
            {
                "from": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"a": "b"}}}],
                "ports": [{"port": "http"}, {"protocol": "UDP", "port": 53}],
            }
        ],
        "egress": [{"to": [{"ipBlock": {"cidr": "198.18.0.0/16", "except": ["198.18.1.0/24"]}}]}],
    }
    [res] = load_documents(k8s(spec))
    assert res.API_VERSION == K8S_NETWORKING_API
    assert type(res) is KINDS[(K8S_NETWORKING_API, "NetworkPolicy")]
    assert to_dict(res)["spec"] == spec
    assert res.spec.effective_policy_types() == ["Ingress", "Egress"]
    [bare] = load_documents(k8s({"podSelector": {}, "egress": [{}]}))
    assert bare.spec.effective_policy_types() == ["Ingress", "Egress"]
    cases = [
        (
            {
                "egress": [
                    {"to": [{"ipBlock": {"cidr": "198.18.0.0/16", "except": ["10.0.0.0/24"]}}]}
                ]
            },
            "spec.egress[0].to[0].ipBlock.except[0]",
        ),
        (
            {"egress": [{"to": [{"ipBlock": {"cidr": "198.18.0.0/16"}, "podSelector": {}}]}]},
            "spec.egress[0].to[0].ipBlock",
        ),
        ({"egress": [{"to": [{}]}]}, "spec.egress[0].to[0]"),
        (
            {"ingress": [{"ports": [{"port": "http", "endPort": 90}]}]},
            "spec.ingress[0].ports[0].endPort",
        ),
        (
            {"ingress": [{"ports": [{"port": 9000, "endPort": 8000}]}]},
            "spec.ingress[0].ports[0].endPort",
        ),
        ({"ingress": [{"ports": [{"protocol": "ICMP"}]}]}, "spec.ingress[0].ports[0].protocol"),
        ({"ingress": [{"ports": [{"port": 0}]}]}, "spec.ingress[0].ports[0].port"),
        (
            {"podSelector": {"matchExpressions": [{"key": "a", "operator": "In"}]}},
            "spec.podSelector.matchExpressions[0].values",
        ),
        (
            {
                "podSelector": {
                    "matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]
                }
            },
            "spec.podSelector.matchExpressions[0].values",
        ),
        (
            {
                "podSelector": {
                    "matchExpressions": [{"key": "a", "operator": "Gt", "values": ["1"]}]
                }
            },
            "spec.podSelector.matchExpressions[0].operator",
        ),
        (
            {"podSelector": {"matchLabels": {"role": "db", "bad key": "x"}}},
            "spec.podSelector.matchLabels",
        ),
        ({"policyTypes": ["Ingress", "Ingress"]}, "spec.policyTypes"),
        ({"ingress": [{"to": []}]}, "spec.ingress[0].to"),
    ]
    for bad, path in cases:
        assert k8s_reject(bad) == [path], bad


# --- the loader ---------------------------------------------------------------------------------


def test_error_message_names_source_document_kind_name_field_and_reason() -> None:
    text = (
        manifest("Tier", {"order": 1})
        + "---\n"
        + manifest("IPPool", pool("10.1.0.0/16", blockSize=8), name="p")
    )
    with pytest.raises(ResourceError) as info:
        load_documents(text, source="pools.yaml")
    assert str(info.value) == (
        "pools.yaml: document 2 (IPPool p): spec.blockSize: must be between 20 and 32 for an IPv4 pool"
    )
    [error] = info.value.errors
    assert (error.source, error.document, error.kind, error.name, error.path) == (
        "pools.yaml",
        2,
        "IPPool",
        "p",
        "spec.blockSize",
    )
    assert isinstance(info.value, ValueError)


def test_errors_of_every_document_are_collected_and_indices_count_empty_sections() -> None:
    text = (
        "# header comment\n"
        + manifest("Tier", {"order": "x"}, name="a")
        + "---\n# only a comment here\n---\n"
        + manifest("Tier", {}, name="ok")
        + "---\n"
        + manifest("Tier", {"ordr": 1}, name="c")
        + "---\n"
    )
    with pytest.raises(ResourceError) as info:
        load_documents(text, source="f")
    assert [(e.document, e.path) for e in info.value.errors] == [
        (1, "spec.order"),
        (4, "spec.ordr"),
    ]
    assert "f: document 4 (Tier c): spec.ordr: unknown field 'ordr' (did you mean order?)" in str(
        info.value
    )


def test_empty_and_comment_only_streams_load_nothing() -> None:
    assert load_documents("") == []
    assert load_documents("# nothing\n---\n---\n") == []


def test_unknown_kind() -> None:
    with pytest.raises(ResourceError) as info:
        load_documents(manifest("IPPoolz", pool("10.0.0.0/16")), source="s")
    msg = str(info.value)
    assert msg.startswith("s: document 1 (IPPoolz x): kind: unknown kind 'IPPoolz'")
    assert "IPPool," in msg


def test_wrong_api_version() -> None:
    for api in ("projectcalico.org/v2", "crd.projectcalico.org/v1"):
        with pytest.raises(ResourceError) as info:
            load_documents(manifest("IPPool", pool("10.0.0.0/16"), api=api), source="s")
        assert paths(info.value) == ["apiVersion"]
        assert "IPPool is apiVersion projectcalico.org/v3" in str(info.value)
    # NetworkPolicy exists under both API groups; the wrong one names both.
    with pytest.raises(ResourceError) as info:
        load_documents(manifest("NetworkPolicy", {}, api="networking.k8s.io/v1beta1"))
    assert "networking.k8s.io/v1 or projectcalico.org/v3" in str(info.value)
    # And each group dispatches to its own model: a Calico field is unknown to the k8s kind.
    with pytest.raises(ResourceError) as info:
        load_documents(manifest("NetworkPolicy", {"selector": "all()"}, api=K8S_NETWORKING_API))
    assert paths(info.value) == ["spec.selector"]


def test_missing_api_version_and_kind() -> None:
    with pytest.raises(ResourceError) as info:
        load_documents("metadata:\n  name: x\n", source="s")
    assert str(info.value) == (
        "s: document 1 (x): apiVersion: required field missing\n"
        "s: document 1 (x): kind: required field missing"
    )


@pytest.mark.parametrize(
    ("text", "got"),
    [("- a\n- b\n", "a list"), ("just a string\n", "a string"), ("42\n", "a number")],
)
def test_non_mapping_document(text: str, got: str) -> None:
    with pytest.raises(ResourceError) as info:
        load_documents(manifest("Tier", {}) + "---\n" + text, source="s")
    assert (
        str(info.value)
        == f"s: document 2: expected a mapping (apiVersion, kind, metadata, spec), got {got}"
    )


def test_yaml_syntax_error_has_line_and_no_traceback() -> None:
    text = (
        manifest("Tier", {})
        + "---\napiVersion: projectcalico.org/v3\nkind: Tier\nmetadata: {name: [x\n"
    )
    with pytest.raises(ResourceError) as info:
        load_documents(text, source="bad.yaml")
    msg = str(info.value)
    assert msg.startswith("bad.yaml: document 2: YAML syntax error at line ")
    line = int(msg.split("line ")[1].split(",")[0])
    assert line in (9, 10)  # the flow sequence opened on line 9 is never closed
    assert "Traceback" not in msg and "\n" not in msg
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_yaml_tab_indent_reports_line() -> None:
    with pytest.raises(ResourceError) as info:
        load_documents("apiVersion: v\nkind: Tier\nmetadata:\n\tname: x\n", source="t")
    assert "YAML syntax error at line 4" in str(info.value)


def test_duplicate_keys_are_rejected() -> None:
    text = manifest("IPPool", pool("10.0.0.0/16")) + "spec:\n  cidr: 10.1.0.0/16\n"
    with pytest.raises(ResourceError) as info:
        load_documents(text, source="dup.yaml")
    assert "duplicate key 'spec'" in str(info.value)
    assert str(info.value) == (
        "dup.yaml: document 1: YAML error at line 7, column 1: found duplicate key 'spec'"
    )


def test_snake_case_is_an_unknown_field_in_yaml_but_works_in_python() -> None:
    err = reject("BGPPeer", {"peer_ip": "198.18.1.1"})
    assert paths(err) == ["spec.peer_ip"]
    assert "did you mean peerIP?" in str(err)
    assert BGPPeerSpec(peer_ip="198.18.1.1").peer_ip == "198.18.1.1"


def test_no_coercion_of_scalars() -> None:
    assert paths(reject("IPPool", pool("10.0.0.0/16", natOutgoing="true"))) == ["spec.natOutgoing"]
    assert paths(reject("IPPool", pool("10.0.0.0/16", blockSize=26.0))) == ["spec.blockSize"]
    assert paths(reject("IPPool", pool(["10.0.0.0/16"]))) == ["spec.cidr"]


def test_type_errors_are_worded_in_yaml_terms() -> None:
    text = (
        "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: p}\n"
        "spec: {cidr: [1], natOutgoing: 'yes', blockSize: '26', ipipMode: true, allowedUses: {}}\n"
    )
    with pytest.raises(ResourceError) as info:
        load_documents(text, source="x")
    assert sorted(str(info.value).splitlines()) == [
        "x: document 1 (IPPool p): spec.allowedUses: must be a list, got a mapping",
        "x: document 1 (IPPool p): spec.blockSize: must be an integer, got '26'",
        "x: document 1 (IPPool p): spec.cidr: must be a string, got a list",
        "x: document 1 (IPPool p): spec.ipipMode: must be 'Never', 'Always' or 'CrossSubnet', got true",
        "x: document 1 (IPPool p): spec.natOutgoing: must be true or false, got 'yes'",
    ]
    with pytest.raises(ResourceError) as info:
        load_documents(text.replace("spec: {", "spec: null\n#{"), source="x")
    assert str(info.value) == "x: document 1 (IPPool p): spec: must be a mapping, got null"


def test_list_kinds_from_get_output_load_as_items() -> None:
    items = [yaml.safe_load(manifest("Tier", {"order": i}, name=f"t{i}")) for i in (1, 2)]
    text = yaml.safe_dump({"apiVersion": CALICO_API, "kind": "TierList", "items": items})
    assert [r.name for r in load_documents(text)] == ["t1", "t2"]
    items[1]["spec"]["order"] = "high"
    with pytest.raises(ResourceError) as info:
        load_documents(
            yaml.safe_dump({"apiVersion": CALICO_API, "kind": "TierList", "items": items})
        )
    assert paths(info.value) == ["items[1].spec.order"]
    assert "(Tier t2)" in str(info.value)


def test_from_dict_to_dict_to_yaml() -> None:
    doc = yaml.safe_load(manifest("IPPool", pool("10.244.0.0/16", vxlanMode="Always"), name="p"))
    res = from_dict(doc)
    assert to_dict(res) == doc
    assert list(to_dict(res)) == ["apiVersion", "kind", "metadata", "spec"]
    assert yaml.safe_load(to_yaml(res)) == doc
    assert [yaml.safe_load(d) for d in to_yaml([res, res]).split("---\n")] == [doc, doc]
    with pytest.raises(ResourceError) as info:
        from_dict({**doc, "spec": {"cidr": "10.244.0.0/16", "blockSize": 40}}, source="etcd")
    assert str(info.value).startswith("etcd: IPPool p: spec.blockSize: ")


def test_kind_table_is_complete_and_consistent() -> None:
    expected = {
        "BGPConfiguration",
        "BGPPeer",
        "BGPFilter",
        "Node",
        "IPPool",
        "IPAMConfiguration",
        "IPReservation",
        "WorkloadEndpoint",
        "HostEndpoint",
        "NetworkPolicy",
        "GlobalNetworkPolicy",
        "Profile",
        "NetworkSet",
        "GlobalNetworkSet",
        "Tier",
    }
    assert {k for a, k in KINDS if a == CALICO_API} == expected
    assert (K8S_NETWORKING_API, "NetworkPolicy") in KINDS
    for (api, kind), cls in KINDS.items():
        assert (api, kind) == (cls.API_VERSION, cls.KIND)
