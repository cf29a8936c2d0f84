"""A real Prometheus scrapes our metrics endpoints while a real BGP session runs between them.

The feeder (prometheus_feeder.py) runs two of our speakers in one process on loopback, each
with its own registry and port; Prometheus scrapes both every second, and the test asks
Prometheus's HTTP API (`/api/v1/query`), not our endpoint, for the values.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.lab.require import require_binary
from tests.lab.waiting import wait_for

ROOT = Path(__file__).resolve().parents[2]
V4, V6, WITHDRAWN = 20, 5, 5
ALERTS = ROOT / "configs" / "prometheus" / "routemesh-alerts.yml"
FEEDER = (sys.executable, "-m", "tests.integration.prometheus_feeder")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()
    except (urllib.error.URLError, ConnectionError, TimeoutError) as err:
        return 0, str(err)


class Feeder:
    def __init__(self, tmp: Path) -> None:
        self.notify_path = str(tmp / "notify.sock")
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(self.notify_path)
        self.notify.setblocking(False)
        self.log = open(tmp / "feeder.log", "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [*FEEDER, "--v4", str(V4), "--v6", str(V6)],
            cwd=ROOT,
            env={**os.environ, "NOTIFY_SOCKET": self.notify_path},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
        )
        self.ports = json.loads(self.proc.stdout.readline())

    def send(self, line: str) -> None:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline().strip() == "ok"

    def notifications(self) -> list[str]:
        out = []
        while True:
            try:
                out.append(self.notify.recv(4096).decode())
            except BlockingIOError:
                return out

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.notify.close()
        self.log.close()


class Prometheus:
    def __init__(self, binary: str, tmp: Path, targets: list[str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = tmp / "prometheus.yml"
        # JSON is YAML; one job, both speakers, scraped every second.
        config.write_text(
            json.dumps(
                {
                    "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                    # The shipped alert rules, evaluated against the live metrics.
                    "rule_files": [str(ALERTS)],
                    "scrape_configs": [
                        {"job_name": "routemesh", "static_configs": [{"targets": targets}]}
                    ],
                }
            )
        )
        self.log = open(tmp / "prometheus.log", "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        wait_for(
            lambda: self.proc.poll() is not None or http_get(self.url + "/-/ready")[0] == 200,
            timeout=60,
            what="Prometheus ready",
        )
        if self.proc.poll() is not None:
            raise RuntimeError(f"prometheus exited: {(tmp / 'prometheus.log').read_text()}")

    def query(self, expr: str) -> dict[str, float]:
        """Instant query; {instance + labels: value}."""
        status, body = http_get(
            self.url + "/api/v1/query?" + urllib.parse.urlencode({"query": expr})
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
        """{peer: state} of the active (pending or firing) alerts called `name`."""
        status, body = http_get(self.url + "/api/v1/alerts")
        assert status == 200, body
        return {
            a["labels"].get("instance", "") + " " + a["labels"].get("peer", ""): a["state"]
            for a in json.loads(body)["data"]["alerts"]
            if a["labels"]["alertname"] == name
        }

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


@pytest.fixture
def feeder(tmp_path: Path) -> Iterator[Feeder]:
    f = Feeder(tmp_path)
    yield f
    f.stop()


@pytest.fixture
def prometheus(tmp_path: Path, feeder: Feeder) -> Iterator[Prometheus]:
    binary = require_binary("prometheus")
    targets = [f"127.0.0.1:{feeder.ports['a']}", f"127.0.0.1:{feeder.ports['b']}"]
    p = Prometheus(binary, tmp_path, targets)
    yield p
    p.stop()


def test_prometheus_scrapes_session_gauge_and_prefix_counts(feeder: Feeder, prometheus: Prometheus):
    a = f"127.0.0.1:{feeder.ports['a']}"
    b = f"127.0.0.1:{feeder.ports['b']}"

    # Before the sessions start: both targets are up, neither is ready, nobody is Established.
    wait_for(
        lambda: prometheus.query("up") == {f"instance={a}": 1, f"instance={b}": 1},
        timeout=30,
        what="both targets scraped",
        describe=lambda: str(prometheus.query("up")),
    )
    for port in (feeder.ports["a"], feeder.ports["b"]):
        status, body = http_get(f"http://127.0.0.1:{port}/readyz")
        assert status == 503 and "[-]bgp-sessions" in body
    established = 'routemesh_bgp_session_state{state="Established"}'
    assert set(prometheus.query(established).values()) == {0.0}
    assert feeder.notifications() == []
    down = "RoutemeshBGPSessionDown"
    both_pending = {f"{a} 127.0.0.2": "pending", f"{b} 127.0.0.1": "pending"}
    wait_for(
        lambda: prometheus.alerts(down) == both_pending,
        timeout=30,
        what="the shipped session-down alert pending for both idle sessions",
        describe=lambda: str(prometheus.alerts(down)),
    )

    feeder.send("start")
    want = {f"instance={a},peer=127.0.0.2": 1.0, f"instance={b},peer=127.0.0.1": 1.0}
    wait_for(
        lambda: _strip(prometheus.query(established + " == 1")) == want,
        timeout=30,
        what="Prometheus sees both sessions Established",
        describe=lambda: str(prometheus.query(established)),
    )
    for port in (feeder.ports["a"], feeder.ports["b"]):
        assert http_get(f"http://127.0.0.1:{port}/readyz") == (200, "readyz check passed\n")
    assert feeder.notifications() == ["READY=1\nSTATUS=2/2 BGP sessions Established"]

    received = "routemesh_bgp_prefixes_received"
    expected = {
        f"family=ipv4-unicast,instance={b},peer=127.0.0.1": float(V4),
        f"family=ipv6-unicast,instance={b},peer=127.0.0.1": float(V6),
        f"family=ipv4-unicast,instance={a},peer=127.0.0.2": 3.0,
        f"family=ipv6-unicast,instance={a},peer=127.0.0.2": 1.0,
    }
    wait_for(
        lambda: prometheus.query(received) == expected,
        timeout=30,
        what="prefix counts in Prometheus",
        describe=lambda: str(prometheus.query(received)),
    )
    advertised = prometheus.query(f'routemesh_bgp_prefixes_advertised{{instance="{a}"}}')
    assert advertised == {
        f"family=ipv4-unicast,instance={a},peer=127.0.0.2": float(V4),
        f"family=ipv6-unicast,instance={a},peer=127.0.0.2": float(V6),
    }
    assert prometheus.query("sum(routemesh_bgp_session_establishments_total)") == {"": 2.0}

    # A withdraws some prefixes: the count B reports, as Prometheus stores it, drops.
    feeder.send(f"withdraw {WITHDRAWN}")
    v4_at_b = f'{received}{{instance="{b}",family="ipv4-unicast"}}'
    wait_for(
        lambda: (
            prometheus.query(v4_at_b)
            == {f"family=ipv4-unicast,instance={b},peer=127.0.0.1": float(V4 - WITHDRAWN)}
        ),
        timeout=30,
        what="the withdrawal reaches Prometheus",
        describe=lambda: str(prometheus.query(v4_at_b)),
    )
    withdrawn = prometheus.query(
        f'routemesh_bgp_prefix_updates_received_total{{instance="{b}",type="withdraw",'
        'family="ipv4-unicast"}'
    )
    assert list(withdrawn.values()) == [float(WITHDRAWN)]
    # The uptime gauge is exported and positive for a live session.
    uptimes = prometheus.query("routemesh_bgp_session_uptime_seconds > 0")
    assert len(uptimes) == 2
    wait_for(
        lambda: prometheus.alerts(down) == {},
        timeout=30,
        what="no session-down alert while both sessions are up",
        describe=lambda: str(prometheus.alerts(down)),
    )

    # A ends the session: both sides count a flap, and the alert is pending again.
    feeder.send("stop")
    wait_for(
        lambda: prometheus.alerts(down) == both_pending,
        timeout=30,
        what="the session-down alert after a Cease",
        describe=lambda: str(prometheus.alerts(down)),
    )
    flaps = prometheus.query("routemesh_bgp_session_flaps_total")
    assert set(flaps.values()) == {1.0}, flaps
    cease = prometheus.query('routemesh_bgp_last_notification_code{type="received"}')
    assert cease == {f"instance={b},peer=127.0.0.1,type=received": 6.0}, cease


def _strip(result: dict[str, float]) -> dict[str, float]:
    """Drop the state label, which the query pins anyway."""
    return {k.replace(",state=Established", ""): v for k, v in result.items()}
