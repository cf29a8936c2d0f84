"""Policy on real iptables and ipset in namespaces: two hosts on a bridge, workloads on veths,
real pings and TCP connects for tenant isolation, the Kubernetes examples, failsafes,
incremental updates, reconcile and rollback."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from agent.policy_dataplane import ApplyError, ApplyStats, PolicyDataplane, local_runner
from bgpd.model import GlobalNetworkPolicy, Profile, Resource, load_documents
from policy.compiler import PolicyCompiler
from policy.endpoint import Endpoint, NamedPort
from policy.ruleset import DROP, IPSet, Jump, Rule, RuleSet
from tests.lab.netns import Lab, Netns
from tests.lab.require import require_binary, require_root
from tests.lab.waiting import wait_for

pytestmark = pytest.mark.root

# The shared Calico example manifests live next to the checkout, as for test_model_examples.
EXAMPLES = Path(__file__).resolve().parents[2].parent / "shared" / "examples"

# A listener that accepts and closes on every port given; prints "ready" once bound.
LISTENER = """
import selectors, socket, sys
sel = selectors.DefaultSelector()
for port in map(int, sys.argv[1:]):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port)); s.listen(64); sel.register(s, selectors.EVENT_READ)
while True:
    for key, _ in sel.select():
        conn, _ = key.fileobj.accept(); conn.close()
"""

CONNECT = """
import socket, sys
src = sys.argv[3] if len(sys.argv) > 3 else None
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1.5,
                             source_address=(src, 0) if src else None)
s.close()
"""


def _require() -> None:
    require_root()
    for tool in ("iptables-nft-restore", "iptables-nft-save", "ipset"):
        require_binary(tool)


class Recorder:
    """Runs commands in a namespace and keeps every (argv, stdin) it was given."""

    def __init__(self, ns: Netns) -> None:
        self.inner = local_runner(ns.name)
        self.calls: list[tuple[list[str], str | None]] = []

    def __call__(self, argv: Sequence[str], stdin: str | None = None):
        self.calls.append((list(argv), stdin))
        return self.inner(argv, stdin)

    def writes(self) -> list[tuple[list[str], str | None]]:
        return [c for c in self.calls if "restore" in " ".join(c[0])]


class Cluster:
    """Hosts (netns) on one bridge 198.18.0.0/24, each routing its pod /24 to the others;
    workloads are netns on a `cali…` veth with Calico's /32 + proxy-ARP plumbing."""

    def __init__(self, lab: Lab, hosts: int = 2, *, external: bool = False) -> None:
        self.lab = lab
        members = [lab.netns() for _ in range(hosts)]
        addrs = [[f"198.18.0.{i + 1}/24"] for i in range(hosts)]
        if external:
            members.append(lab.netns())
            addrs.append(["198.18.0.100/24"])
        self.hub, _ = lab.bridge(members, addrs)
        self.hosts = members[:hosts]
        self.ext = members[hosts] if external else None
        for i, host in enumerate(self.hosts):
            for j in range(hosts):
                if j != i:
                    host.ip("route", "add", f"10.244.{j + 1}.0/24", "via", f"198.18.0.{j + 1}")
            if self.ext is not None:
                for net in ("198.18.100.0/24", "198.18.101.0/24", "198.18.1.0/24"):
                    host.ip("route", "add", net, "via", "198.18.0.100")
        if self.ext is not None:
            for addr in ("198.18.100.10/32", "198.18.101.10/32", "198.18.1.10/32"):
                self.ext.ip("addr", "add", addr, "dev", "lo")
            for j in range(hosts):
                self.ext.ip("route", "add", f"10.244.{j + 1}.0/24", "via", f"198.18.0.{j + 1}")
        self.runners = [Recorder(h) for h in self.hosts]
        self.compilers = [PolicyCompiler(4, node=f"host{i}") for i in range(hosts)]
        self.dataplanes = [PolicyDataplane(r) for r in self.runners]
        self.endpoints: dict[str, Endpoint] = {}
        self.pods: dict[str, Netns] = {}
        self._count = [0] * hosts

    def add_pod(
        self,
        host: int,
        name: str,
        namespace: str,
        labels: dict[str, str] | None = None,
        ports: tuple[NamedPort, ...] = (),
    ) -> str:
        self._count[host] += 1
        ip = f"10.244.{host + 1}.{self._count[host] + 1}"
        iface = f"cali{host}x{self._count[host]}"
        pod = self.lab.netns()
        h = self.hosts[host]
        self.lab.veth(h, pod, (), f"{ip}/32", name_a=iface, name_b="eth0")
        # Calico's plumbing: host side ee:ee:…, the pod reaches 169.254.1.1 at that MAC.
        h.ip("link", "set", iface, "address", "ee:ee:ee:ee:ee:ee")
        h.sysctl(f"net.ipv4.conf.{iface}.proxy_arp", 1)
        h.ip("route", "add", f"{ip}/32", "dev", iface)
        pod.ip("route", "add", "169.254.1.1", "dev", "eth0", "scope", "link")
        pod.ip("route", "add", "default", "via", "169.254.1.1", "dev", "eth0")
        pod.ip("neigh", "add", "169.254.1.1", "lladdr", "ee:ee:ee:ee:ee:ee", "dev", "eth0")
        self.endpoints[name] = Endpoint.for_pod(
            name, namespace, iface, [ip], labels or {}, ports=ports, node=f"host{host}"
        )
        self.pods[name] = pod
        return ip

    def ip(self, name: str) -> str:
        return self.endpoints[name].ips[0]

    def apply(self, resources: Sequence[Resource]) -> list[ApplyStats]:
        stats = []
        for compiler, dp in zip(self.compilers, self.dataplanes):
            compiler.set_resources(resources)
            compiler.set_endpoints(self.endpoints.values())
            stats.append(dp.apply(compiler.ruleset()))
        return stats

    def relabel(self, name: str, labels: dict[str, str]) -> list[ApplyStats]:
        old = self.endpoints[name]
        new = Endpoint.for_pod(
            old.name,
            old.namespace or "",
            old.iface,
            old.ips,
            labels,
            ports=old.ports,
            node=old.node,
        )
        self.endpoints[name] = new
        stats = []
        for compiler, dp in zip(self.compilers, self.dataplanes):
            compiler.upsert_endpoint(new)
            stats.append(dp.apply(compiler.ruleset()))
        return stats

    def listen(self, ns: Netns, *ports: int) -> None:
        ns.popen(["python3", "-c", LISTENER, *map(str, ports)])
        for port in ports:
            wait_for(lambda p=port: ns.tcp_listening(p), timeout=10, what=f"listener :{port}")

    def connects(self, ns: Netns, ip: str, port: int, source: str | None = None) -> bool:
        argv = ["python3", "-c", CONNECT, ip, str(port)] + ([source] if source else [])
        return ns.run(argv, check=False, timeout=15).returncode == 0


def pings(a: Netns, ip: str) -> bool:
    return a.ping(ip, count=1, timeout=1)


def reachable(a: Netns, ip: str) -> bool:
    # An allowed path may need a moment for neighbour resolution; a denied one never answers.
    return any(pings(a, ip) for _ in range(3))


def tenant_cluster(lab: Lab) -> Cluster:
    c = Cluster(lab, 2)
    c.add_pod(0, "ami-a-pod", "ami-a")
    c.add_pod(1, "ami-b-pod", "ami-b")
    c.add_pod(1, "bmi-pod", "bmi")
    return c


def test_tenant_isolation_by_ping_and_after_delete_and_reapply(lab: Lab) -> None:
    _require()
    c = tenant_cluster(lab)
    resources = load_documents((EXAMPLES / "tenant-isolation.yaml").read_text())
    profiles = [r for r in resources if isinstance(r, Profile)]
    a, b, m = c.pods["ami-a-pod"], c.pods["ami-b-pod"], c.pods["bmi-pod"]
    ip_a, ip_b, ip_m = c.ip("ami-a-pod"), c.ip("ami-b-pod"), c.ip("bmi-pod")

    def isolated() -> None:
        assert reachable(a, ip_b), "ami-a -> ami-b must pass (different hosts)"
        assert reachable(b, ip_a), "ami-b -> ami-a must pass"
        assert not pings(a, ip_m), "ami-a -> bmi must be denied"
        assert not pings(m, ip_a), "bmi -> ami-a must be denied"
        assert not pings(b, ip_m), "ami-b -> bmi must be denied (same host)"
        assert not pings(m, ip_b), "bmi -> ami-b must be denied (same host)"

    c.apply(resources)
    isolated()
    # The operator's plain `iptables-save` (the nft alternative on Debian) shows our rules.
    save = c.hosts[1].run(["iptables-save"]).stdout
    assert '-A FORWARD -m comment --comment "cali:hook" -j cali-FORWARD' in save
    assert "cali-pi-allow-within-org-ami" in save

    # Delete the policies: the namespace profiles allow everything again.
    c.apply(profiles)
    assert reachable(a, ip_m) and reachable(m, ip_b)
    save = c.hosts[1].run(["iptables-nft-save"]).stdout
    assert "cali-pi-" not in save
    sets = c.hosts[1].run(["ipset", "list", "-n"]).stdout.split()
    assert not [s for s in sets if s.startswith("cali40s:")], sets

    c.apply(resources)
    isolated()


def k8s_resources(*namespaces: str, extra: str = "") -> list[Resource]:
    text = (EXAMPLES / "k8s-policies.yaml").read_text()
    docs = load_documents(text)
    for ns, labels in namespaces:
        lines = "".join(f"    {k}: {v}\n" for k, v in labels.items()) or "    {}\n"
        docs += load_documents(
            "apiVersion: projectcalico.org/v3\nkind: Profile\n"
            f"metadata:\n  name: kns.{ns}\nspec:\n  labelsToApply:\n{lines}"
            "  ingress:\n  - action: Allow\n  egress:\n  - action: Allow\n"
        )
    return docs


def test_k8s_db_egress_limited_to_ipblock_on_tcp_3306(lab: Lab) -> None:
    _require()
    c = Cluster(lab, 1, external=True)
    c.add_pod(0, "db", "default", {"role": "db"})
    c.add_pod(0, "other", "default", {"role": "other"})
    c.listen(c.ext, 3306, 3307)
    c.apply(k8s_resources(("default", {})))
    db, other = c.pods["db"], c.pods["other"]
    assert wait_for(
        lambda: c.connects(db, "198.18.100.10", 3306), timeout=10, what="db -> ipBlock:3306"
    )
    assert not c.connects(db, "198.18.100.10", 3307), "port outside the policy"
    assert not c.connects(db, "198.18.101.10", 3306), "address outside the ipBlock"
    # A pod the policy does not select keeps the namespace default (allow).
    assert c.connects(other, "198.18.101.10", 3306)


def test_k8s_app_ingress_ipblock_except_namespace_and_pod_selectors(lab: Lab) -> None:
    _require()
    c = Cluster(lab, 2, external=True)
    app_ip = c.add_pod(0, "app", "default", {"role": "app"})
    c.add_pod(1, "web", "default", {"role": "web"})
    c.add_pod(1, "notweb", "default", {"role": "batch"})
    c.add_pod(1, "webns", "web", {"any": "thing"})
    c.add_pod(0, "otherns", "other", {"role": "web"})
    c.listen(c.pods["app"], 8080, 9005, 9011)
    c.apply(
        k8s_resources(
            ("default", {}), ("web", {"project": "web-project"}), ("other", {"project": "x"})
        )
    )
    pods, ext = c.pods, c.ext
    assert ext is not None
    assert wait_for(
        lambda: c.connects(ext, app_ip, 8080, "198.18.0.100"), timeout=10, what="ipBlock"
    )
    assert c.connects(ext, app_ip, 9005, "198.18.0.100"), "endPort range 9000-9010"
    assert not c.connects(ext, app_ip, 9011, "198.18.0.100"), "past endPort"
    assert not c.connects(ext, app_ip, 8080, "198.18.1.10"), "ipBlock except"
    assert c.connects(pods["web"], app_ip, 8080), "podSelector role=web"
    assert not c.connects(pods["notweb"], app_ip, 8080), "role=batch is not selected"
    assert c.connects(pods["webns"], app_ip, 9005), "namespaceSelector project=web-project"
    assert not c.connects(pods["otherns"], app_ip, 8080), "role=web but in another namespace"


def test_failsafe_ports_survive_global_deny_all(lab: Lab) -> None:
    _require()
    c = Cluster(lab, 1, external=True)
    host, ext = c.hosts[0], c.ext
    assert ext is not None
    hep = Endpoint(name="host0-eth0", iface="eth0", ips=("198.18.0.1",), host=True, node="host0")
    c.endpoints["hep"] = hep
    c.listen(host, 22, 179, 8080)
    c.apply([])
    # A host endpoint with no policy and no profile denies all but the failsafes.
    deny_all = GlobalNetworkPolicy.model_validate(
        {
            "metadata": {"name": "deny-all"},
            "spec": {"selector": "all()", "types": ["Ingress", "Egress"]},
        }
    )
    c.apply([deny_all])
    assert c.connects(ext, "198.18.0.1", 22), "failsafe SSH"
    assert c.connects(ext, "198.18.0.1", 179), "failsafe BGP"
    assert not c.connects(ext, "198.18.0.1", 8080), "deny-all holds elsewhere"
    allow = GlobalNetworkPolicy.model_validate(
        {
            "metadata": {"name": "allow-8080"},
            "spec": {
                "order": 10,
                "selector": "all()",
                "types": ["Ingress"],
                "ingress": [
                    {"action": "Allow", "protocol": "TCP", "destination": {"ports": [8080]}}
                ],
            },
        }
    )
    c.apply([deny_all, allow])
    assert c.connects(ext, "198.18.0.1", 8080)


def test_label_change_is_one_ipset_diff_and_no_chain_rewrite(lab: Lab) -> None:
    _require()
    c = Cluster(lab, 2)
    server_ip = c.add_pod(0, "server", "shop", {"role": "server"})
    client_ip = c.add_pod(1, "client", "shop", {"role": "other"})
    c.listen(c.pods["server"], 8080)
    docs = load_documents(
        """
apiVersion: projectcalico.org/v3
kind: Profile
metadata: {name: kns.shop}
spec:
  ingress: [{action: Allow}]
  egress: [{action: Allow}]
---
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: clients-only, namespace: shop}
spec:
  selector: role == 'server'
  ingress:
  - action: Allow
    protocol: TCP
    source: {selector: role == 'client'}
    destination: {ports: [8080]}
"""
    )
    c.apply(docs)
    client = c.pods["client"]
    assert not c.connects(client, server_ip, 8080)
    for r in c.runners:
        r.calls.clear()
    stats = c.relabel("client", {"role": "client"})
    assert wait_for(lambda: c.connects(client, server_ip, 8080), timeout=5, what="allowed")
    # host0 runs the server, so only it holds the source-selector set; host1 sends nothing.
    server_host, client_host = stats
    assert server_host.chains_written == [] and server_host.iptables_batch == ""
    assert server_host.ipset_batch == f"add {server_host.ipset_batch.split()[1]} {client_ip}\n"
    assert [argv for argv, _ in c.runners[0].writes()] == [["ipset", "restore", "-exist"]]
    assert client_host.ipset_lines == 0 and client_host.iptables_batch == ""
    assert c.runners[1].writes() == []


def test_reconcile_repairs_our_chains_and_leaves_foreign_rules(lab: Lab) -> None:
    _require()
    c = tenant_cluster(lab)
    resources = load_documents((EXAMPLES / "tenant-isolation.yaml").read_text())
    c.apply(resources)
    host = c.hosts[1]
    tw = c.endpoints["bmi-pod"].iface
    host.run(
        f"iptables-nft -F cali-tw-{tw} && iptables-nft -N cali-stale && "
        "iptables-nft -N foreign && iptables-nft -A FORWARD -s 192.0.2.1 -j foreign && "
        "iptables-nft -D FORWARD -j cali-FORWARD -m comment --comment cali:hook && "
        "iptables-nft -A FORWARD -j cali-FORWARD -m comment --comment cali:hook && "
        "ipset create cali40s:stale hash:net"
    )
    stats = c.dataplanes[1].reconcile(c.compilers[1].ruleset())
    assert stats.chains_written == [f"cali-tw-{tw}"]
    assert stats.chains_deleted == ["cali-stale"]
    assert stats.hooks_fixed == ["FORWARD"]
    assert stats.sets_destroyed == ["cali40s:stale"]
    save = host.run(["iptables-nft-save"]).stdout
    forward = [line for line in save.splitlines() if line.startswith("-A FORWARD")]
    assert forward[0].endswith("-j cali-FORWARD") and "foreign" in forward[1]
    assert ":foreign" in save and "cali-stale" not in save
    assert not pings(c.pods["bmi-pod"], c.ip("ami-b-pod"))
    again = c.dataplanes[1].reconcile(c.compilers[1].ruleset())
    assert again.chains_written == [] and again.ipset_lines == 0


def test_failed_apply_rolls_back_and_names_the_line(lab: Lab) -> None:
    _require()
    host = lab.netns()
    dp = PolicyDataplane(local_runner(host.name))
    good = RuleSet(4, chains={"cali-FORWARD": (Rule((), DROP),)})
    dp.apply(good)
    bad = RuleSet(
        4,
        chains={"cali-FORWARD": (Rule((), Jump("cali-missing-chain")),)},
        ipsets={"cali40s:new": IPSet("cali40s:new", "hash:net", 4, frozenset({"10.244.9.9"}))},
    )
    with pytest.raises(ApplyError) as info:
        dp.apply(bad)
    assert info.value.line is not None and "cali-missing-chain" in info.value.line
    save = host.run(["iptables-nft-save"]).stdout
    assert "-A cali-FORWARD -m comment" in save and "-j DROP" in save
    assert "cali-missing-chain" not in save
    listed = host.run(["ipset", "list", "-n"]).stdout.split()
    assert "cali40s:new" not in listed
    # The next good apply still works after the failure.
    dp.apply(good)


def test_foreign_state_survives_remove_all(lab: Lab) -> None:
    _require()
    c = tenant_cluster(lab)
    c.apply(load_documents((EXAMPLES / "tenant-isolation.yaml").read_text()))
    host = c.hosts[0]
    host.run("iptables-nft -A INPUT -p tcp --dport 9 -j DROP && ipset create other hash:ip")
    c.dataplanes[0].remove_all()
    save = host.run(["iptables-nft-save"]).stdout
    assert "cali-" not in save and "--dport 9 -j DROP" in save
    assert host.run(["ipset", "list", "-n"]).stdout.split() == ["other"]


def test_tenant_isolation_over_ipv6(lab: Lab) -> None:
    _require()
    require_binary("ip6tables-nft-restore")
    host = lab.netns()
    pods: dict[str, tuple[Netns, str]] = {}
    eps = []
    for i, (name, ns) in enumerate((("a", "ami-a"), ("b", "ami-b"), ("m", "bmi"))):
        ip, iface = f"fd00:10:244::{i + 2}", f"cali6{name}"
        pod = lab.netns()
        lab.veth(host, pod, (), f"{ip}/128", name_a=iface, name_b="eth0")
        host.ip("link", "set", iface, "address", "ee:ee:ee:ee:ee:ee")
        host.ip("-6", "route", "add", f"{ip}/128", "dev", iface)
        pod.ip("-6", "neigh", "add", "fe80::1", "lladdr", "ee:ee:ee:ee:ee:ee", "dev", "eth0")
        pod.ip("-6", "route", "add", "default", "via", "fe80::1", "dev", "eth0")
        pods[name] = (pod, ip)
        eps.append(Endpoint.for_pod(name, ns, iface, [ip]))
    compiler = PolicyCompiler(6)
    compiler.set_resources(load_documents((EXAMPLES / "tenant-isolation.yaml").read_text()))
    compiler.set_endpoints(eps)
    dp = PolicyDataplane(local_runner(host.name), version=6)
    dp.apply(compiler.ruleset())
    (a, ip_a), (b, ip_b), (m, ip_m) = pods["a"], pods["b"], pods["m"]
    assert reachable(a, ip_b) and reachable(b, ip_a), "same org over IPv6 (NDP to the host works)"
    assert not pings(a, ip_m) and not pings(m, ip_b)
    assert "cali-pi-allow-within-org-ami" in host.run(["ip6tables-nft-save"]).stdout


def _gnp(name: str, spec: dict) -> GlobalNetworkPolicy:
    return GlobalNetworkPolicy.model_validate({"metadata": {"name": name}, "spec": spec})


def test_pre_dnat_and_do_not_track_host_endpoint_policies(lab: Lab) -> None:
    _require()
    c = Cluster(lab, 1, external=True)
    host, ext = c.hosts[0], c.ext
    assert ext is not None
    c.endpoints["hep"] = Endpoint(
        name="host0-eth0",
        iface="eth0",
        ips=("198.18.0.1",),
        host=True,
        node="host0",
        labels={"role": "node"},
    )
    c.listen(host, 7000, 8080, 8443)
    allow_all = _gnp(
        "allow-all",
        {
            "order": 100,
            "selector": "all()",
            "types": ["Ingress", "Egress"],
            "ingress": [{"action": "Allow"}],
            "egress": [{"action": "Allow"}],
        },
    )
    pre_dnat = _gnp(
        "no-8443",
        {
            "order": 1,
            "selector": "role == 'node'",
            "applyOnForward": True,
            "preDNAT": True,
            "ingress": [{"action": "Deny", "protocol": "TCP", "destination": {"ports": [8443]}}],
        },
    )
    c.apply([allow_all, pre_dnat])
    assert c.connects(ext, "198.18.0.1", 8080)
    assert not c.connects(ext, "198.18.0.1", 8443), "preDNAT deny in mangle"
    save = host.run(["iptables-nft-save", "-t", "mangle"]).stdout
    assert '-A PREROUTING -m comment --comment "cali:hook" -j cali-PREROUTING' in save

    # Untracked allow in both directions for TCP 7000; normal policy denies everything else.
    deny_all = _gnp("deny-all", {"order": 100, "selector": "all()", "types": ["Ingress", "Egress"]})
    untracked = _gnp(
        "untracked-7000",
        {
            "order": 1,
            "selector": "role == 'node'",
            "applyOnForward": True,
            "doNotTrack": True,
            "types": ["Ingress", "Egress"],
            "ingress": [{"action": "Allow", "protocol": "TCP", "destination": {"ports": [7000]}}],
            "egress": [{"action": "Allow", "protocol": "TCP", "source": {"ports": [7000]}}],
        },
    )
    stats = c.apply([deny_all, untracked])
    assert "raw:cali-PREROUTING" in stats[0].chains_written
    assert "mangle:cali-PREROUTING" in stats[0].chains_deleted, "preDNAT gone, mangle cleaned"
    assert c.connects(ext, "198.18.0.1", 7000), "untracked allow"
    assert not c.connects(ext, "198.18.0.1", 8080), "normal deny-all"
    conntrack = host.run(["cat", "/proc/net/nf_conntrack"]).stdout
    assert "dport=8080" in conntrack, "control: the tracked 8080 flow of the first phase"
    assert "dport=7000" not in conntrack, "the 7000 flow never entered conntrack"
    assert "cali-" not in host.run(["iptables-nft-save", "-t", "mangle"]).stdout
