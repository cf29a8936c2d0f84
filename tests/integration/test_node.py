"""`routemesh node run` on hosts in namespaces: mesh and reflector topologies from the
datastore, pods made by the CNI plugin reaching each other, CrossSubnet VXLAN, node churn.
"""

from __future__ import annotations

import ipaddress
import json
import tarfile

import pytest

from tests.lab.cluster import Cluster, Host, Pod
from tests.lab.etcd import EtcdServer
from tests.lab.netns import Lab
from tests.lab.require import require_binary, require_link_kind, require_root
from tests.lab.waiting import wait_for

pytestmark = pytest.mark.root

POOL = """
apiVersion: projectcalico.org/v3
kind: IPPool
metadata: {{name: pool1}}
spec: {{cidr: 10.244.0.0/16, blockSize: 26, vxlanMode: {vxlan}, natOutgoing: false}}
"""


def mesh_cluster(lab: Lab, datastore: str | None = None) -> Cluster:
    require_root()
    cluster = Cluster(lab, datastore=datastore)
    cluster.segment("br0", "198.18.0.1/24")
    for i in range(3):
        cluster.host(f"host{i + 1}", f"198.18.0.{i + 2}/24")
    return cluster


def route_of(cluster: Cluster, host: str, dst: str) -> dict | None:
    return next((r for r in cluster.routes(host) if r["dst"] == dst), None)


@pytest.mark.parametrize("kind", ["sqlite", "etcd"])
def test_three_hosts_full_mesh_pods_reach_each_other(lab: Lab, kind: str) -> None:
    cluster = mesh_cluster(lab)
    if kind == "sqlite":
        _mesh_scenario(cluster)
        return
    require_binary("etcd")
    # etcd lives on the underlay (in the router), where every host's node can reach it.
    server = EtcdServer(host="198.18.0.1", netns=cluster.router.name)
    server.start()
    try:
        cluster.datastore = server.url
        _mesh_scenario(cluster)
    finally:
        server.close()


def _mesh_scenario(cluster: Cluster) -> None:
    cluster.apply(POOL.format(vxlan="Never"))
    for name in cluster.hosts:
        cluster.start(name)
    ips = {name: h.ip for name, h in cluster.hosts.items()}
    for name in cluster.hosts:
        cluster.wait_peers(name, {ip for n, ip in ips.items() if n != name})
    pods = {name: cluster.pod(name, f"web-{name}") for name in cluster.hosts}
    for a in pods.values():
        for b in pods.values():
            if a is not b:
                cluster.wait_ping(a, b)
    # Each host: a blackhole for its own block, a route via the owner for every other block.
    blocks = {name: cluster.status(name)["blocks"] for name in cluster.hosts}
    assert all(len(b) == 1 for b in blocks.values()), blocks
    for name in cluster.hosts:
        for other, (block,) in blocks.items():
            route = route_of(cluster, name, block)
            assert route is not None, (name, block, cluster.routes(name))
            assert route["protocol"] in ("80", 80)
            if other == name:
                assert route.get("type") == "blackhole", route
            else:
                assert route["gateway"] == ips[other], route
    status = cluster.status("host1")
    assert {r["state"] for r in status["bgp"]} == {"Established"}
    assert status["fib"]["in_sync"]
    # A policy that cannot be rendered (a named port no endpoint exposes) is reported on the
    # node's status, and the pods keep talking: nothing half-applied.
    cluster.apply(GHOST_POLICY)
    wait_for(
        lambda: (
            "named port tcp/ghost"
            in cluster.status("host1")
            .get("policy_problems", {})
            .get("GlobalNetworkPolicy/ghost", "")
        ),
        timeout=30,
        what="host1 to report the unrenderable policy",
        describe=lambda: json.dumps(cluster.status("host1").get("policy_problems")),
    )
    cluster.wait_ping(pods["host1"], pods["host2"])


GHOST_POLICY = """
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: ghost}
spec:
  selector: all()
  ingress:
  - action: Deny
    protocol: TCP
    destination: {ports: [ghost]}
"""


RR = """
apiVersion: projectcalico.org/v3
kind: BGPConfiguration
metadata: {name: default}
spec: {nodeToNodeMeshEnabled: false, asNumber: 64512, logSeverityScreen: Warning}
---
apiVersion: projectcalico.org/v3
kind: Node
metadata:
  name: host1
  labels: {route-reflector: "true"}
spec:
  bgp: {ipv4Address: 198.18.0.2/24, routeReflectorClusterID: 244.0.0.1}
---
apiVersion: projectcalico.org/v3
kind: BGPPeer
metadata: {name: peer-with-route-reflectors}
spec:
  nodeSelector: all()
  peerSelector: route-reflector == 'true'
"""


def test_route_reflector_topology_sessions_go_only_to_the_reflector(lab: Lab) -> None:
    cluster = mesh_cluster(lab)
    cluster.apply(POOL.format(vxlan="Never") + "---" + RR)
    for name in ("host1", "host2"):
        cluster.start(name)
    # host3 has no --log-level: it follows logSeverityScreen, as calico/node does.
    cluster.start("host3", log_level=None)
    rr, h2, h3 = (cluster.hosts[n].ip for n in ("host1", "host2", "host3"))
    cluster.wait_peers("host1", {h2, h3})
    cluster.wait_peers("host2", {rr})
    cluster.wait_peers("host3", {rr})
    # The node status tells which side is the reflector and who its clients are.
    st1 = cluster.status("host1")
    assert st1["route_reflector_cluster_id"] == "244.0.0.1"
    assert {p["peer"]: p["rr_client"] for p in st1["peers"]} == {h2: True, h3: True}
    st2 = cluster.status("host2")
    assert [p["peer"] for p in st2["peers"]] == [rr]
    a, b = cluster.pod("host2", "a"), cluster.pod("host3", "b")
    cluster.wait_ping(a, b)
    cluster.wait_ping(b, a)
    # host3 learned host2's block through the reflector, next hop untouched (host2 itself).
    (block2,) = cluster.status("host2")["blocks"]
    assert route_of(cluster, "host3", block2)["gateway"] == h2
    log3 = cluster.log_text("host3")
    assert "log level Warning (BGPConfiguration logSeverityScreen)" in log3
    assert " INFO " not in log3.split("logSeverityScreen)", 1)[1]
    # Diagnostics for a bug report: the status, routes and the host's tables, in one tarball.
    out = cluster.tmp / "diags.tgz"
    cluster.routemesh(
        "node", "diags", "--node", "host1", "--run-dir", str(cluster.run_dir), "--out", str(out),
        ns=cluster.hosts["host1"].ns,
    )  # fmt: skip
    with tarfile.open(out) as tar:
        names = {m.name.split("/", 1)[1] for m in tar.getmembers()}
        status = json.load(tar.extractfile("routemesh-diags/status.json"))  # type: ignore[arg-type]
        routes = tar.extractfile("routemesh-diags/ip-route.txt").read().decode()  # type: ignore[union-attr]
    assert {"status.json", "routes.json", "iptables-save.txt", "ip-route.txt"} <= names
    assert status["node"] == "host1" and block2 in routes


def vxlan_packets(host: Host, direction: str = "tx") -> int:
    out = host.ns.run(["ip", "-j", "-s", "link", "show", "vxlan.calico"]).stdout
    return json.loads(out)[0]["stats64"][direction]["packets"]


def test_cross_subnet_vxlan_encapsulates_only_across_subnets(lab: Lab) -> None:
    require_root()
    require_link_kind("vxlan")
    cluster = Cluster(lab)
    cluster.segment("br0", "198.18.0.1/24")
    cluster.segment("br1", "198.18.1.1/24")
    cluster.host("a", "198.18.0.2/24")
    cluster.host("b", "198.18.0.3/24")
    cluster.host("c", "198.18.1.2/24", bridge="br1")
    cluster.apply(POOL.format(vxlan="CrossSubnet"))
    for name in cluster.hosts:
        cluster.start(name)
    ips = {n: h.ip for n, h in cluster.hosts.items()}
    for name in cluster.hosts:
        cluster.wait_peers(name, {ip for n, ip in ips.items() if n != name})
    pods: dict[str, Pod] = {n: cluster.pod(n, f"p-{n}") for n in cluster.hosts}
    cluster.wait_ping(pods["a"], pods["b"])
    cluster.wait_ping(pods["a"], pods["c"])
    blocks = {n: cluster.status(n)["blocks"][0] for n in cluster.hosts}
    vtep_c = cluster.status("c")["vxlan"]["vtep"]
    # Same subnet: straight to host b. Other subnet: to c's VTEP over vxlan.calico.
    assert route_of(cluster, "a", blocks["b"])["gateway"] == ips["b"]
    to_c = route_of(cluster, "a", blocks["c"])
    assert (to_c["gateway"], to_c["dev"]) == (vtep_c, "vxlan.calico")
    assert "onlink" in to_c.get("flags", [])
    host_a = cluster.hosts["a"]
    before = vxlan_packets(host_a)
    assert pods["a"].ns.ping(pods["b"].ip, count=5, timeout=1)
    assert vxlan_packets(host_a) == before, "a→b (same subnet) must not be encapsulated"
    assert pods["a"].ns.ping(pods["c"].ip, count=5, timeout=1)
    assert vxlan_packets(host_a) >= before + 5, "a→c (across subnets) must go over VXLAN"


def test_node_churn_follows_without_resetting_other_sessions(lab: Lab) -> None:
    cluster = mesh_cluster(lab)
    cluster.apply(POOL.format(vxlan="Never"))
    for name in ("host1", "host2", "host3"):
        cluster.start(name)
    ips = {n: h.ip for n, h in cluster.hosts.items()}
    for name in cluster.hosts:
        cluster.wait_peers(name, {ip for n, ip in ips.items() if n != name})

    def established_counts(name: str) -> dict[str, int]:
        return {r["peer"]: r["established_count"] for r in cluster.status(name)["bgp"]}

    before = {n: established_counts(n) for n in cluster.hosts}
    host4 = cluster.host("host4", "198.18.0.5/24")
    cluster.start("host4")
    for name in ("host1", "host2", "host3"):
        cluster.wait_peers(name, {ip for n, ip in ips.items() if n != name} | {host4.ip})
    cluster.wait_peers("host4", set(ips.values()))
    p4, p1 = cluster.pod("host4", "late"), cluster.pod("host1", "early")
    cluster.wait_ping(p1, p4)
    # The sessions that existed before never reset while host4 joined.
    for name, counts in before.items():
        now = established_counts(name)
        assert {p: now[p] for p in counts} == counts, (name, counts, now)
    # host4 leaves: its node stops and its Node resource is deleted; the others drop it.
    # A stopped node keeps its kernel routes (persist): forwarding survives a restart.
    learned = route_of(cluster, "host4", cluster.status("host1")["blocks"][0])
    assert learned is not None
    cluster.stop("host4")
    assert route_of(cluster, "host4", learned["dst"]) == learned
    cluster.routemesh("delete", "node", "host4", "--datastore", str(cluster.datastore))
    for name in ("host1", "host2", "host3"):
        cluster.wait_peers(name, {ip for n, ip in ips.items() if n != name})
        for peer, count in before[name].items():
            assert established_counts(name)[peer] == count
    wait_for(
        lambda: route_of(cluster, "host1", cluster.status("host1")["blocks"][0]) is not None,
        timeout=10,
        what="host1 keeps its own block",
    )


SMALL_BLOCKS = """
apiVersion: projectcalico.org/v3
kind: IPPool
metadata: {name: tiny}
spec: {cidr: 10.244.0.0/24, blockSize: 30, natOutgoing: true}
---
apiVersion: projectcalico.org/v3
kind: IPAMConfiguration
metadata: {name: default}
spec: {strictAffinity: false, maxBlocksPerHost: 1}
"""

LISTENER = """
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 8080))
s.listen()
while True:
    c, addr = s.accept()
    print(addr[0], flush=True)
    c.close()
"""


def test_fixed_ip_borrowing_and_nat_outgoing(lab: Lab) -> None:
    require_root()
    cluster = Cluster(lab)
    cluster.segment("br0", "198.18.0.1/24")
    cluster.segment("br9", "198.18.9.1/24")
    cluster.host("host1", "198.18.0.2/24")
    cluster.host("host2", "198.18.0.3/24")
    outside = lab.netns()
    lab.bridge([outside], ["198.18.9.2/24"], hub=cluster.router, bridge_name="br9")
    outside.ip("route", "add", "default", "via", "198.18.9.1")
    cluster.apply(SMALL_BLOCKS)
    for name in cluster.hosts:
        cluster.start(name)
    cluster.wait_peers("host1", {"198.18.0.3"})
    cluster.wait_peers("host2", {"198.18.0.2"})

    # host2 claims a /30 first; host1 fills its own /30 (maxBlocksPerHost 1), then borrows.
    remote = cluster.pod("host2", "remote")
    (block2,) = cluster.status("host2")["blocks"]
    fixed_ip = str(list(ipaddress.ip_network(block2).hosts())[-1])
    fixed = cluster.pod("host2", "fixed", conf_extra={"args": {"cni": {"ips": [fixed_ip]}}})
    assert fixed.ip == fixed_ip  # the requested address, honoured because it was free
    local = [cluster.pod("host1", f"local{i}") for i in range(4)]
    (block1,) = cluster.status("host1")["blocks"]
    assert all(ipaddress.ip_address(p.ip) in ipaddress.ip_network(block1) for p in local)
    borrower = cluster.pod("host1", "borrower")
    assert ipaddress.ip_address(borrower.ip) in ipaddress.ip_network(block2)
    wait_for(
        lambda: cluster.status("host1")["borrowed"] == [borrower.ip],
        timeout=20,
        what="host1 to report its borrowed address",
        describe=lambda: json.dumps(cluster.status("host1"), indent=1),
    )
    # host2 blackholes its /30 but routes the borrowed /32 to host1: longest match wins.
    wait_for(
        lambda: (route_of(cluster, "host2", borrower.ip) or {}).get("gateway") == "198.18.0.2",
        timeout=20,
        what="host2 to learn the borrowed /32 via host1",
        describe=lambda: json.dumps(cluster.routes("host2")),
    )
    cluster.wait_ping(remote, borrower)
    cluster.wait_ping(borrower, fixed)

    # NAT outgoing: to a host outside every pool, a pod shows up as its node's address.
    log = cluster.tmp / "listener.log"
    outside.popen(["python3", "-u", "-c", LISTENER], log=log)
    connect = (
        "import socket, time\n"
        "for _ in range(50):\n"
        "    try:\n"
        "        socket.create_connection(('198.18.9.2', 8080), timeout=2).close(); break\n"
        "    except OSError: time.sleep(0.2)\n"
    )
    local[0].ns.run(["python3", "-c", connect], timeout=30)
    wait_for(
        lambda: log.exists() and "198.18.0.2" in log.read_text().split(),
        timeout=20,
        what="the outside listener to see host1's address (masqueraded)",
        describe=lambda: log.read_text() if log.exists() else "(no log)",
    )
    assert local[0].ip not in log.read_text()
