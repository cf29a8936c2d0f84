"""Workload endpoint plumbing against the real kernel: a lab namespace plays the host, others
play workloads; we check the Calico layout, idempotence, drift repair and reconcile."""

from __future__ import annotations

import ipaddress
import json
from ipaddress import ip_address

import pytest

from agent.endpoint import (
    HOST_MAC,
    IPV4_GATEWAY,
    IPV6_GATEWAY,
    EndpointDataplane,
    EndpointError,
    EndpointSpec,
    veth_name,
)
from agent.endpoints import EndpointResync, WorkloadRequest, Workloads
from agent.netlink import read_sysctls
from bgpd.datastore.memory import MemoryDatastore
from bgpd.model import from_dict, to_dict
from ipam import Ipam
from tests.lab import Lab, Netns, wait_for

pytestmark = pytest.mark.root

V4 = ipaddress.ip_address("10.244.1.5")
V6 = ipaddress.ip_address("fd00:244::5")


def make_host(lab: Lab) -> Netns:
    """A host namespace with an address and a default route, as a real node has one.

    Proxy ARP answers for 169.254.1.1 only when the host has a route to it, which on a real
    node is the default route; an uplink gives the lab host the same."""
    host = lab.netns()
    # No dummy module on this kernel: a veth pair whose far end idles is the same to us.
    host.ip("link", "add", "uplink0", "type", "veth", "peer", "name", "uplink1")
    host.link_up("uplink1")
    host.link_up("uplink0")
    host.add_address("uplink0", "198.18.0.1/24")
    host.add_address("uplink0", "fd00:18::1/64")
    host.ip("route", "add", "default", "via", "198.18.0.254", "dev", "uplink0", "onlink")
    return host


def links(ns: Netns) -> dict[str, dict]:
    return {link["ifname"]: link for link in json.loads(ns.ip("-j", "-d", "link").stdout)}


def routes(ns: Netns, *extra: str) -> list[dict]:
    return json.loads(ns.ip("-j", *extra, "route").stdout)


async def test_create_builds_calico_layout_and_traffic_flows(lab: Lab) -> None:
    host, wl = make_host(lab), lab.netns(forwarding=False)
    dp = EndpointDataplane(host_netns=host.name, route_protocol=81)
    spec = EndpointSpec("default", "pod1", wl.name, (V4, V6), mtu=1440)
    plumbed = await dp.create(spec)

    host_if = veth_name("default.pod1")
    assert plumbed.host_ifname == host_if and len(host_if) <= 15
    hl = links(host)[host_if]
    assert hl["address"] == HOST_MAC and hl["mtu"] == 1440 and "UP" in hl["flags"]
    wll = links(wl)["eth0"]
    assert wll["address"] == plumbed.mac != HOST_MAC and wll["mtu"] == 1440
    sysctls = read_sysctls(
        [
            f"net/ipv4/conf/{host_if}/proxy_arp",
            f"net/ipv4/neigh/{host_if}/proxy_delay",
            f"net/ipv4/conf/{host_if}/forwarding",
            f"net/ipv6/conf/{host_if}/proxy_ndp",
            f"net/ipv6/conf/{host_if}/forwarding",
        ],
        netns=host.name,
    )
    assert list(sysctls.values()) == ["1", "0", "1", "1", "1"]

    host_routes = {(r["dst"], r.get("protocol")) for r in routes(host) + routes(host, "-6")}
    assert ("10.244.1.5", "81") in host_routes
    assert ("fd00:244::5", "81") in host_routes
    wl_v4 = routes(wl)
    assert {"dst": "default", "gateway": IPV4_GATEWAY} in [
        {"dst": r["dst"], "gateway": r.get("gateway")} for r in wl_v4
    ]
    assert any(r["dst"] == IPV4_GATEWAY and r.get("scope") == "link" for r in wl_v4)
    assert any(r["dst"] == "default" and r.get("gateway") == IPV6_GATEWAY for r in routes(wl, "-6"))
    addrs = json.loads(wl.ip("-j", "addr", "show", "eth0").stdout)[0]["addr_info"]
    assert {(a["local"], a["prefixlen"]) for a in addrs} >= {
        ("10.244.1.5", 32),
        ("fd00:244::5", 128),
    }

    assert wl.ping("198.18.0.1"), "workload cannot reach the host over IPv4 via 169.254.1.1"
    assert wl.ping("fd00:18::1"), "workload cannot reach the host over IPv6 via the link-local"
    assert host.ping("10.244.1.5") and host.ping("fd00:244::5")

    # Idempotent: a second create keeps the very same interfaces and changes nothing.
    again = await dp.create(spec)
    assert again == plumbed
    assert links(host)[host_if]["ifindex"] == hl["ifindex"]
    assert await dp.check(spec) == []


async def test_two_workloads_route_through_the_host(lab: Lab) -> None:
    host, a, b = make_host(lab), lab.netns(forwarding=False), lab.netns(forwarding=False)
    dp = EndpointDataplane(host_netns=host.name)
    await dp.create(EndpointSpec("ns", "a", a.name, (ipaddress.ip_address("10.244.1.10"),)))
    await dp.create(EndpointSpec("ns", "b", b.name, (ipaddress.ip_address("10.244.1.11"),)))
    assert a.ping("10.244.1.11") and b.ping("10.244.1.10")
    listed = {ep.host_ifname: ep.addresses for ep in await dp.list()}
    assert listed == {
        veth_name("ns.a"): (ipaddress.ip_address("10.244.1.10"),),
        veth_name("ns.b"): (ipaddress.ip_address("10.244.1.11"),),
    }


async def test_check_names_drift_and_create_repairs_it(lab: Lab) -> None:
    host, wl = make_host(lab), lab.netns(forwarding=False)
    dp = EndpointDataplane(host_netns=host.name)
    spec = EndpointSpec("default", "drift", wl.name, (V4,))
    await dp.create(spec)
    host_if = spec.host_ifname
    host.ip("route", "del", "10.244.1.5/32", "dev", host_if)
    host.ip("link", "set", host_if, "address", "02:00:00:00:00:01")
    host.sysctl(f"net.ipv4.conf.{host_if}.proxy_arp", 0)
    wl.ip("route", "del", "default")
    problems = await dp.check(spec)
    joined = "\n".join(problems)
    for needle in ("host route 10.244.1.5/32", "MAC", "proxy_arp", f"via {IPV4_GATEWAY}"):
        assert needle in joined, f"{needle!r} not reported in {problems}"
    report = await dp.reconcile([spec])
    assert report.repaired == [host_if] and not report.errors
    assert await dp.check(spec) == []
    assert wl.ping("198.18.0.1")


async def test_delete_is_idempotent_and_works_without_the_netns(lab: Lab) -> None:
    host = make_host(lab)
    dp = EndpointDataplane(host_netns=host.name)
    wl1 = lab.netns(forwarding=False)
    await dp.create(EndpointSpec("default", "p1", wl1.name, (V4,)))
    assert await dp.delete("default", "p1") is True
    assert await dp.delete("default", "p1") is False
    assert veth_name("default.p1") not in links(host)
    assert not [r for r in routes(host) if r.get("protocol") == "81"]

    # The workload's namespace disappears before DEL (a crashed sandbox): still fine.
    wl2 = lab.netns(forwarding=False)
    await dp.create(EndpointSpec("default", "p2", wl2.name, (V4,)))
    host.run(["ip", "netns", "del", wl2.name])
    # The kernel may still be tearing the pair down; DEL must neither fail nor leave it.
    await dp.delete("default", "p2")
    wait_for(lambda: veth_name("default.p2") not in links(host), timeout=10, what="veth removal")
    assert await dp.delete("default", "p2") is False


async def test_reconcile_removes_ours_and_never_touches_aliens(lab: Lab) -> None:
    host = make_host(lab)
    dp = EndpointDataplane(host_netns=host.name, route_protocol=81)
    keep_ns, drop_ns = lab.netns(forwarding=False), lab.netns(forwarding=False)
    keep = EndpointSpec("default", "keep", keep_ns.name, (ipaddress.ip_address("10.244.1.20"),))
    drop = EndpointSpec("default", "drop", drop_ns.name, (ipaddress.ip_address("10.244.1.21"),))
    await dp.create(keep)
    await dp.create(drop)
    # Aliens: a veth with another prefix, a static route, and a route of another protocol.
    host.ip("link", "add", "other0", "type", "veth", "peer", "name", "other1")
    host.link_up("other1")
    host.link_up("other0")
    host.ip("route", "add", "10.244.9.0/24", "dev", "other0")
    host.ip("route", "add", "10.244.8.0/24", "dev", "other0", "proto", "80")
    # Ours but stale: our protocol pointing at a link we do not own.
    host.ip("route", "add", "10.244.7.7/32", "dev", "other0", "proto", "81")

    report = await dp.reconcile([keep])
    assert report.removed == [drop.host_ifname]
    assert report.in_sync == [keep.host_ifname]
    assert report.stale_routes == ["10.244.7.7/32"]
    names = links(host)
    assert drop.host_ifname not in names and keep.host_ifname in names and "other0" in names
    dsts = {r["dst"] for r in routes(host)}
    assert {"10.244.9.0/24", "10.244.8.0/24", "10.244.1.20"} <= dsts
    assert "10.244.1.21" not in dsts and "10.244.7.7" not in dsts


async def test_stale_veth_is_replaced_and_foreign_eth0_refused(lab: Lab) -> None:
    host = make_host(lab)
    dp = EndpointDataplane(host_netns=host.name)
    old_ns, new_ns = lab.netns(forwarding=False), lab.netns(forwarding=False)
    await dp.create(EndpointSpec("default", "moved", old_ns.name, (V4,)))
    # The same workload restarts in a new sandbox: the old veth must go, not be reused.
    plumbed = await dp.create(EndpointSpec("default", "moved", new_ns.name, (V4,)))
    assert "eth0" not in links(old_ns) and links(new_ns)["eth0"]["address"] == plumbed.mac
    assert new_ns.ping("198.18.0.1")

    busy = lab.netns(forwarding=False)
    busy.ip("link", "add", "eth0", "type", "veth", "peer", "name", "eth1")
    with pytest.raises(EndpointError, match="already exists"):
        await dp.create(EndpointSpec("default", "busy", busy.name, (V4,)))
    with pytest.raises(EndpointError, match="does not exist"):
        await dp.create(EndpointSpec("default", "gone", "rm-no-such-ns", (V4,)))


async def test_agent_resync_repairs_recorded_and_removes_unrecorded_after_grace(
    lab: Lab,
) -> None:
    host = make_host(lab)
    store = MemoryDatastore()
    pool = {"apiVersion": "projectcalico.org/v3", "kind": "IPPool", "metadata": {"name": "p"},
            "spec": {"cidr": "10.244.0.0/16"}}  # fmt: skip
    await store.put(
        "/routemesh/v1/resources/IPPool/p", json.dumps(to_dict(from_dict(pool))).encode()
    )
    dp = EndpointDataplane(host_netns=host.name)
    workloads = Workloads("node1", dp, ipam=Ipam(store, "node1"), store=store)
    pods = {name: lab.netns(forwarding=False) for name in ("a", "b")}
    attached = {}
    for name, ns in pods.items():
        req = WorkloadRequest("default", name, ns.name, container_id=name, handle=f"net.{name}")
        attached[name] = await workloads.add(req)
    a_if, b_if = attached["a"].plumbed.host_ifname, attached["b"].plumbed.host_ifname
    a_addr = attached["a"].plumbed.addresses[0]
    # Drift on a recorded endpoint; a leaked veth nobody recorded; b's veth vanishes.
    host.ip("route", "del", f"{a_addr}/32", "dev", a_if)
    host.sysctl(f"net.ipv4.conf.{a_if}.proxy_arp", 0)
    leak_ns = lab.netns(forwarding=False)
    await dp.create(EndpointSpec("default", "leak", leak_ns.name, (ip_address("10.244.99.9"),)))
    host.ip("link", "del", b_if)

    resync = EndpointResync(workloads)
    first = await resync.run_once()
    assert first.repaired == {a_if: [f"sysctl net/ipv4/conf/{a_if}/proxy_arp", "routes"]}
    assert first.missing == [b_if]
    leak_if = veth_name("default.leak")
    assert first.pending == [leak_if] and first.removed == []
    assert pods["a"].ping("198.18.0.1")

    second = await resync.run_once()
    assert second.repaired == {} and second.removed == [leak_if] and second.pending == []
    assert leak_if not in links(host) and a_if in links(host)
    third = await resync.run_once()
    assert (third.repaired, third.removed, third.pending) == ({}, [], [])


async def test_netns_given_as_a_proc_path(lab: Lab) -> None:
    # Docker-style runtimes name the sandbox by /proc/<pid>/ns/net rather than a bind mount.
    host, wl = make_host(lab), lab.netns(forwarding=False)
    holder = wl.popen(["sleep", "600"])
    path = f"/proc/{holder.pid}/ns/net"
    dp = EndpointDataplane(host_netns=host.name)
    spec = EndpointSpec("default", "procpath", path, (V4,))
    plumbed = await dp.create(spec)
    assert links(wl)["eth0"]["address"] == plumbed.mac
    assert await dp.check(spec) == []
    assert wl.ping("198.18.0.1")
