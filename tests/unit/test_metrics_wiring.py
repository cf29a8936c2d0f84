"""The daemon-side wiring of metrics, readiness and sd_notify: config keys, the `fib-synced`
latch and FIB counters, sd_notify messages, and the node's restore-run counting."""

from __future__ import annotations

import ipaddress
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from agent.node_metrics import NodeMetrics, _restore_kind, newest_revision
from bgpd.config import ConfigError, parse_config
from bgpd.datastore.base import WatchEvent
from bgpd.datastore.memory import MemoryDatastore
from bgpd.dynamic import DynamicDaemon
from bgpd.health import DATAPLANE_SYNCED, FIB_SYNCED
from bgpd.model import from_dict
from ipam.block import Block
from ipam.keys import block_key

BASE = """
[global]
asn = 64512
router-id = "198.18.0.1"
control-socket = "/nonexistent/bgpd.sock"
"""


def test_metrics_port_is_off_unless_set_and_both_keys_are_checked() -> None:
    gl = parse_config(BASE).global_
    assert (gl.metrics_address, gl.metrics_port) == ("0.0.0.0", 0)
    gl = parse_config(BASE + 'metrics-port = 9091\nmetrics-address = "::1"\n').global_
    assert (gl.metrics_address, gl.metrics_port) == ("::1", 9091)
    with pytest.raises(ConfigError, match=r"global\.metrics-port: must be between 0 and 65535"):
        parse_config(BASE + "metrics-port = 70000\n")
    with pytest.raises(ConfigError, match=r"global\.metrics-address: 'localhost' is not an IP"):
        parse_config(BASE + 'metrics-address = "localhost"\n')
    with pytest.raises(ConfigError, match=r"global\.metrics-port: must be an integer"):
        parse_config(BASE + 'metrics-port = "9091"\n')


class FakeFib:
    """The FibManager attributes the observer reads."""

    def __init__(self) -> None:
        self.on_batch = None
        self.is_converged = False
        self.last_sync_time: float | None = None
        self.routes_installed = 0
        self.in_sync = False
        self.netlink_errors = 0
        self.repairs_by_type = {"added": 0, "removed": 0, "replaced": 0}

    def routes_by_family(self) -> dict[int, int]:
        return {4: self.routes_installed, 6: 0}


def daemon(extra: str = "") -> DynamicDaemon:
    return DynamicDaemon(parse_config(BASE + extra))


def test_fib_synced_waits_for_convergence_and_first_sync_then_stays() -> None:
    d = daemon()
    fib = FakeFib()
    d.observer.attach_fib(fib)  # type: ignore[arg-type]
    d.observer.refresh()
    assert d.observer.readiness.failing() == [FIB_SYNCED]
    assert "waiting for initial BGP convergence" in d.observer.readiness.report()
    fib.is_converged = True
    d.observer.refresh()
    assert "first sync with the kernel in progress" in d.observer.readiness.report()
    fib.last_sync_time, fib.routes_installed, fib.in_sync = 1000.0, 3, True
    d.observer.refresh()
    assert d.observer.readiness.ready  # no neighbor configured: bgp-sessions holds too
    # Later work in progress shows in fib_in_sync, not in readiness.
    fib.in_sync = False
    d.observer.refresh()
    assert d.observer.readiness.ready
    m = d.observer.metrics
    fib.repairs_by_type["added"] = 2
    fib.netlink_errors = 1
    fib.on_batch(0.003)  # type: ignore[misc]
    d.observer.export_daemon()
    d.observer.export_daemon()  # counters are copied as deltas, never twice
    assert m.value("routemesh_fib_in_sync") == 0
    assert m.value("routemesh_fib_routes", {"family": "ipv4-unicast"}) == 3
    assert m.value("routemesh_fib_reconcile_repairs_total", {"type": "added"}) == 2
    assert m.value("routemesh_fib_netlink_errors_total") == 1
    assert m.value("routemesh_fib_apply_duration_seconds_count") == 1
    assert m.value("routemesh_fib_last_sync_timestamp_seconds") == 1000.0


def test_a_reflector_without_fib_has_no_fib_series() -> None:
    d = daemon('cluster-id = "244.0.0.1"\n')
    assert d.observer.metrics.fib is None
    assert "routemesh_fib_" not in d.observer.metrics.render().decode()


async def test_sd_notify_status_while_waiting_then_ready_then_stopping(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = str(tmp_path / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.setblocking(False)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    d = daemon()
    fib = FakeFib()
    d.observer.attach_fib(fib)  # type: ignore[arg-type]
    assert await d.observer.start("127.0.0.1", 0)
    try:
        assert d.observer.server is None  # port 0: no HTTP server
        assert sock.recv(4096) == b"STATUS=waiting for fib-synced"
        fib.is_converged, fib.last_sync_time = True, 1.0
        d.observer.refresh()
        assert sock.recv(4096) == b"READY=1\nSTATUS=ready: no BGP neighbors configured"
        d.observer.stopping()
        assert sock.recv(4096).startswith(b"STOPPING=1\n")
    finally:
        await d.observer.close()
        sock.close()


def test_restore_kind() -> None:
    assert _restore_kind(["iptables-nft-restore", "--noflush"]) == "iptables"
    assert _restore_kind(["/usr/sbin/ip6tables-nft-restore"]) == "iptables"
    assert _restore_kind(["ipset", "restore", "-exist"]) == "ipset"
    assert _restore_kind(["iptables-nft-save"]) is None
    assert _restore_kind(["ipset", "save"]) is None
    assert _restore_kind([]) is None


def test_node_counts_restores_and_their_failures_and_waits_for_policy() -> None:
    d = daemon()
    nm = NodeMetrics(d, None, policy_enabled=True, ipam=None, blocks=lambda: [1, 2])
    assert d.observer is nm.observer
    codes = iter([0, 1, 0])

    def fake(argv, stdin):  # type: ignore[no-untyped-def]
        return subprocess.CompletedProcess(list(argv), next(codes), "", "")

    run = nm.counting_runner(fake)
    run(["iptables-nft-restore", "--noflush"], "*filter\nCOMMIT\n")
    run(["ipset", "restore", "-exist"], "create x hash:net\n")
    run(["iptables-nft-save"], None)
    m = nm.metrics
    assert m.value("routemesh_agent_restore_calls_total", {"type": "iptables"}) == 1
    assert m.value("routemesh_agent_restore_calls_total", {"type": "ipset"}) == 1
    assert m.value("routemesh_agent_restore_errors_total", {"type": "ipset"}) == 1
    assert m.value("routemesh_agent_restore_errors_total", {"type": "iptables"}) == 0
    nm.observer.refresh()
    assert nm.observer.readiness.failing() == [DATAPLANE_SYNCED]
    nm.observer.export_daemon()
    nm.export()
    assert m.value("routemesh_ipam_blocks") == 2


def test_node_run_rejects_a_bad_metrics_port_or_address() -> None:
    for flag, value, words in (
        ("--metrics-port", "70000", "--metrics-port 70000: not a port"),
        ("--metrics-address", "somewhere", "--metrics-address 'somewhere': not an IP address"),
    ):
        res = subprocess.run(
            [sys.executable, "-m", "bgpd.cli.main", "node", "run", flag, value],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert res.returncode == 2, res.stderr
        assert words in res.stderr


async def test_pool_usage_is_read_once_then_follows_block_writes() -> None:
    pool = from_dict(
        {
            "apiVersion": "projectcalico.org/v3",
            "kind": "IPPool",
            "metadata": {"name": "pool1"},
            "spec": {"cidr": "10.244.0.0/16", "blockSize": 26},
        }
    )
    other = from_dict(
        {
            "apiVersion": "projectcalico.org/v3",
            "kind": "IPPool",
            "metadata": {"name": "pool2"},
            "spec": {"cidr": "100.64.0.0/16", "blockSize": 26},
        }
    )
    store = MemoryDatastore()
    first = Block.new(ipaddress.ip_network("10.244.0.0/26"), "host1")
    first.assign(1, "h1", None)
    await store.put(block_key(first.cidr), first.to_json())
    pools = [pool]
    nm = NodeMetrics(
        daemon(), None, policy_enabled=False, ipam=None, blocks=list, pools=lambda: pools
    )
    nm.export()
    assert nm.metrics.value("routemesh_ipam_addresses_in_use", {"pool": "pool1"}) is None
    await nm.load_blocks(store)
    nm.export()
    assert nm.metrics.value("routemesh_ipam_addresses_in_use", {"pool": "pool1"}) == 1
    assert nm.metrics.value("routemesh_ipam_addresses_free", {"pool": "pool1"}) == 65535
    # A second block with two addresses arrives through the watch; the first one goes.
    second = Block.new(ipaddress.ip_network("10.244.0.64/26"), "host2")
    second.assign(0, "h2", None)
    second.assign(5, "h3", None)
    key2 = block_key(second.cidr)
    nm.on_watch_event(WatchEvent("put", key2, second.to_json(), 10))
    nm.on_watch_event(WatchEvent("delete", block_key(first.cidr), None, 11))
    nm.on_watch_event(WatchEvent("put", key2 + "x", b"not json", 12))  # skipped, not fatal
    pools.append(other)
    nm.export()
    assert nm.metrics.value("routemesh_ipam_addresses_in_use", {"pool": "pool1"}) == 2
    assert nm.metrics.value("routemesh_ipam_addresses_in_use", {"pool": "pool2"}) == 0
    assert nm.metrics.value("routemesh_datastore_watch_events_total", {"type": "put"}) == 2
    # A pool that is deleted loses its series.
    pools.remove(pool)
    nm.export()
    assert nm.metrics.value("routemesh_ipam_addresses_in_use", {"pool": "pool1"}) is None


def test_watch_lag_counts_only_resources_we_listed() -> None:
    def node(version: str | None) -> object:
        body = {"apiVersion": "projectcalico.org/v3", "kind": "Node", "metadata": {"name": "n"}}
        if version is not None:
            body["metadata"]["resourceVersion"] = version  # type: ignore[index]
        return from_dict(body)

    assert newest_revision([None, node("12"), node("40"), node(None)]) == 40
    nm = NodeMetrics(daemon(), None, policy_enabled=False, ipam=None, blocks=list)
    nm.set_watch_lag(newest_revision([node("40")]), 37)
    assert nm.metrics.value("routemesh_datastore_watch_lag_revisions") == 3
    nm.set_watch_lag(newest_revision([node("40")]), 45)  # the watch saw newer writes
    assert nm.metrics.value("routemesh_datastore_watch_lag_revisions") == 0
