"""Tunnels against the real kernel: vxlan.calico between two host namespaces on a bridge, FDB
and neighbour reconcile, recreation on a VNI change, MTU detection, and the IPIP fallback."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import os
import sys
from pathlib import Path

import pytest

from agent.endpoint import EndpointDataplane, EndpointSpec
from agent.mtu import detect_host_mtu, publish_workload_mtu, read_mtu_file, workload_mtu
from agent.tunnels import (
    NODE_PREFIX,
    VXLAN_NAME,
    IPAddress,
    Tunnels,
    Vtep,
    VxlanConfig,
    resync_vteps,
    run_vtep_resync,
    tunnel_mtu,
    vtep_address,
    vtep_mac,
)
from bgpd.datastore.memory import MemoryDatastore
from bgpd.datastore.resources import ResourceStore
from bgpd.datastore.sqlite import SqliteDatastore
from bgpd.model import from_dict, to_dict
from ipam import Ipam
from tests.lab import Lab, Netns, missing, require_link_kind

pytestmark = pytest.mark.root

ip = ipaddress.ip_address


def link_stats(ns: Netns, name: str) -> dict:
    return json.loads(ns.ip("-j", "-s", "link", "show", name).stdout)[0]["stats64"]


def two_hosts(lab: Lab) -> tuple[Netns, Netns, list[str]]:
    a, b = lab.netns(), lab.netns()
    _hub, names = lab.bridge([a, b], ["198.18.0.1/24", "198.18.0.2/24"])
    for ns in (a, b):
        # Proxy ARP for the workloads' 169.254.1.1 needs a route to it, as on a real node.
        ns.ip("route", "add", "default", "via", "198.18.0.254", "dev", names[0 if ns is a else 1])
    return a, b, names


def vtep(node: str, tunnel: str, underlay: str) -> Vtep:
    return Vtep(node, ip(tunnel), vtep_mac(node), ip(underlay))


async def test_vxlan_carries_workload_traffic_between_hosts(lab: Lab) -> None:
    require_link_kind("vxlan")
    a, b, uplinks = two_hosts(lab)
    host_mtu = await detect_host_mtu(netns=a.name)
    assert host_mtu == 1500
    mtu = tunnel_mtu(host_mtu, "vxlan")
    assert mtu == 1450
    nodes = {
        "node-a": (a, "198.18.0.1", "10.244.0.0", uplinks[0]),
        "node-b": (b, "198.18.0.2", "10.244.1.0", uplinks[1]),
    }
    for node, (ns, underlay, tunnel, uplink) in nodes.items():
        cond = await Tunnels(netns=ns.name).ensure_vxlan(
            VxlanConfig(
                local_ip=ip(underlay), tunnel_ip=ip(tunnel), mac=vtep_mac(node), mtu=mtu,
                parent=uplink,
            )
        )  # fmt: skip
        assert cond.status, cond
        remotes = [vtep(n, t, u) for n, (_, u, t, _) in nodes.items() if n != node]
        report = await Tunnels(netns=ns.name).reconcile_vteps(remotes)
        assert len(report.added) == 2 and not report.removed
    details = json.loads(a.ip("-j", "-d", "link", "show", VXLAN_NAME).stdout)[0]
    data = details["linkinfo"]["info_data"]
    assert (data["id"], data["port"], data["local"]) == (4096, 4789, "198.18.0.1")
    assert data.get("learning") is False and details["mtu"] == 1450

    # A workload on each host, and the route to the other host's block via its VTEP, onlink.
    wl_a, wl_b = lab.netns(forwarding=False), lab.netns(forwarding=False)
    wmtu = workload_mtu(host_mtu, ["vxlan"])
    await EndpointDataplane(host_netns=a.name).create(
        EndpointSpec("default", "wa", wl_a.name, (ip("10.244.0.5"),), mtu=wmtu)
    )
    await EndpointDataplane(host_netns=b.name).create(
        EndpointSpec("default", "wb", wl_b.name, (ip("10.244.1.5"),), mtu=wmtu)
    )
    a.ip("route", "add", "10.244.1.0/26", "via", "10.244.1.0", "dev", VXLAN_NAME, "onlink")
    b.ip("route", "add", "10.244.0.0/26", "via", "10.244.0.0", "dev", VXLAN_NAME, "onlink")

    before = link_stats(a, VXLAN_NAME)["tx"]["packets"]
    assert wl_a.ping("10.244.1.5", count=3), "workload on A cannot reach workload on B"
    assert wl_b.ping("10.244.0.5")
    assert a.ping("10.244.1.0"), "VTEP to VTEP"
    # The traffic really went through the tunnel device, not some other path.
    assert link_stats(a, VXLAN_NAME)["tx"]["packets"] >= before + 3
    assert link_stats(b, VXLAN_NAME)["rx"]["packets"] >= 3


async def test_vtep_reconcile_adds_removes_and_leaves_others(lab: Lab) -> None:
    require_link_kind("vxlan")
    a, _b, uplinks = two_hosts(lab)
    tunnels = Tunnels(netns=a.name)
    cfg = VxlanConfig(ip("198.18.0.1"), ip("10.244.0.0"), vtep_mac("node-a"), 1450, uplinks[0])
    assert (await tunnels.ensure_vxlan(cfg)).status
    b_ = vtep("node-b", "10.244.1.0", "198.18.0.2")
    c_ = vtep("node-c", "10.244.2.0", "198.18.0.3")
    d_ = vtep("node-d", "10.244.3.0", "198.18.0.4")
    await tunnels.reconcile_vteps([b_, c_])
    # Others' entries: a learned (non-permanent) neighbour on our device, and permanent
    # entries on another vxlan device that is not ours.
    a.ip("neigh", "add", "10.244.9.9", "lladdr", "02:00:00:00:09:09", "dev", VXLAN_NAME,
         "nud", "reachable")  # fmt: skip
    a.ip("link", "add", "vx-other", "type", "vxlan", "id", "7", "dstport", "4789", "local",
         "198.18.0.1")  # fmt: skip
    a.run(["bridge", "fdb", "append", "02:00:00:00:07:07", "dev", "vx-other", "dst", "198.18.0.7"])

    report = await tunnels.reconcile_vteps([b_, d_])
    assert sorted(report.removed) == [
        f"fdb {c_.mac} dst 198.18.0.3",
        f"neigh 10.244.2.0 lladdr {c_.mac}",
    ]
    assert sorted(report.added) == [
        f"fdb {d_.mac} dst 198.18.0.4",
        f"neigh 10.244.3.0 lladdr {d_.mac}",
    ]
    assert len(report.unchanged) == 2
    fdb = a.run(["bridge", "fdb", "show"]).stdout
    assert f"{b_.mac} dev {VXLAN_NAME} dst 198.18.0.2" in fdb
    assert f"{d_.mac} dev {VXLAN_NAME} dst 198.18.0.4" in fdb
    assert c_.mac not in fdb
    assert "02:00:00:00:07:07 dev vx-other dst 198.18.0.7" in fdb
    neigh = a.ip("neigh", "show", "dev", VXLAN_NAME).stdout
    assert "10.244.9.9" in neigh and "10.244.2.0" not in neigh and "10.244.3.0" in neigh

    # Someone deletes one of ours by hand: the next resync puts it back, and only it.
    a.run(["bridge", "fdb", "del", b_.mac, "dev", VXLAN_NAME, "dst", "198.18.0.2"])
    report = await tunnels.reconcile_vteps([b_, d_])
    assert report.added == [f"fdb {b_.mac} dst 198.18.0.2"] and report.removed == []


async def test_vxlan_repaired_in_place_or_recreated(lab: Lab) -> None:
    require_link_kind("vxlan")
    a, _b, uplinks = two_hosts(lab)
    tunnels = Tunnels(netns=a.name)
    cfg = VxlanConfig(ip("198.18.0.1"), ip("10.244.0.0"), vtep_mac("node-a"), 1450, uplinks[0])
    await tunnels.ensure_vxlan(cfg)
    index = json.loads(a.ip("-j", "link", "show", VXLAN_NAME).stdout)[0]["ifindex"]
    # Mutable drift is fixed in place.
    a.ip("link", "set", VXLAN_NAME, "mtu", "1300", "down")
    a.ip("addr", "add", "10.244.5.5/32", "dev", VXLAN_NAME)
    assert (await tunnels.ensure_vxlan(cfg)).status
    link = json.loads(a.ip("-j", "addr", "show", VXLAN_NAME).stdout)[0]
    assert link["ifindex"] == index and link["mtu"] == 1450 and "UP" in link["flags"]
    assert [x["local"] for x in link["addr_info"] if x["family"] == "inet"] == ["10.244.0.0"]
    # A VNI change cannot be made in place: the device is recreated.
    cfg2 = VxlanConfig(cfg.local_ip, cfg.tunnel_ip, cfg.mac, 1450, cfg.parent, vni=4097)
    assert (await tunnels.ensure_vxlan(cfg2)).status
    data = json.loads(a.ip("-j", "-d", "link", "show", VXLAN_NAME).stdout)[0]
    assert data["linkinfo"]["info_data"]["id"] == 4097 and data["ifindex"] != index
    # A missing parent is a clear condition, not an exception.
    bad = VxlanConfig(cfg.local_ip, cfg.tunnel_ip, cfg.mac, 1450, "nosuchdev0")
    cond = await tunnels.ensure_vxlan(bad)
    assert (cond.status, cond.reason) == (False, "ParentMissing")
    assert tunnels.conditions() == [cond]
    assert await tunnels.remove_vxlan() is True and await tunnels.remove_vxlan() is False


async def test_ipip_where_supported_else_one_warning_and_a_condition(
    lab: Lab, caplog: pytest.LogCaptureFixture
) -> None:
    host = lab.netns()
    probe = host.ip("link", "add", "probe0", "type", "ipip", check=False)
    supported = probe.returncode == 0
    if supported:
        host.ip("link", "del", "probe0")
    Tunnels._ipip_warned = False
    caplog.set_level(logging.WARNING, logger="agent.tunnels")
    tunnels = Tunnels(netns=host.name)
    first = await tunnels.ensure_ipip(ip("10.244.0.0"), tunnel_mtu(1500, "ipip"))
    second = await tunnels.ensure_ipip(ip("10.244.0.0"), tunnel_mtu(1500, "ipip"))
    assert first == second == tunnels.ipip_condition
    if supported:
        assert first.status and first.reason == "Configured"
        link = json.loads(host.ip("-j", "addr", "show", "tunl0").stdout)[0]
        assert link["mtu"] == 1480
        assert [a["local"] for a in link["addr_info"]] == ["10.244.0.0"]
    else:
        # This kernel has no IPIP (CONFIG_NET_IPIP unset): say so once, keep the condition.
        assert (first.status, first.type, first.reason) == (False, "IPIPReady", "KernelUnsupported")
        assert "ipipMode" in first.message
        warnings = [r for r in caplog.records if "IPIP unavailable" in r.getMessage()]
        assert len(warnings) == 1
        assert "tunl0" not in host.ip("link").stdout


async def test_vteps_follow_the_nodes_in_the_datastore(lab: Lab) -> None:
    require_link_kind("vxlan")
    a, b, _uplinks = two_hosts(lab)
    store = MemoryDatastore()

    async def put_node(name: str, underlay: str, tunnel: str) -> None:
        doc = {"apiVersion": "projectcalico.org/v3", "kind": "Node", "metadata": {"name": name},
               "spec": {"bgp": {"ipv4Address": f"{underlay}/24"}, "ipv4VXLANTunnelAddr": tunnel}}  # fmt: skip
        await store.put(NODE_PREFIX + name, json.dumps(to_dict(from_dict(doc))).encode())

    hosts = {"node-a": (a, "198.18.0.1", "10.244.0.0"), "node-b": (b, "198.18.0.2", "10.244.1.0")}
    for name, (ns, underlay, tunnel) in hosts.items():
        await put_node(name, underlay, tunnel)
        cfg = VxlanConfig(ip(underlay), ip(tunnel), vtep_mac(name), 1450)
        assert (await Tunnels(netns=ns.name).ensure_vxlan(cfg)).status
    # A third node joins in the store only; its entries appear at the next resync.
    await put_node("node-c", "198.18.0.3", "10.244.2.0")
    for name, (ns, _u, _t) in hosts.items():
        report = await resync_vteps(Tunnels(netns=ns.name), store, name)
        assert len(report.added) == 4, report
    # The block routes are the FIB's; here one per side stands in for them.
    a.ip("route", "add", "10.244.1.0/26", "via", "10.244.1.0", "dev", VXLAN_NAME, "onlink")
    b.ip("route", "add", "10.244.0.0/26", "via", "10.244.0.0", "dev", VXLAN_NAME, "onlink")
    assert a.ping("10.244.1.0") and b.ping("10.244.0.0")
    assert "10.244.2.0" in a.ip("neigh", "show", "dev", VXLAN_NAME).stdout
    # node-c leaves: only its entries go, and the tunnel between a and b keeps working.
    await store.delete(NODE_PREFIX + "node-c")
    report = await resync_vteps(Tunnels(netns=a.name), store, "node-a")
    assert len(report.removed) == 2 and all("10.244.2.0" in r or vtep_mac("node-c") in r
                                            for r in report.removed)  # fmt: skip
    assert a.ping("10.244.1.0")


async def test_vtep_resync_loop_follows_node_changes(lab: Lab) -> None:
    require_link_kind("vxlan")
    a, _b, _uplinks = two_hosts(lab)
    store = MemoryDatastore()
    tunnels = Tunnels(netns=a.name)
    cfg = VxlanConfig(ip("198.18.0.1"), ip("10.244.0.0"), vtep_mac("node-a"), 1450)
    assert (await tunnels.ensure_vxlan(cfg)).status

    async def put_node(name: str, underlay: str, tunnel: str) -> None:
        doc = {"apiVersion": "projectcalico.org/v3", "kind": "Node", "metadata": {"name": name},
               "spec": {"bgp": {"ipv4Address": f"{underlay}/24"}, "ipv4VXLANTunnelAddr": tunnel}}  # fmt: skip
        await store.put(NODE_PREFIX + name, json.dumps(to_dict(from_dict(doc))).encode())

    async def eventually(probe, what: str) -> None:
        for _ in range(100):
            if probe():
                return
            await asyncio.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}")

    def neigh() -> str:
        return a.ip("neigh", "show", "dev", VXLAN_NAME).stdout

    await put_node("node-b", "198.18.0.2", "10.244.1.0")
    stop = asyncio.Event()
    # A long interval: only the watch can make the later changes show up in time.
    task = asyncio.create_task(run_vtep_resync(tunnels, store, "node-a", interval=3600, stop=stop))
    try:
        await eventually(lambda: "10.244.1.0" in neigh(), "the start-up resync")
        await put_node("node-c", "198.18.0.3", "10.244.2.0")
        await eventually(lambda: "10.244.2.0" in neigh(), "node-c's entry after the watch event")
        await store.delete(NODE_PREFIX + "node-b")
        await eventually(lambda: "10.244.1.0" not in neigh(), "node-b's entry to go")
        assert "10.244.2.0" in neigh()
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=10)


async def test_published_mtu_follows_the_uplink_and_encapsulation(lab: Lab) -> None:
    host = lab.netns()
    host.ip("link", "add", "uplink0", "mtu", "9000", "type", "veth", "peer", "name", "uplink1")
    host.ip("link", "set", "uplink1", "mtu", "9000")
    for name in ("uplink0", "uplink1"):
        host.link_up(name)
    path = lab.tmpdir("mtu") / "mtu"
    assert await publish_workload_mtu(["vxlan"], path=path, netns=host.name) == 8950
    assert read_mtu_file(path) == 8950
    # A smaller uplink appears: the smallest wins, and IPIP-only pools lose 20 bytes.
    host.ip("link", "add", "uplink2", "mtu", "1500", "type", "veth", "peer", "name", "uplink3")
    host.link_up("uplink2")
    assert await publish_workload_mtu(["ipip"], path=path, netns=host.name) == 1480
    assert read_mtu_file(path) == 1480


async def test_pods_on_two_hosts_talk_over_vxlan(lab: Lab) -> None:
    """The agent's parts together on two hosts sharing one datastore: VTEP addresses from
    IPAM, Node records, vxlan.calico with entries from the Nodes, the published MTU, pods
    made by the real CNI plugin. The block routes stand in for what the BGP FIB installs."""
    require_link_kind("vxlan")
    plugin = Path(sys.executable).parent / "routemesh-cni"
    if not os.access(plugin, os.X_OK):
        missing(f"{plugin} not installed (pip install -e .)")
    a, b, uplinks = two_hosts(lab)
    hosts = {"node-a": (a, "198.18.0.1", uplinks[0]), "node-b": (b, "198.18.0.2", uplinks[1])}
    db = lab.tmpdir("store") / "store.db"
    store = SqliteDatastore(db)
    resources = ResourceStore(store)
    vteps: dict[str, IPAddress] = {}
    try:
        await resources.apply(from_dict({
            "apiVersion": "projectcalico.org/v3", "kind": "IPPool", "metadata": {"name": "vx"},
            "spec": {"cidr": "10.244.0.0/16", "blockSize": 26, "vxlanMode": "Always"},
        }))  # fmt: skip
        for node, (ns, underlay, uplink) in hosts.items():
            vteps[node] = await vtep_address(Ipam(store, node), node, None)
            await resources.apply(from_dict({
                "apiVersion": "projectcalico.org/v3", "kind": "Node", "metadata": {"name": node},
                "spec": {"bgp": {"ipv4Address": f"{underlay}/24"},
                         "ipv4VXLANTunnelAddr": str(vteps[node]),
                         "vxlanTunnelMACAddr": vtep_mac(node)},
            }))  # fmt: skip
            host_mtu = await detect_host_mtu(netns=ns.name)
            cfg = VxlanConfig(ip(underlay), vteps[node], vtep_mac(node),
                              tunnel_mtu(host_mtu, "vxlan"), uplink)  # fmt: skip
            assert (await Tunnels(netns=ns.name).ensure_vxlan(cfg)).status
        for node, (ns, _u, _l) in hosts.items():
            report = await resync_vteps(Tunnels(netns=ns.name), store, node)
            assert len(report.added) == 2
    finally:
        await store.close()

    pods: dict[str, tuple[Netns, str]] = {}
    for node, (ns, _u, _l) in hosts.items():
        mtu_file = lab.tmpdir(f"mtu-{node}") / "mtu"
        assert await publish_workload_mtu(["vxlan"], path=mtu_file, netns=ns.name) == 1450
        conf = {"cniVersion": "1.0.0", "name": "k8s-pod-network", "type": "routemesh-cni",
                "datastore": f"sqlite://{db}", "nodename": node, "mtu": 0,
                "mtu_file": str(mtu_file), "ipam": {"type": "routemesh-cni"}}  # fmt: skip
        pod = lab.netns(forwarding=False)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "CNI_COMMAND": "ADD",
               "CNI_CONTAINERID": f"pod-{node}", "CNI_IFNAME": "eth0",
               "CNI_NETNS": f"/var/run/netns/{pod.name}", "CNI_PATH": "/usr/lib/cni"}  # fmt: skip
        res = ns.run([str(plugin)], input=json.dumps(conf), env=env, check=False, timeout=60)
        assert res.returncode == 0, res.stdout + res.stderr
        address = json.loads(res.stdout)["ips"][0]["address"].split("/")[0]
        assert json.loads(pod.ip("-j", "link", "show", "eth0").stdout)[0]["mtu"] == 1450
        pods[node] = (pod, address)

    store = SqliteDatastore(db)
    try:
        for node, (ns, _u, _l) in hosts.items():
            other = "node-b" if node == "node-a" else "node-a"
            for block in await Ipam(store, node).host_blocks(other):
                ns.ip("route", "replace", str(block), "via", str(vteps[other]),
                      "dev", VXLAN_NAME, "onlink")  # fmt: skip
    finally:
        await store.close()

    (pod_a, addr_a), (pod_b, addr_b) = pods["node-a"], pods["node-b"]
    before = link_stats(a, VXLAN_NAME)["tx"]["packets"]
    assert pod_a.ping(addr_b, count=2), "pod on node-a cannot reach the pod on node-b"
    assert pod_b.ping(addr_a, count=2)
    assert link_stats(a, VXLAN_NAME)["tx"]["packets"] >= before + 2
    # Full-size packets fit: 1450 on the pod is what the tunnel can carry without fragments.
    big = pod_a.run(["ping", "-n", "-c", "1", "-W", "2", "-M", "do", "-s", "1422", addr_b],
                    check=False)  # fmt: skip
    assert big.returncode == 0, big.stdout + big.stderr
