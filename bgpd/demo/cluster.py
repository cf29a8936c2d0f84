"""The demo scenario: four hosts and a router, the tenants' pods, and what to show of them.

host1..host3 share the subnet 198.18.0.0/24; host4 sits on 198.18.1.0/24 behind the router
namespace, so blocks to and from it go over VXLAN (the pool is CrossSubnet). Every host runs
`routemesh node run` on one shared store; pods are made by the real `routemesh-cni` plugin.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bgpd.control import ControlError, request
from bgpd.demo.lab import NS_PREFIX, DemoError, DemoLab, Progress, in_ns, sh

MANIFESTS = Path(__file__).resolve().parents[2] / "configs" / "demo"
ROUTER = f"{NS_PREFIX}router"
SEGMENTS = {"br0": "198.18.0.1/24", "br1": "198.18.1.1/24"}
ETCD_RELAY = ("198.18.0.1", 2379)


@dataclass(frozen=True)
class HostSpec:
    name: str
    address: str  # with the subnet's length
    bridge: str

    @property
    def ns(self) -> str:
        return f"{NS_PREFIX}{self.name}"

    @property
    def ip(self) -> str:
        return self.address.split("/")[0]


@dataclass(frozen=True)
class PodSpec:
    namespace: str  # the Kubernetes namespace, i.e. the tenant
    name: str
    host: str

    @property
    def label(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def ns(self) -> str:
        return f"{NS_PREFIX}{self.namespace}-{self.name}"


HOSTS = (
    HostSpec("host1", "198.18.0.2/24", "br0"),
    HostSpec("host2", "198.18.0.3/24", "br0"),
    HostSpec("host3", "198.18.0.4/24", "br0"),
    HostSpec("host4", "198.18.1.2/24", "br1"),
)
PODS = (
    PodSpec("ami-a", "web", "host1"),
    PodSpec("ami-a", "api", "host4"),
    PodSpec("ami-b", "web", "host2"),
    PodSpec("bmi", "web", "host3"),
    PodSpec("bmi", "db", "host4"),
)
# What tenants.yaml says, as an oracle: the org each namespace's profile labels its pods with.
ORG = {"ami-a": "ami", "ami-b": "ami", "bmi": "bmi"}


def expected_allowed(src: PodSpec, dst: PodSpec) -> bool:
    """The tenant-isolation rule: a pod is reachable from its own organisation only."""
    return ORG[src.namespace] == ORG[dst.namespace]


def tool(name: str) -> list[str]:
    """Our installed command ``name`` from the interpreter's bin directory (the venv)."""
    path = Path(sys.executable).parent / name
    if not os.access(path, os.X_OK):
        raise DemoError(f"{path} is missing: install routemesh first (make setup)")
    return [str(path)]


@dataclass
class Outcome:
    """What the demo saw: node status, host routes, and the ping matrix."""

    status: dict[str, dict[str, Any]] = field(default_factory=dict)
    routes: dict[str, list[str]] = field(default_factory=dict)
    ips: dict[str, str] = field(default_factory=dict)  # pod label -> address
    # (src label, dst label) -> reached
    matrix: dict[tuple[str, str], bool] = field(default_factory=dict)

    def mismatches(self) -> list[str]:
        out = []
        for src in PODS:
            for dst in PODS:
                if src is dst:
                    continue
                want = expected_allowed(src, dst)
                got = self.matrix.get((src.label, dst.label))
                if got != want:
                    out.append(
                        f"{src.label} -> {dst.label}: expected "
                        f"{'allowed' if want else 'denied'}, got "
                        f"{'allowed' if got else 'denied'}"
                    )
        return out


class DemoCluster:
    """Builds the scenario in a DemoLab; each step reports through ``progress``."""

    def __init__(
        self,
        lab: DemoLab,
        *,
        store_url: str,
        node_store_url: str,
        step: Progress,
        progress: Progress,
    ) -> None:
        self.lab = lab
        self.store_url = store_url  # from the root namespace (apply)
        self.node_store_url = node_store_url  # from inside the host namespaces
        self.step = step
        self.progress = progress
        self.run_dir = lab.state_dir / "run"
        self.logs = lab.state_dir / "logs"
        self.run_dir.mkdir(exist_ok=True)

    # -- topology ------------------------------------------------------------------------------

    def build(self) -> None:
        self.lab.netns(ROUTER, forwarding=True)
        for bridge, gateway in SEGMENTS.items():
            self.lab.bridge(ROUTER, bridge, gateway)
        for host in HOSTS:
            self.lab.netns(host.ns, forwarding=True)
            self.lab.attach(ROUTER, host.bridge, host.name, host.ns, host.address)
            # Proxy ARP for the pods' gateway 169.254.1.1 answers only when the host has a
            # route there; a default route via the router is what a real host has.
            sh(["ip", "-n", host.ns, "route", "add", "default", "via", self.gateway(host)])

    @staticmethod
    def gateway(host: HostSpec) -> str:
        return SEGMENTS[host.bridge].split("/")[0]

    def start_relay(self, target: str) -> None:
        """The etcd relay: the router's ETCD_RELAY address carries to ``target`` (host:port)."""
        argv = [
            sys.executable,
            "-m",
            "bgpd.demo.proxy",
            ROUTER,
            f"{ETCD_RELAY[0]}:{ETCD_RELAY[1]}",
            target,
        ]
        proc = self.lab.start(argv, self.logs / "etcd-relay.log")
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            res = sh(in_ns(ROUTER, ["ss", "-Hltn", f"sport = :{ETCD_RELAY[1]}"]), check=False)
            if res.stdout.strip():
                return
            if proc.poll() is not None:
                break
            time.sleep(0.1)
        log = (self.logs / "etcd-relay.log").read_text(errors="replace")[-800:]
        raise DemoError(f"the etcd relay did not start: {log}")

    # -- datastore -----------------------------------------------------------------------------

    def routemesh(self, *args: str, ns: str | None = None) -> str:
        argv = [*tool("routemesh"), *args]
        return sh(in_ns(ns, argv) if ns else argv, timeout=60).stdout

    def apply(self) -> None:
        for name in ("cluster.yaml", "tenants.yaml"):
            path = MANIFESTS / name
            if not path.exists():
                raise DemoError(f"{path} is missing (run the demo from a routemesh checkout)")
            shown = path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path
            self.progress(f"routemesh apply -f {shown}")
            self.routemesh("apply", "-f", str(path), "--datastore", self.store_url)

    # -- nodes ---------------------------------------------------------------------------------

    def start_nodes(self) -> None:
        for host in HOSTS:
            argv = [
                *tool("routemesh"), "node", "run",
                "--name", host.name,
                "--ip", host.address,
                "--datastore", self.node_store_url,
                "--run-dir", str(self.run_dir),
                # Short timers: a demo should show a dead peer within seconds, not 90.
                "--hold-time", "9",
                "--resync-interval", "5",
                "--mtu-file", str(self.lab.state_dir / f"mtu-{host.name}"),
            ]  # fmt: skip
            self.lab.start(in_ns(host.ns, argv), self.logs / f"{host.name}.log")

    def node_status(self, host: str) -> dict[str, Any]:
        try:
            return request(str(self.run_dir / f"node-{host}.sock"), "node-status")
        except ControlError:
            return {}

    def _check_nodes_alive(self) -> None:
        for pid, proc in self.lab.procs.items():
            if proc.poll() is not None:
                cmd = " ".join(str(a) for a in proc.args)  # type: ignore[union-attr]
                hosts = (h.name for h in HOSTS if f" {h.name} " in f" {cmd} ")
                name = "etcd-relay" if "bgpd.demo.proxy" in cmd else next(hosts, str(pid))
                log = self.logs / f"{name}.log"
                tail = log.read_text(errors="replace")[-1500:] if log.exists() else ""
                raise DemoError(f"{name} exited (code {proc.returncode}); its log ends:\n{tail}")

    def wait(self, what: str, probe: Callable[[], tuple[bool, str]], timeout: float) -> None:
        """Poll ``probe`` (done?, how far) until done; report progress when it changes."""
        deadline = time.monotonic() + timeout
        start = time.monotonic()
        last = ""
        while True:
            done, detail = probe()
            if detail != last:
                self.progress(f"{detail} ({time.monotonic() - start:.0f}s)")
                last = detail
            if done:
                return
            self._check_nodes_alive()
            if time.monotonic() > deadline:
                raise DemoError(f"timed out after {timeout:.0f}s waiting for {what}: {detail}")
            time.sleep(0.5)

    def wait_sessions(self, timeout: float = 60.0) -> None:
        want = len(HOSTS) * (len(HOSTS) - 1)

        def probe() -> tuple[bool, str]:
            up = 0
            for host in HOSTS:
                rows = self.node_status(host.name).get("bgp", [])
                up += sum(1 for r in rows if r.get("state") == "Established")
            return up == want, f"{up}/{want} BGP sessions Established"

        self.wait("the BGP full mesh", probe, timeout)

    # -- pods ----------------------------------------------------------------------------------

    def cni_add(self, pod: PodSpec) -> str:
        host = next(h for h in HOSTS if h.name == pod.host)
        conf = {
            "cniVersion": "1.0.0",
            "name": "k8s-pod-network",
            "type": "routemesh-cni",
            "datastore": self.node_store_url,
            "nodename": host.name,
            "mtu": 0,
            "mtu_file": str(self.lab.state_dir / f"mtu-{host.name}"),
            "ipam": {"type": "routemesh-cni"},
        }
        env = {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "CNI_COMMAND": "ADD",
            "CNI_CONTAINERID": f"demo-{pod.namespace}-{pod.name}",
            "CNI_IFNAME": "eth0",
            "CNI_NETNS": f"/var/run/netns/{pod.ns}",
            "CNI_PATH": "/usr/lib/cni",
            "CNI_ARGS": f"K8S_POD_NAMESPACE={pod.namespace};K8S_POD_NAME={pod.name}",
        }
        res = sh(
            in_ns(host.ns, tool("routemesh-cni")),
            input=json.dumps(conf),
            env=env,
            check=False,
            timeout=60,
        )
        if res.returncode != 0:
            raise DemoError(f"CNI ADD of {pod.label} on {host.name} failed: {res.stdout}")
        return json.loads(res.stdout)["ips"][0]["address"].split("/")[0]

    def add_pods(self, outcome: Outcome) -> None:
        for pod in PODS:
            self.lab.netns(pod.ns, forwarding=False)
            ip = self.cni_add(pod)
            outcome.ips[pod.label] = ip
            self.progress(f"{pod.label} on {pod.host}: {ip} (routemesh-cni ADD)")

    def wait_policy(self, timeout: float = 60.0) -> None:
        def probe() -> tuple[bool, str]:
            synced = [h.name for h in HOSTS if self.node_status(h.name).get("policy_synced")]
            return len(synced) == len(HOSTS), f"policy synced on {len(synced)}/{len(HOSTS)} hosts"

        self.wait("the policy dataplane", probe, timeout)

    # -- pings ---------------------------------------------------------------------------------

    @staticmethod
    def ping(src: PodSpec, ip: str) -> bool:
        # Two probes: one lost packet on a busy machine must not read as "denied".
        argv = ["ping", "-n", "-q", "-c", "2", "-i", "0.2", "-W", "1", ip]
        return sh(in_ns(src.ns, argv), check=False, timeout=15).returncode == 0

    def _pairs(self) -> list[tuple[PodSpec, PodSpec]]:
        return [(s, d) for s in PODS for d in PODS if s is not d]

    def wait_reachable(self, outcome: Outcome, timeout: float = 60.0) -> None:
        """Until every pair the policy allows answers: routes and VXLAN are in place."""
        pending = [(s, d) for s, d in self._pairs() if expected_allowed(s, d)]
        total = len(pending)

        def probe() -> tuple[bool, str]:
            nonlocal pending
            with ThreadPoolExecutor(max_workers=8) as pool:
                ok = list(pool.map(lambda p: self.ping(p[0], outcome.ips[p[1].label]), pending))
            pending = [p for p, reached in zip(pending, ok, strict=True) if not reached]
            return not pending, f"{total - len(pending)}/{total} allowed pairs answer"

        self.wait("the routes between the allowed pods", probe, timeout)

    def measure(self, outcome: Outcome) -> None:
        """The matrix, every pair pinged once more now that the cluster has converged."""
        pairs = self._pairs()
        with ThreadPoolExecutor(max_workers=8) as pool:
            ok = list(pool.map(lambda p: self.ping(p[0], outcome.ips[p[1].label]), pairs))
        for (src, dst), reached in zip(pairs, ok, strict=True):
            outcome.matrix[(src.label, dst.label)] = reached

    # -- what to show --------------------------------------------------------------------------

    def collect(self, outcome: Outcome) -> None:
        for host in HOSTS:
            outcome.status[host.name] = self.node_status(host.name)
            outcome.routes[host.name] = host_routes(host.ns)

    def run(self) -> Outcome:
        """Nodes, sessions, pods, policy, pings: the whole scenario after build() and apply()."""
        outcome = Outcome()
        self.step("starting `routemesh node run` on each host; waiting for the full BGP mesh")
        self.start_nodes()
        self.wait_sessions()
        self.step("creating the tenants' pods through the routemesh-cni plugin")
        self.add_pods(outcome)
        self.step("waiting for the policy, and for the pods the policy allows to reach each other")
        self.wait_policy()
        self.wait_reachable(outcome)
        self.step(f"pinging every pair of pods ({len(self._pairs())} pairs)")
        self.measure(outcome)
        self.collect(outcome)
        return outcome


def host_routes(ns: str) -> list[str]:
    """`ip route` of a host, only what routemesh wrote: proto 80 (BGP: blocks, blackholes,
    tunnel routes) and 81 (workload /32s)."""
    lines = sh(["ip", "-n", ns, "route", "show"], check=False).stdout.splitlines()
    return [ln.rstrip() for ln in lines if " proto 80 " in f"{ln} " or " proto 81 " in f"{ln} "]
