"""The real `routemesh-cni` executable in namespaces, driven the way a runtime drives it: env +
stdin, results on stdout, chained with Debian's real `bandwidth` and `portmap` plugins.

A lab namespace is the host (the plugin runs inside it with `ip netns exec`), others are the
pods; the datastore is one SQLite file shared by every plugin process, as on a real node.
"""

from __future__ import annotations

import asyncio
import copy
import ipaddress
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from agent import cni
from agent.endpoint import HOST_MAC, veth_name
from agent.endpoints import wep_key
from bgpd.datastore.resources import ResourceStore
from bgpd.datastore.sqlite import SqliteDatastore
from bgpd.datastore.url import open_datastore
from bgpd.model import from_dict, to_dict
from tests.lab import Lab, Netns, missing, require_binary

pytestmark = pytest.mark.root

CNI_DIR = Path("/usr/lib/cni")
NODE = "node1"


def plugin_binary() -> str:
    path = Path(sys.executable).parent / "routemesh-cni"
    if not os.access(path, os.X_OK):
        missing(f"{path} not installed (pip install -e .)")
    return str(path)


def cni_plugin(name: str) -> str:
    path = CNI_DIR / name
    if not os.access(path, os.X_OK):
        missing(f"{path} not found (apt install containernetworking-plugins)")
    return str(path)


async def put_pool(db: Path, name: str, cidr: str, **spec: Any) -> None:
    store = SqliteDatastore(db)
    try:
        pool = from_dict(
            {
                "apiVersion": "projectcalico.org/v3",
                "kind": "IPPool",
                "metadata": {"name": name},
                "spec": {"cidr": cidr, "blockSize": 26 if ":" not in cidr else 122, **spec},
            }
        )
        await store.put(
            f"/routemesh/v1/resources/IPPool/{name}", json.dumps(to_dict(pool)).encode()
        )
    finally:
        await store.close()


async def store_keys(db: Path, prefix: str) -> list[str]:
    store = SqliteDatastore(db)
    try:
        kvs, _ = await store.list(prefix)
        return [kv.key for kv in kvs]
    finally:
        await store.close()


def make_host(lab: Lab) -> Netns:
    host = lab.netns()
    host.ip("link", "add", "uplink0", "type", "veth", "peer", "name", "uplink1")
    host.link_up("uplink1")
    host.link_up("uplink0")
    host.add_address("uplink0", "198.18.0.1/24")
    host.ip("route", "add", "default", "via", "198.18.0.254", "dev", "uplink0", "onlink")
    return host


class Runtime:
    """Just enough of a container runtime to run a conflist per the CNI spec."""

    def __init__(self, host: Netns, conflist: dict[str, Any]) -> None:
        self.host = host
        self.conflist = conflist
        self.binaries = {
            "routemesh-cni": plugin_binary(),
            "bandwidth": cni_plugin("bandwidth"),
            "portmap": cni_plugin("portmap"),
        }

    def invoke(
        self,
        plugin: str,
        command: str,
        conf: dict[str, Any] | None,
        *,
        container: str = "ctr1",
        netns: Netns | str | None = None,
        args: str = "",
        ifname: str = "eth0",
    ) -> tuple[int, Any]:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": container,
            "CNI_IFNAME": ifname,
            "CNI_PATH": str(CNI_DIR),
            "CNI_ARGS": args,
        }
        if netns is not None:
            env["CNI_NETNS"] = netns if isinstance(netns, str) else f"/var/run/netns/{netns.name}"
        res = self.host.run(
            [self.binaries[plugin]],
            input=json.dumps(conf) if conf is not None else "",
            env=env,
            check=False,
            timeout=60,
        )
        out = json.loads(res.stdout) if res.stdout.strip() else None
        assert res.returncode in (0, 1), f"{plugin} {command}: rc={res.returncode} {res.stderr}"
        if res.returncode == 1:
            assert isinstance(out, dict) and "code" in out, f"no error JSON: {res.stdout!r}"
        return res.returncode, out

    def plugin_conf(self, index: int, prev: Any, runtime_config: dict[str, Any]) -> dict:
        plugin = copy.deepcopy(self.conflist["plugins"][index])
        plugin["name"] = self.conflist["name"]
        plugin["cniVersion"] = self.conflist["cniVersion"]
        caps = plugin.pop("capabilities", {})
        rc = {k: v for k, v in runtime_config.items() if caps.get(k)}
        if rc:
            plugin["runtimeConfig"] = rc
        if prev is not None:
            plugin["prevResult"] = prev
        return plugin

    def chain(
        self,
        command: str,
        netns: Netns | str | None,
        runtime_config: dict,
        prev: Any = None,
        skip: tuple[str, ...] = (),
        **kw: Any,
    ) -> tuple[int, Any]:
        """ADD: each plugin in order, feeding the result forward. CHECK/DEL: with the cached
        ADD result as prevResult; DEL runs in reverse order."""
        order = range(len(self.conflist["plugins"]))
        if command == "DEL":
            order = reversed(order)
        result = prev
        for i in order:
            conf = self.plugin_conf(i, result if command == "ADD" else prev, runtime_config)
            if conf["type"] in skip:
                continue
            rc, out = self.invoke(conf["type"], command, conf, netns=netns, **kw)
            if rc != 0:
                return rc, out
            if command == "ADD":
                result = out
        return 0, result


def conflist(db: Path, **extra: Any) -> dict[str, Any]:
    return {
        "cniVersion": "1.0.0",
        "name": "k8s-pod-network",
        "plugins": [
            {
                "type": "routemesh-cni",
                "datastore": f"sqlite://{db}",
                "nodename": NODE,
                "mtu": 1440,
                "ipam": {"type": "routemesh-cni"},
                **extra,
            },
            {"type": "bandwidth", "capabilities": {"bandwidth": True}},
            {"type": "portmap", "snat": True, "capabilities": {"portMappings": True}},
        ],
    }


def single(db: Path, **extra: Any) -> dict[str, Any]:
    conf = conflist(db, **extra)
    return {"cniVersion": "1.0.0", "name": conf["name"], **conf["plugins"][0]}


async def test_spec_conformance_add_check_del_twice_version(lab: Lab) -> None:
    host, pod = make_host(lab), lab.netns(forwarding=False)
    db = lab.tmpdir("store") / "store.db"
    await put_pool(db, "default-ipv4-ippool", "10.244.0.0/16")
    rt = Runtime(host, conflist(db))
    conf = single(db)
    args = "K8S_POD_NAMESPACE=web;K8S_POD_NAME=nginx-1"

    rc, version = rt.invoke("routemesh-cni", "VERSION", {"cniVersion": "1.0.0"})
    assert rc == 0 and "1.0.0" in version["supportedVersions"]

    rc, result = rt.invoke("routemesh-cni", "ADD", conf, netns=pod, args=args)
    assert rc == 0, result
    assert result["cniVersion"] == "1.0.0"
    host_if = veth_name("web.nginx-1")
    assert result["interfaces"][0] == {"name": host_if, "mac": HOST_MAC}
    sandbox = result["interfaces"][1]
    assert sandbox["name"] == "eth0" and sandbox["sandbox"] == f"/var/run/netns/{pod.name}"
    [ip] = result["ips"]
    assert ip["interface"] == 1 and ipaddress.ip_interface(ip["address"]).network.prefixlen == 32
    address = ip["address"].split("/")[0]
    assert ipaddress.ip_address(address) in ipaddress.ip_network("10.244.0.0/16")
    assert result["routes"] == [{"dst": "0.0.0.0/0"}] and "dns" in result
    pod_link = json.loads(pod.ip("-j", "link", "show", "eth0").stdout)[0]
    assert pod_link["address"] == sandbox["mac"] and pod_link["mtu"] == 1440
    assert pod.ping("198.18.0.1") and host.ping(address)
    weps = await store_keys(db, "/routemesh/v1/resources/WorkloadEndpoint/")
    assert weps == [wep_key("web", "node1-k8s-nginx--1-eth0")]

    rc, out = rt.invoke(
        "routemesh-cni", "CHECK", {**conf, "prevResult": result}, netns=pod, args=args
    )
    assert (rc, out) == (0, None)
    # Drift makes CHECK fail with the spec's error JSON.
    host.ip("route", "del", f"{address}/32", "dev", host_if)
    rc, out = rt.invoke(
        "routemesh-cni", "CHECK", {**conf, "prevResult": result}, netns=pod, args=args
    )
    assert rc == 1 and out["code"] == 100 and f"host route {address}/32" in out["details"]

    for _ in range(2):
        rc, out = rt.invoke(
            "routemesh-cni", "DEL", {**conf, "prevResult": result}, netns=pod, args=args
        )
        assert (rc, out) == (0, None)
    assert host_if not in host.ip("link").stdout
    assert await store_keys(db, "/routemesh/v1/resources/WorkloadEndpoint/") == []
    assert await store_keys(db, "/routemesh/v1/ipam/handles/") == []

    # The address is free again: another pod may ask for exactly it.
    rc, again = rt.invoke(
        "routemesh-cni", "ADD", conf, netns=pod, container="ctr2", args=f"IP={address}"
    )
    assert rc == 0 and again["ips"][0]["address"] == ip["address"]


async def test_broken_requests_get_error_json(lab: Lab) -> None:
    host, pod = make_host(lab), lab.netns(forwarding=False)
    db = lab.tmpdir("store") / "store.db"
    await put_pool(db, "p", "10.244.0.0/16")
    rt = Runtime(host, conflist(db))
    conf = single(db)
    cases = [
        ("bad json", "ADD", b"{nope", pod, 6),
        ("old version", "ADD", {**conf, "cniVersion": "0.2.0"}, pod, 1),
        ("foreign ipam", "ADD", {**conf, "ipam": {"type": "host-local"}}, pod, 2),
        ("bad mtu", "ADD", {**conf, "mtu": 20}, pod, 7),
        ("netns gone", "ADD", conf, "/var/run/netns/rm-no-such", 3),
        ("no prevResult", "CHECK", conf, pod, 7),
    ]
    for what, command, body, netns, code in cases:
        env_netns = netns
        if isinstance(body, bytes):
            res = host.run(
                [plugin_binary()],
                input=body.decode(),
                env={
                    "CNI_COMMAND": command,
                    "CNI_CONTAINERID": "c",
                    "CNI_IFNAME": "eth0",
                    "CNI_NETNS": f"/var/run/netns/{pod.name}",
                    "CNI_PATH": str(CNI_DIR),
                },
                check=False,
            )
            rc, out = res.returncode, json.loads(res.stdout)
        else:
            rc, out = rt.invoke("routemesh-cni", command, body, netns=env_netns)
        assert rc == 1, what
        assert out["code"] == code, f"{what}: {out}"
        assert out["msg"] and "cniVersion" in out, what
    # A failed ADD leaves nothing behind: no veth, no allocation.
    assert "cali" not in host.ip("link").stdout
    assert await store_keys(db, "/routemesh/v1/ipam/handles/") == []
    # Missing env: CNI_CONTAINERID is required for ADD.
    res = host.run(
        [plugin_binary()],
        input=json.dumps(conf),
        env={"CNI_COMMAND": "ADD", "CNI_IFNAME": "eth0", "CNI_NETNS": "/x"},
        check=False,
    )
    assert res.returncode == 1 and json.loads(res.stdout)["code"] == 4
    assert "CNI_CONTAINERID" in json.loads(res.stdout)["msg"]


async def test_del_is_idempotent_when_the_netns_is_gone(lab: Lab) -> None:
    host, pod = make_host(lab), lab.netns(forwarding=False)
    db = lab.tmpdir("store") / "store.db"
    await put_pool(db, "p", "10.244.0.0/16")
    rt = Runtime(host, conflist(db))
    conf = single(db)
    rc, result = rt.invoke("routemesh-cni", "ADD", conf, netns=pod)
    assert rc == 0
    host.run(["ip", "netns", "del", pod.name])
    for netns in (f"/var/run/netns/{pod.name}", None):  # the runtime may omit CNI_NETNS on DEL
        rc, out = rt.invoke("routemesh-cni", "DEL", {**conf, "prevResult": result}, netns=netns)
        assert (rc, out) == (0, None)
    assert await store_keys(db, "/routemesh/v1/ipam/handles/") == []
    assert "cali" not in host.ip("link").stdout


async def test_fixed_address_and_pool_annotations(lab: Lab) -> None:
    host = make_host(lab)
    db = lab.tmpdir("store") / "store.db"
    await put_pool(db, "pool-a", "10.244.0.0/16")
    await put_pool(db, "pool-b", "100.64.0.0/16")
    rt = Runtime(host, conflist(db))
    conf = single(db)

    fixed = lab.netns(forwarding=False)
    args = 'cni.projectcalico.org/ipAddrs=["10.244.7.7"]'
    rc, result = rt.invoke("routemesh-cni", "ADD", conf, netns=fixed, args=args, container="f")
    assert rc == 0, result
    assert result["ips"][0]["address"] == "10.244.7.7/32"
    assert fixed.ping("198.18.0.1")

    # The same address for another pod is refused, and nothing is left of the attempt.
    clash = lab.netns(forwarding=False)
    rc, out = rt.invoke("routemesh-cni", "ADD", conf, netns=clash, args=args, container="g")
    assert rc == 1 and out["code"] == 101 and "in use" in out["details"]
    assert "eth0" not in clash.ip("link").stdout

    pooled = lab.netns(forwarding=False)
    rc, result = rt.invoke(
        "routemesh-cni", "ADD", conf, netns=pooled, container="h",
        args='cni.projectcalico.org/ipv4pools=["pool-b"]',
    )  # fmt: skip
    assert rc == 0, result
    assert ipaddress.ip_interface(result["ips"][0]["address"]).ip in ipaddress.ip_network(
        "100.64.0.0/16"
    )
    # The same through args in the network config, by CIDR.
    via_args = lab.netns(forwarding=False)
    conf_args = {
        **conf,
        "args": {"annotations": {"cni.projectcalico.org/ipv4pools": '["100.64.0.0/16"]'}},
    }
    rc, result = rt.invoke("routemesh-cni", "ADD", conf_args, netns=via_args, container="i")
    assert rc == 0 and result["ips"][0]["address"].startswith("100.64.")


async def test_chained_with_bandwidth_and_portmap(lab: Lab) -> None:
    require_binary("tc")
    require_binary("iptables-save")
    host, pod = make_host(lab), lab.netns(forwarding=False)
    db = lab.tmpdir("store") / "store.db"
    await put_pool(db, "p", "10.244.0.0/16")
    # Dual stack: Debian's portmap CHECK also looks for IPv6 chains, which it only creates
    # for a pod with an IPv6 address (containernetworking/plugins#819).
    await put_pool(db, "p6", "fd00:244::/64")
    rt = Runtime(host, conflist(db, ipam={"type": "routemesh-cni", "assign_ipv6": "true"}))
    runtime_config = {
        "bandwidth": {"ingressRate": 8_000_000, "ingressBurst": 400_000},
        "portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}],
    }
    args = "K8S_POD_NAMESPACE=default;K8S_POD_NAME=limited"
    rc, result = rt.chain("ADD", pod, runtime_config, args=args)
    assert rc == 0, result
    host_if = veth_name("default.limited")
    assert result["interfaces"][0]["name"] == host_if
    assert [ipaddress.ip_interface(i["address"]).version for i in result["ips"]] == [4, 6]
    assert result["routes"] == [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]
    v6 = ipaddress.ip_interface(result["ips"][1]["address"]).ip
    assert pod.ping("198.18.0.1") and host.ping(str(v6))
    qdiscs = json.loads(host.run(["tc", "-j", "qdisc", "show", "dev", host_if]).stdout)
    assert any(q["kind"] == "tbf" for q in qdiscs), qdiscs
    rules = host.run(["iptables-save", "-t", "nat"]).stdout
    assert "CNI-HOSTPORT-DNAT" in rules and "8080" in rules

    # Debian's portmap CHECK looks for its IPv4 rules in the IPv6 table and always fails
    # (containernetworking/plugins#819), so CHECK runs ours and bandwidth only.
    rc, out = rt.chain("CHECK", pod, runtime_config, prev=result, args=args, skip=("portmap",))
    assert rc == 0, out

    for _ in range(2):
        rc, out = rt.chain("DEL", pod, runtime_config, prev=result, args=args)
        assert rc == 0, out
    assert host_if not in host.ip("link").stdout
    assert "8080" not in host.run(["iptables-save", "-t", "nat"]).stdout
    assert await store_keys(db, "/routemesh/v1/ipam/handles/") == []


async def test_parallel_adds_get_distinct_addresses(lab: Lab) -> None:
    host = make_host(lab)
    db = lab.tmpdir("store") / "store.db"
    await put_pool(db, "p", "10.244.0.0/16")
    rt = Runtime(host, conflist(db))
    conf = single(db)
    pods = [lab.netns(forwarding=False) for _ in range(4)]

    async def add(i: int, pod: Netns) -> tuple[int, Any]:
        return await asyncio.to_thread(
            rt.invoke, "routemesh-cni", "ADD", conf, netns=pod, container=f"par{i}"
        )

    results = await asyncio.gather(*(add(i, p) for i, p in enumerate(pods)))
    assert all(rc == 0 for rc, _ in results), results
    addresses = [out["ips"][0]["address"] for _, out in results]
    assert len(set(addresses)) == len(addresses)
    for pod, address in zip(pods, addresses, strict=True):
        for other in addresses:
            if other != address:
                assert pod.ping(other.split("/")[0]), f"{address} cannot reach {other}"


async def test_repeated_add_and_late_del_of_an_old_sandbox(lab: Lab) -> None:
    host = make_host(lab)
    db = lab.tmpdir("store") / "store.db"
    await put_pool(db, "p", "10.244.0.0/16")
    rt = Runtime(host, conflist(db))
    conf = single(db)
    args = "K8S_POD_NAMESPACE=default;K8S_POD_NAME=web"

    # A runtime retries ADD for the same container: same address, nothing new allocated.
    old = lab.netns(forwarding=False)
    rc, first = rt.invoke("routemesh-cni", "ADD", conf, netns=old, container="old", args=args)
    assert rc == 0, first
    rc, again = rt.invoke("routemesh-cni", "ADD", conf, netns=old, container="old", args=args)
    assert rc == 0 and again["ips"] == first["ips"]
    assert again["interfaces"][1]["mac"] == first["interfaces"][1]["mac"]

    # The pod gets a new sandbox before the old one's DEL arrives (kubelet may do that).
    new = lab.netns(forwarding=False)
    rc, second = rt.invoke("routemesh-cni", "ADD", conf, netns=new, container="new", args=args)
    assert rc == 0, second
    address = second["ips"][0]["address"].split("/")[0]
    rc, out = rt.invoke(
        "routemesh-cni", "DEL", {**conf, "prevResult": first}, netns=old, container="old",
        args=args,
    )  # fmt: skip
    assert (rc, out) == (0, None)
    # The late DEL released only the old sandbox's address; the new pod is untouched.
    assert new.ping("198.18.0.1") and host.ping(address)
    assert await store_keys(db, "/routemesh/v1/ipam/handles/") == [
        "/routemesh/v1/ipam/handles/k8s-pod-network.new"
    ]
    store = SqliteDatastore(db)
    try:
        kv = await store.get(wep_key("default", "node1-k8s-web-eth0"))
        assert kv is not None and json.loads(kv.value)["spec"]["containerID"] == "new"
    finally:
        await store.close()


async def test_add_del_on_etcd(lab: Lab, etcd_server: Any) -> None:
    """The plugin on the etcd backend (a real etcd). It runs in-process here because etcd
    listens on the root namespace's loopback; the host side still lives in a lab namespace."""
    host = make_host(lab)
    setup = open_datastore(etcd_server.url)
    try:
        pool = from_dict({"apiVersion": "projectcalico.org/v3", "kind": "IPPool",
                          "metadata": {"name": "p"}, "spec": {"cidr": "100.64.0.0/16"}})  # fmt: skip
        await ResourceStore(setup).apply(pool)
    finally:
        await setup.close()
    conf = {**single(lab.tmp / "unused.db"), "datastore": etcd_server.url}
    pods = [lab.netns(forwarding=False) for _ in range(2)]
    results = []
    for i, pod in enumerate(pods):
        env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": f"etcd{i}", "CNI_IFNAME": "eth0",
               "CNI_NETNS": f"/var/run/netns/{pod.name}"}  # fmt: skip
        rc, out = await cni.run(env, json.dumps(conf).encode(), host_netns=host.name)
        assert rc == 0, out
        results.append(out)
    a, b = (r["ips"][0]["address"].split("/")[0] for r in results)
    assert a != b and a.startswith("100.64.") and b.startswith("100.64.")
    assert pods[0].ping(b) and pods[1].ping(a)

    check = open_datastore(etcd_server.url)
    try:
        kvs, _ = await check.list("/routemesh/v1/resources/WorkloadEndpoint/")
        assert len(kvs) == 2
        for i, pod in enumerate(pods):
            env = {"CNI_COMMAND": "DEL", "CNI_CONTAINERID": f"etcd{i}", "CNI_IFNAME": "eth0",
                   "CNI_NETNS": f"/var/run/netns/{pod.name}"}  # fmt: skip
            for _ in range(2):
                rc, out = await cni.run(env, json.dumps(conf).encode(), host_netns=host.name)
                assert (rc, out) == (0, None)
        assert (await check.list("/routemesh/v1/resources/WorkloadEndpoint/"))[0] == []
        assert (await check.list("/routemesh/v1/ipam/handles/"))[0] == []
    finally:
        await check.close()
    assert "cali" not in host.ip("link").stdout
