"""A real Prometheus scrapes two running `routemesh node run` hosts in a full mesh.

The hosts live in namespaces on one bridge (tests/lab/cluster.py); Prometheus runs in the
router namespace, which reaches both nodes' 198.18.0.x addresses, scrapes their port 9091
every second and evaluates the shipped alert rules. The test asks Prometheus's HTTP API
(`/api/v1/query`, `/api/v1/alerts`), not our endpoint, for the values: the established-session
gauge, the prefix counts for one block per node, and what a stopped node leaves behind.
"""

from __future__ import annotations

import json
import os
import urllib.parse
from pathlib import Path

import pytest

from tests.integration.test_health_bgpd import NotifySocket
from tests.lab.cluster import Cluster
from tests.lab.netns import Lab, Netns
from tests.lab.require import require_binary, require_root
from tests.lab.waiting import wait_for

pytestmark = pytest.mark.root

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "configs" / "prometheus" / "routemesh-alerts.yml"
PORT = 9091
PROM_PORT = 9090

POOL = """
apiVersion: projectcalico.org/v3
kind: IPPool
metadata: {name: pool1}
spec: {cidr: 10.244.0.0/16, blockSize: 26, vxlanMode: Never, natOutgoing: false}
---
# host2 is known before it runs, as after a reboot: host1 must peer with it and wait.
apiVersion: projectcalico.org/v3
kind: Node
metadata: {name: host2}
spec: {bgp: {ipv4Address: 198.18.0.3/24}}
"""


def http_get(ns: Netns, url: str) -> tuple[int, str]:
    """GET from inside ``ns`` (the test process cannot reach the namespaces' addresses)."""
    res = ns.run(["curl", "-s", "-m", "5", "-w", "\n%{http_code}", url], check=False, timeout=15)
    body, _, code = res.stdout.rpartition("\n")
    return (int(code) if code.isdigit() else 0), body


class Prometheus:
    """Debian's prometheus in ``ns``, scraping ``targets`` every second."""

    def __init__(self, lab: Lab, ns: Netns, binary: str, targets: list[str]) -> None:
        self.ns = ns
        self.url = f"http://127.0.0.1:{PROM_PORT}"
        tmp = lab.tmpdir("prometheus")
        config = tmp / "prometheus.yml"
        # JSON is YAML: one job, every node, and the shipped alert rules.
        config.write_text(
            json.dumps(
                {
                    "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                    "rule_files": [str(ALERTS)],
                    "scrape_configs": [
                        {"job_name": "routemesh", "static_configs": [{"targets": targets}]}
                    ],
                }
            )
        )
        self.log = tmp / "prometheus.log"
        self.proc = ns.popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{PROM_PORT}",
            ],
            log=self.log,
        )
        wait_for(
            lambda: self.proc.poll() is not None or http_get(ns, self.url + "/-/ready")[0] == 200,
            timeout=60,
            what="Prometheus ready",
        )
        if self.proc.poll() is not None:
            raise RuntimeError(f"prometheus exited: {self.log.read_text()}")

    def query(self, expr: str) -> dict[str, float]:
        """Instant query: {'instance=…,label=…': value}, without job and __name__."""
        status, body = http_get(
            self.ns, self.url + "/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        )
        assert status == 200, body
        data = json.loads(body)
        assert data["status"] == "success", data
        out = {}
        for row in data["data"]["result"]:
            labels = row["metric"]
            key = ",".join(
                f"{k}={labels[k]}" for k in sorted(labels) if k not in ("job", "__name__")
            )
            out[key] = float(row["value"][1])
        return out

    def alerts(self, name: str) -> dict[str, str]:
        """{'instance peer': state} of the active alerts called ``name``."""
        status, body = http_get(self.ns, self.url + "/api/v1/alerts")
        assert status == 200, body
        return {
            a["labels"].get("instance", "") + " " + a["labels"].get("peer", ""): a["state"]
            for a in json.loads(body)["data"]["alerts"]
            if a["labels"]["alertname"] == name
        }


def test_prometheus_scrapes_two_mesh_nodes(lab: Lab) -> None:
    require_root()
    binary = require_binary("prometheus")
    require_binary("curl")
    cluster = Cluster(lab)
    cluster.segment("br0", "198.18.0.1/24")
    h1 = cluster.host("host1", "198.18.0.2/24")
    h2 = cluster.host("host2", "198.18.0.3/24")
    cluster.apply(POOL)
    a, b = f"{h1.ip}:{PORT}", f"{h2.ip}:{PORT}"
    prom = Prometheus(lab, cluster.router, binary, [a, b])

    # host1 alone, as systemd runs it: scraped, but not ready while its only session cannot
    # come up, so no READY=1 yet.
    notify = NotifySocket(cluster.tmp / "notify.sock")
    lab.on_cleanup(notify.close)
    env = {**os.environ, "NOTIFY_SOCKET": notify.path}
    cluster.start("host1", "--metrics-port", str(PORT), env=env)
    wait_for(
        lambda: prom.query("up") == {f"instance={a}": 1.0, f"instance={b}": 0.0},
        timeout=60,
        what="host1 scraped, host2 not yet",
        describe=lambda: f"{prom.query('up')}\n{cluster.log_text('host1')[-2000:]}",
    )
    status, body = http_get(cluster.router, f"http://{a}/readyz")
    assert status == 503 and "[-]bgp-sessions failed: 0/1 BGP sessions Established" in body
    established = 'routemesh_bgp_session_state{state="Established"}'
    assert prom.query(established) == {f"instance={a},peer={h2.ip},state=Established": 0.0}
    sent = notify.fields()
    assert sent and not any("READY" in m for m in sent), sent
    assert sent[0]["STATUS"].startswith("waiting for bgp-sessions"), sent

    cluster.start("host2", "--metrics-port", str(PORT))
    cluster.wait_peers("host1", {h2.ip})
    cluster.wait_peers("host2", {h1.ip})
    # One block each: a pod through the CNI plugin makes the host claim it.
    cluster.pod("host1", "web-1")
    cluster.pod("host2", "web-2")
    want_up = {
        f"instance={a},peer={h2.ip},state=Established": 1.0,
        f"instance={b},peer={h1.ip},state=Established": 1.0,
    }
    wait_for(
        lambda: prom.query(established) == want_up,
        timeout=60,
        what="Prometheus sees both sessions Established",
        describe=lambda: str(prom.query(established)),
    )
    one_each = {
        f"family=ipv4-unicast,instance={a},peer={h2.ip}": 1.0,
        f"family=ipv4-unicast,instance={b},peer={h1.ip}": 1.0,
    }
    for name in ("received", "accepted", "advertised"):
        expr = f'routemesh_bgp_prefixes_{name}{{family="ipv4-unicast"}}'
        wait_for(
            lambda expr=expr: prom.query(expr) == one_each,
            timeout=60,
            what=f"{expr}: each node holds the other's block",
            describe=lambda expr=expr: str(prom.query(expr)),
        )
    blocks = {f"instance={a}": 1.0, f"instance={b}": 1.0}
    assert prom.query("routemesh_ipam_blocks") == blocks
    # The Loc-RIB holds both blocks; the kernel our block's blackhole and the other's route.
    wait_for(
        lambda: (
            prom.query('routemesh_rib_routes{family="ipv4-unicast"}')
            == {f"family=ipv4-unicast,instance={a}": 2.0, f"family=ipv4-unicast,instance={b}": 2.0}
        ),
        timeout=30,
        what="two IPv4 routes in each Loc-RIB",
        describe=lambda: str(prom.query("routemesh_rib_routes")),
    )
    wait_for(
        lambda: prom.query("routemesh_fib_in_sync") == {f"instance={a}": 1.0, f"instance={b}": 1.0},
        timeout=30,
        what="both FIBs in sync",
        describe=lambda: str(prom.query("routemesh_fib_in_sync")),
    )
    assert prom.query('routemesh_fib_routes{family="ipv4-unicast"}') == {
        f"family=ipv4-unicast,instance={a}": 2.0,
        f"family=ipv4-unicast,instance={b}": 2.0,
    }
    wait_for(
        lambda: prom.query("routemesh_agent_endpoints") == blocks,
        timeout=30,
        what="one endpoint on each host in the agent metrics",
        describe=lambda: str(prom.query("routemesh_agent_endpoints")),
    )
    # Pool usage follows the block writes of the whole cluster: one pod on each host.
    in_use = {f"instance={a},pool=pool1": 2.0, f"instance={b},pool=pool1": 2.0}
    wait_for(
        lambda: prom.query("routemesh_ipam_addresses_in_use") == in_use,
        timeout=30,
        what="two addresses in use in pool1, seen from both nodes",
        describe=lambda: str(prom.query("routemesh_ipam_addresses_in_use")),
    )
    free = prom.query("routemesh_ipam_addresses_free")
    assert free == {k: 65536.0 - 2 for k in in_use}, free
    puts = prom.query('routemesh_datastore_watch_events_total{type="put"}')
    assert len(puts) == 2 and min(puts.values()) >= 1, puts
    wait_for(
        lambda: prom.query("routemesh_datastore_watch_lag_revisions") == {
            f"instance={a}": 0.0, f"instance={b}": 0.0
        },
        timeout=30,
        what="both nodes' watches caught up with the store",
        describe=lambda: str(prom.query("routemesh_datastore_watch_lag_revisions")),
    )  # fmt: skip
    restores = prom.query('routemesh_agent_restore_calls_total{type="iptables"}')
    assert set(restores) == {f"instance={a},type=iptables", f"instance={b},type=iptables"}
    assert min(restores.values()) >= 1, restores
    assert prom.query("sum(routemesh_bgp_session_establishments_total)") == {"": 2.0}
    for target in (a, b):
        status, body = http_get(cluster.router, f"http://{target}/readyz?verbose")
        assert status == 200, body
        assert "[+]bgp-sessions ok" in body and "[+]fib-synced ok" in body, body
        assert "[+]dataplane-synced ok" in body, body
    ready = [m for m in notify.fields() if m.get("READY") == "1"]
    assert [m["STATUS"] for m in ready] == ["ready: 1/1 BGP sessions Established"], ready
    down = "RoutemeshBGPSessionDown"
    assert prom.alerts(down) == {}

    # host2 stops (SIGTERM: a Cease to host1). host1's series say why, and the shipped
    # session-down alert goes pending for that peer.
    cluster.stop("host2")
    wait_for(
        lambda: prom.alerts(down) == {f"{a} {h2.ip}": "pending"},
        timeout=60,
        what="the session-down alert pending on host1",
        describe=lambda: str(prom.alerts(down)),
    )
    flaps = prom.query(f'routemesh_bgp_session_flaps_total{{instance="{a}"}}')
    assert flaps == {f"instance={a},peer={h2.ip}": 1.0}, flaps
    cease = prom.query(f'routemesh_bgp_last_notification_code{{instance="{a}"}}')
    assert cease == {f"instance={a},peer={h2.ip},type=received": 6.0}, cease
    # Nodes speak graceful restart: host1 keeps host2's block (stale) for the restart time, so
    # pods there stay reachable through a node restart, and the gauge says so.
    accepted = prom.query(f'routemesh_bgp_prefixes_accepted{{instance="{a}"}}')
    assert accepted == {f"family=ipv4-unicast,instance={a},peer={h2.ip}": 1.0}, accepted
    assert prom.query("up") == {f"instance={a}": 1.0, f"instance={b}": 0.0}
    cluster.stop("host1")
    assert any(m.get("STOPPING") == "1" for m in notify.fields()), notify.received
