"""CNI plugin request handling without the kernel: env and config validation, the error JSON
with the spec's codes, where annotations are read from, and the result in each cniVersion."""

from __future__ import annotations

import ipaddress
import json
from typing import Any

import pytest

from agent import cni
from agent.endpoint import Plumbed
from bgpd.datastore.memory import MemoryDatastore

CONF: dict[str, Any] = {
    "cniVersion": "1.0.0",
    "name": "k8s-pod-network",
    "type": "routemesh-cni",
    "datastore": "sqlite:///tmp/x.db",
    "nodename": "node1",
    "mtu": 1440,
    "ipam": {"type": "routemesh-cni"},
}
ENV = {
    "CNI_COMMAND": "ADD",
    "CNI_CONTAINERID": "c1",
    "CNI_NETNS": "/var/run/netns/x",
    "CNI_IFNAME": "eth0",
}


def conf(**changes: Any) -> bytes:
    return json.dumps({**CONF, **changes}).encode()


async def error_of(env: dict[str, str], body: bytes) -> dict[str, Any]:
    code, out = await cni.run(env, body)
    assert code == 1 and out is not None
    assert set(out) <= {"cniVersion", "code", "msg", "details"} and out["msg"]
    return out


async def test_version_lists_what_we_speak() -> None:
    code, out = await cni.run({"CNI_COMMAND": "VERSION"}, b"")
    assert code == 0
    assert out == {"cniVersion": "1.0.0", "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0"]}


@pytest.mark.parametrize(
    ("env_change", "code", "needle"),
    [
        ({"CNI_COMMAND": ""}, 4, "CNI_COMMAND"),
        ({"CNI_COMMAND": "STATUS"}, 4, "STATUS"),
        ({"CNI_CONTAINERID": ""}, 4, "CNI_CONTAINERID"),
        ({"CNI_NETNS": ""}, 4, "CNI_NETNS"),
        ({"CNI_IFNAME": "a/b"}, 4, "CNI_IFNAME"),
        ({"CNI_ARGS": "K8S_POD_NAME"}, 4, "KEY=VALUE"),
    ],
)
async def test_bad_env_is_code_4(env_change: dict[str, str], code: int, needle: str) -> None:
    out = await error_of({**ENV, **env_change}, conf())
    assert out["code"] == code and needle in out["msg"]


@pytest.mark.parametrize(
    ("body", "code", "needle"),
    [
        (b"", 6, "not JSON"),
        (b"[1]", 6, "object"),
        (conf(cniVersion="0.2.0"), 1, "0.2.0"),
        (conf(cniVersion=None), 7, "cniVersion"),
        (conf(name=""), 7, "name"),
        (conf(type="calico"), 7, "type"),
        (conf(mtu=10), 7, "mtu"),
        (conf(mtu="1500"), 7, "mtu"),
        (conf(route_protocol=300), 7, "route_protocol"),
        (conf(datastore=""), 7, "datastore"),
        (conf(ipam={"type": "host-local"}), 2, "host-local"),
        (conf(ipam={"type": "routemesh-cni", "assign_ipv4": "maybe"}), 7, "assign_ipv4"),
        (conf(datastore="ftp://x"), 7, "datastore"),
    ],
)
async def test_bad_config_names_the_field(body: bytes, code: int, needle: str) -> None:
    out = await error_of(ENV, body)
    assert out["code"] == code, out
    assert needle in out["msg"] + out.get("details", "")


async def test_errors_carry_the_configs_version() -> None:
    out = await error_of(ENV, conf(cniVersion="0.4.0", mtu=5))
    assert out["cniVersion"] == "0.4.0"


def test_annotations_from_every_source_later_wins() -> None:
    inv = cni.parse_env({**ENV, "CNI_ARGS": 'cni.projectcalico.org/ipv4pools=["a"];IP=10.244.0.9'})
    parsed = cni.parse_config(conf())
    notes = cni.annotations(inv, parsed)
    assert notes[cni.ANNOTATION_IPADDRS] == ["10.244.0.9"]
    assert notes[cni.ANNOTATION_IPV4POOLS] == ["a"]

    with_args = cni.parse_config(
        conf(
            args={"annotations": {cni.ANNOTATION_IPV4POOLS: '["b"]'}},
            runtimeConfig={"ips": ["10.244.0.10/32"]},
        )
    )
    notes = cni.annotations(inv, with_args)
    assert notes[cni.ANNOTATION_IPV4POOLS] == ["b"]
    assert notes[cni.ANNOTATION_IPADDRS] == ["10.244.0.10/32"]

    bad = cni.parse_config(conf(args={"annotations": {cni.ANNOTATION_IPADDRS: "10.1.1.1"}}))
    with pytest.raises(cni.CniError, match="ipAddrs") as exc:
        cni.annotations(inv, bad)
    assert exc.value.code == 7


def test_request_identity_and_handle() -> None:
    k8s = cni.parse_env({**ENV, "CNI_ARGS": "K8S_POD_NAMESPACE=web;K8S_POD_NAME=nginx"})
    req = cni.request(k8s, cni.parse_config(conf()))
    assert (req.namespace, req.name, req.orchestrator) == ("web", "nginx", "k8s")
    assert req.handle == "k8s-pod-network.c1" and req.mtu == 1440
    plain = cni.request(cni.parse_env(ENV), cni.parse_config(conf()))
    assert (plain.namespace, plain.name, plain.orchestrator) == ("default", "c1", "cni")
    labelled = cni.parse_config(conf(args={"cni": {"labels": [{"key": "app", "value": "db"}]}}))
    assert cni.request(k8s, labelled).labels == {"app": "db"}


@pytest.mark.parametrize("version", ["0.3.1", "0.4.0", "1.0.0"])
def test_result_shape_per_version(version: str) -> None:
    parsed = cni.parse_config(conf(cniVersion=version))
    plumbed = Plumbed(
        host_ifname="cali0123456789a",
        host_mac="ee:ee:ee:ee:ee:ee",
        ifname="eth0",
        mac="02:42:ac:11:00:02",
        netns="/var/run/netns/x",
        addresses=(ipaddress.ip_address("10.244.0.5"), ipaddress.ip_address("fd00::5")),
        mtu=1440,
    )
    out = cni.result_json(parsed, plumbed)
    assert out["cniVersion"] == version
    assert out["interfaces"][1] == {
        "name": "eth0",
        "mac": "02:42:ac:11:00:02",
        "sandbox": "/var/run/netns/x",
    }
    assert [ip["address"] for ip in out["ips"]] == ["10.244.0.5/32", "fd00::5/128"]
    assert all(ip["interface"] == 1 for ip in out["ips"])
    assert ("version" in out["ips"][0]) == (version != "1.0.0")
    assert out["routes"] == [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]


def test_mtu_zero_reads_the_agents_file(tmp_path: Any) -> None:
    path = tmp_path / "mtu"
    path.write_text("1410\n")
    assert cni.parse_config(conf(mtu=0, mtu_file=str(path))).mtu == 1410
    path.write_text("garbage")
    assert cni.parse_config(conf(mtu=0, mtu_file=str(path))).mtu == 1500


class _ExplodingStore(MemoryDatastore):
    """A store whose reads fail in a way nobody planned for."""

    async def get(self, key: str) -> Any:
        raise RuntimeError("disk on fire")


async def test_unexpected_failures_still_answer_with_error_json() -> None:
    env = {**ENV, "CNI_COMMAND": "DEL"}
    code, out = await cni.run(env, conf(cniVersion="0.4.0"), store=_ExplodingStore())
    assert code == 1 and out is not None
    assert out["code"] == 199 and out["cniVersion"] == "0.4.0"
    assert "RuntimeError: disk on fire" in out["details"]
