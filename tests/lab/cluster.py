"""A routemesh cluster in the lab: host namespaces on bridged subnets joined by a router
namespace, one shared datastore, `routemesh node run` on each host, and pods made through the
real CNI plugin or `routemesh endpoint add`.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.lab.netns import Lab, Netns
from tests.lab.require import missing
from tests.lab.waiting import wait_for

BIN = Path(sys.executable).parent


def _bin(name: str) -> str:
    path = BIN / name
    if not os.access(path, os.X_OK):
        missing(f"{path} not installed (pip install -e .)")
    return str(path)


@dataclass
class Host:
    name: str
    ns: Netns
    address: str  # with its prefix length
    proc: Any = None
    log: Path | None = None

    @property
    def ip(self) -> str:
        return self.address.split("/")[0]


@dataclass
class Pod:
    name: str
    namespace: str
    host: str
    ns: Netns
    ip: str
    container_id: str = ""


@dataclass
class Cluster:
    """Hosts, pods and the commands that drive them; everything dies with the Lab."""

    lab: Lab
    datastore: str | None = None
    hold_time: int = 9
    hosts: dict[str, Host] = field(default_factory=dict)
    pods: dict[str, Pod] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.tmp = self.lab.tmpdir("cluster")
        if self.datastore is None:
            self.datastore = f"sqlite://{self.tmp}/store.db"
        self.run_dir = self.tmp / "run"
        self.run_dir.mkdir()
        self.router = self.lab.netns(forwarding=True)
        self._segments: dict[str, str] = {}

    # -- topology ----------------------------------------------------------------------------

    def segment(self, bridge: str, gateway: str) -> None:
        """An L2 subnet on the router: a bridge whose address is every host's default gateway."""
        self.router.ip("link", "add", bridge, "type", "bridge")
        self.router.ip("link", "set", bridge, "type", "bridge", "stp_state", "0")
        self.router.ip("link", "set", bridge, "type", "bridge", "forward_delay", "0")
        self.router.add_address(bridge, gateway)
        self.router.link_up(bridge)
        self._segments[bridge] = gateway.split("/")[0]

    def host(self, name: str, address: str, bridge: str = "br0") -> Host:
        """A host namespace on ``bridge`` with ``address`` and a default route via the router.

        The default route matters: proxy ARP answers a pod's ARP for 169.254.1.1 only when the
        host has a route to that address, as every real host does.
        """
        ns = self.lab.netns(forwarding=True)
        self.lab.bridge([ns], [address], hub=self.router, bridge_name=bridge)
        ns.ip("route", "add", "default", "via", self._segments[bridge])
        host = Host(name, ns, address)
        self.hosts[name] = host
        return host

    # -- datastore ---------------------------------------------------------------------------

    def routemesh(self, *args: str, ns: Netns | None = None, check: bool = True) -> Any:
        """The CLI, run in ``ns`` or else in the router, which reaches every underlay address
        (an etcd in the lab listens on the underlay, not on the host's loopback)."""
        return (ns or self.router).run([_bin("routemesh"), *args], check=check, timeout=60)

    def apply(self, manifest: str) -> None:
        path = self.tmp / f"manifest-{abs(hash(manifest))}.yaml"
        path.write_text(manifest)
        self.routemesh("apply", "-f", str(path), "--datastore", str(self.datastore))

    def delete(self, manifest: str) -> None:
        path = self.tmp / f"manifest-{abs(hash(manifest))}.yaml"
        path.write_text(manifest)
        self.routemesh("delete", "-f", str(path), "--datastore", str(self.datastore))

    # -- nodes -------------------------------------------------------------------------------

    def start(
        self,
        name: str,
        *extra: str,
        env: dict[str, str] | None = None,
        log_level: str | None = "debug",
    ) -> Host:
        """Run ``routemesh node run`` on host ``name``; ``log_level=None`` leaves the level to
        BGPConfiguration logSeverityScreen."""
        host = self.hosts[name]
        host.log = self.tmp / f"node-{name}.log"
        argv = [
            _bin("routemesh"),
            "node",
            "run",
            "--name",
            name,
            "--ip",
            host.address,
            "--datastore",
            str(self.datastore),
            "--run-dir",
            str(self.run_dir),
            "--hold-time",
            str(self.hold_time),
            "--resync-interval",
            "5",
            "--mtu-file",
            str(self.tmp / f"mtu-{name}"),
            *(["--log-level", log_level] if log_level else []),
            *extra,
        ]
        host.proc = host.ns.popen(argv, log=host.log, env=env)
        return host

    def stop(self, name: str, *, kill9: bool = False) -> int | None:
        host = self.hosts[name]
        if host.proc is None:
            return None
        code = self.lab.kill9(host.proc) if kill9 else self.lab.kill(host.proc)
        host.proc = None
        return code

    def log_text(self, name: str) -> str:
        log = self.hosts[name].log
        return log.read_text(errors="replace") if log is not None and log.exists() else ""

    def status(self, name: str) -> dict[str, Any]:
        res = self.routemesh(
            "node",
            "status",
            "--node",
            name,
            "--run-dir",
            str(self.run_dir),
            "-o",
            "json",
            check=False,
        )
        if res.returncode != 0:
            return {}
        return json.loads(res.stdout)

    def established(self, name: str) -> set[str]:
        return {r["peer"] for r in self.status(name).get("bgp", []) if r["state"] == "Established"}

    def wait_peers(self, name: str, peers: set[str], timeout: float = 60.0) -> None:
        wait_for(
            lambda: self.established(name) == peers,
            timeout=timeout,
            what=f"{name} Established with exactly {sorted(peers)}",
            describe=lambda: f"{self.status(name)}\n{self.log_text(name)[-3000:]}",
        )

    def routes(self, name: str) -> list[dict[str, Any]]:
        res = self.hosts[name].ns.run(["ip", "-j", "route", "show", "table", "main"])
        return json.loads(res.stdout or "[]")

    # -- pods --------------------------------------------------------------------------------

    def cni_conf(self, host: str) -> dict[str, Any]:
        return {
            "cniVersion": "1.0.0",
            "name": "k8s-pod-network",
            "type": "routemesh-cni",
            "datastore": self.datastore,
            "nodename": host,
            "mtu": 0,
            "mtu_file": str(self.tmp / f"mtu-{host}"),
            "ipam": {"type": "routemesh-cni"},
        }

    def cni(
        self,
        command: str,
        host: str,
        pod_ns: Netns,
        container_id: str,
        namespace: str,
        name: str,
        conf_extra: dict[str, Any] | None = None,
    ) -> Any:
        conf = {**self.cni_conf(host), **(conf_extra or {})}
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": container_id,
            "CNI_IFNAME": "eth0",
            "CNI_NETNS": f"/var/run/netns/{pod_ns.name}",
            "CNI_PATH": "/usr/lib/cni",
            "CNI_ARGS": f"K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={name}",
        }
        return self.hosts[host].ns.run(
            [_bin("routemesh-cni")], input=json.dumps(conf), env=env, check=False, timeout=60
        )

    def pod(
        self,
        host: str,
        name: str,
        namespace: str = "default",
        *,
        labels: dict[str, str] | None = None,
        conf_extra: dict[str, Any] | None = None,
        via: str = "cni",
        ip: str | None = None,
    ) -> Pod:
        """A pod on ``host`` through the CNI plugin (or ``routemesh endpoint add``)."""
        pod_ns = self.lab.netns(forwarding=False)
        if via == "cni":
            extra = dict(conf_extra or {})
            if labels:
                extra.setdefault("args", {}).setdefault("cni", {})["labels"] = [
                    {"key": k, "value": v} for k, v in labels.items()
                ]
            if ip:
                extra.setdefault("args", {}).setdefault("cni", {})["ips"] = [ip]
            cid = f"{namespace}-{name}"
            res = self.cni("ADD", host, pod_ns, cid, namespace, name, extra)
            assert res.returncode == 0, res.stdout + res.stderr
            address = json.loads(res.stdout)["ips"][0]["address"].split("/")[0]
        else:
            cid = ""
            args = ["endpoint", "add", "--datastore", str(self.datastore), "--node", host]
            args += ["--netns", pod_ns.name, "--namespace", namespace, "--name", name]
            args += ["--mtu", "1450", "-o", "json"]
            if labels:
                args += ["--labels", ",".join(f"{k}={v}" for k, v in labels.items())]
            if ip:
                args += ["--ip", ip]
            res = self.routemesh(*args, ns=self.hosts[host].ns)
            address = json.loads(res.stdout)["addresses"][0].split("/")[0]
        pod = Pod(name, namespace, host, pod_ns, address, cid)
        self.pods[f"{namespace}/{name}"] = pod
        return pod

    def wait_ping(self, src: Pod, dst: Pod, timeout: float = 30.0) -> None:
        wait_for(
            lambda: src.ns.ping(dst.ip, timeout=1),
            timeout=timeout,
            what=f"{src.name}@{src.host} to ping {dst.name}@{dst.host} ({dst.ip})",
            describe=lambda: "\n".join(
                f"{n}: {self.hosts[n].ns.run(['ip', 'route']).stdout}" for n in self.hosts
            ),
        )
