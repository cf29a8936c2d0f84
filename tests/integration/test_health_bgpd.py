"""A real `bgpd -f` as systemd's Type=notify runs it: NOTIFY_SOCKET, /readyz, /metrics.

The daemon writes its routes into the kernel ([fib] on) and has one neighbor that is not
running yet, so it cannot be ready: /readyz answers 503 naming both conditions and no READY=1
arrives. Once the neighbor starts, the session comes up, End-of-RIB ends initial convergence,
the FIB syncs, READY=1 is sent and /readyz answers 200. SIGTERM sends STOPPING=1.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest

from tests.lab.netns import Lab, Netns
from tests.lab.ours import Neighbor, RoutemeshSpeaker
from tests.lab.require import require_binary, require_root
from tests.lab.waiting import wait_for

pytestmark = pytest.mark.root

DUT, PEER = "198.18.79.1", "198.18.79.2"
ASN = 64512
PORT = 9091


def http_get(ns: Netns, url: str) -> tuple[int, str]:
    res = ns.run(["curl", "-s", "-m", "5", "-w", "\n%{http_code}", url], check=False, timeout=15)
    body, _, code = res.stdout.rpartition("\n")
    return (int(code) if code.isdigit() else 0), body


class NotifySocket:
    """What systemd listens on for a Type=notify service: a unix datagram socket."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.setblocking(False)
        self.received: list[str] = []

    def drain(self) -> list[str]:
        while True:
            try:
                self.received.append(self.sock.recv(4096).decode())
            except BlockingIOError:
                return self.received

    def fields(self) -> list[dict[str, str]]:
        return [dict(line.split("=", 1) for line in m.split("\n")) for m in self.drain()]

    def close(self) -> None:
        self.sock.close()


def start_with_notify(speaker: RoutemeshSpeaker, notify: NotifySocket) -> None:
    """`RoutemeshSpeaker.start`, with the NOTIFY_SOCKET systemd would pass."""
    speaker.conf.write_text(speaker.config_text())
    argv = [sys.executable, "-m", "bgpd.cli.main", "bgpd", "-f", str(speaker.conf)]
    env = {**os.environ, "NOTIFY_SOCKET": notify.path}
    speaker.proc = speaker.ns.popen(argv, log=speaker.log, env=env)
    wait_for(
        lambda: Path(speaker.sock).exists() or speaker.proc.poll() is not None,
        timeout=15,
        what="bgpd control socket",
    )
    assert speaker.proc.poll() is None, speaker.log_text()


def test_bgpd_not_ready_until_session_and_fib_sync_then_ready_1(lab: Lab, tmp_path: Path) -> None:
    require_root()
    require_binary("curl")
    dut_ns, peer_ns = lab.netns(), lab.netns()
    lab.veth(dut_ns, peer_ns, f"{DUT}/24", f"{PEER}/24")
    notify = NotifySocket(tmp_path / "notify.sock")
    lab.on_cleanup(notify.close)
    dut = RoutemeshSpeaker(
        lab,
        dut_ns,
        ASN,
        DUT,
        [Neighbor(PEER, ASN, hold_time=9)],
        originate=["10.244.79.0/26"],
        listen=[DUT],
        extra_global={"metrics-port": PORT, "metrics-address": DUT},
        extra_toml="[fib]\nenabled = true",
    )
    start_with_notify(dut, notify)
    base = f"http://{DUT}:{PORT}"
    wait_for(
        lambda: http_get(dut_ns, base + "/livez") == (200, "ok\n"),
        timeout=15,
        what="/livez",
        describe=dut.log_text,
    )
    status, body = http_get(dut_ns, base + "/readyz?verbose")
    assert status == 503, body
    assert "[-]bgp-sessions failed: 0/1 BGP sessions Established" in body, body
    assert "[-]fib-synced failed: waiting for initial BGP convergence" in body, body
    sent = notify.fields()
    assert not any("READY" in m for m in sent), sent
    assert any(m.get("STATUS", "").startswith("waiting for bgp-sessions") for m in sent), sent

    peer = RoutemeshSpeaker(
        lab,
        peer_ns,
        ASN,
        PEER,
        [Neighbor(DUT, ASN, hold_time=9)],
        originate=["10.244.80.0/26"],
        listen=[PEER],
        extra_toml="[fib]\nenabled = false",
    ).start()
    wait_for(
        lambda: any(m.get("READY") == "1" for m in notify.fields()),
        timeout=60,
        what="READY=1 from bgpd",
        describe=lambda: f"{notify.received}\n{dut.log_text()[-3000:]}",
    )
    ready = next(m for m in notify.fields() if m.get("READY") == "1")
    assert ready["STATUS"] == "ready: 1/1 BGP sessions Established"
    # Ready means the kernel already holds what the RIB chose: the peer's block, proto 80.
    routes = dut_ns.run(["ip", "route", "show", "proto", "80"]).stdout
    assert "10.244.80.0/26 via 198.18.79.2" in routes, routes
    status, body = http_get(dut_ns, base + "/readyz")
    assert (status, body) == (200, "readyz check passed\n")
    status, metrics = http_get(dut_ns, base + "/metrics")
    assert status == 200
    lines = set(metrics.splitlines())
    assert f'routemesh_bgp_session_state{{peer="{PEER}",state="Established"}} 1.0' in lines
    accepted = f'routemesh_bgp_prefixes_accepted{{family="ipv4-unicast",peer="{PEER}"}} 1.0'
    assert accepted in lines, metrics
    assert 'routemesh_fib_routes{family="ipv4-unicast"} 1.0' in lines, metrics
    assert "routemesh_fib_in_sync 1.0" in lines, metrics
    # A scrape never shows configuration: the peer's address is the only thing named.
    assert "password" not in metrics.lower()

    assert dut.stop() == 0
    wait_for(
        lambda: any(m.get("STOPPING") == "1" for m in notify.fields()),
        timeout=10,
        what="STOPPING=1 on SIGTERM",
        describe=lambda: str(notify.received),
    )
    peer.stop()


def test_bgpd_exits_with_a_clear_error_when_the_metrics_port_is_taken(lab: Lab) -> None:
    require_root()
    ns = lab.netns()
    ns.ip("link", "set", "lo", "up")
    blocker = ns.popen(
        [sys.executable, "-c", f"import socket,time; s=socket.socket(); "
         f"s.bind(('127.0.0.1', {PORT})); s.listen(); time.sleep(300)"]
    )  # fmt: skip
    wait_for(
        lambda: f":{PORT}" in ns.run(["ss", "-ltn"]).stdout,
        timeout=10,
        what="the port taken",
    )
    dut = RoutemeshSpeaker(
        lab,
        ns,
        ASN,
        "198.18.79.9",
        listen=["127.0.0.1"],
        listen_port=1179,
        extra_global={"metrics-port": PORT, "metrics-address": "127.0.0.1"},
        extra_toml="[fib]\nenabled = false",
    )
    dut.conf.write_text(dut.config_text())
    res = ns.run(
        [sys.executable, "-m", "bgpd.cli.main", "bgpd", "-f", str(dut.conf)],
        check=False,
        timeout=30,
    )
    lab.kill(blocker)
    assert res.returncode == 1, res.stdout + res.stderr
    assert f"cannot serve metrics on [127.0.0.1]:{PORT}" in res.stderr, res.stderr
