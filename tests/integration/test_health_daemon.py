"""The daemon's metrics and readiness over loopback, in one process (no root needed).

Two node-style speakers peer at run time; their observers' answers are read the way a scrape
reads them (`HealthServer.handle`), so the values come from the daemon's own export hook.
"""

from __future__ import annotations

import asyncio

from bgpd.config import parse_config
from bgpd.dynamic import DynamicDaemon
from bgpd.speaker.attributes import PathAttributes
from bgpd.speaker.types import prefix_from_str
from tests.integration.test_dynamic_daemon import neighbor
from tests.integration.test_rib_fib_hook import free_port, wait


def daemon(tmp_path, me: str, port: int, metrics_port: int) -> DynamicDaemon:
    cfg = parse_config(f"""
[global]
asn = 64512
router-id = "{me}"
listen-address = "{me}"
listen-port = {port}
control-socket = "{tmp_path / me}.sock"
connect-retry = 1
next-hop-ipv4 = "198.18.92.{me.rsplit(".", 1)[1]}"
metrics-address = "{me}"
metrics-port = {metrics_port}

[fib]
enabled = false
""")  # fmt: skip
    return DynamicDaemon(cfg)


def scrape(d: DynamicDaemon) -> dict[str, float]:
    server = d.observer.server
    assert server is not None
    text = server.handle("GET", "/metrics").body.decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


async def test_metrics_and_readiness_follow_the_sessions(tmp_path) -> None:
    addrs = ["127.0.0.1", "127.0.0.2"]
    ports = [free_port() for _ in addrs]
    ds = [daemon(tmp_path, a, p, free_port()) for a, p in zip(addrs, ports)]
    tasks = [asyncio.create_task(d.run()) for d in ds]
    a, b = ds
    try:
        await wait(lambda: all(d.observer.server is not None for d in ds))
        # No neighbor at all: nothing to wait for, ready (and no FIB on these).
        await wait(lambda: a.observer.readiness.ready)
        a.set_neighbors([neighbor(addrs[1], ports[1])])
        a.observer.refresh()
        assert not a.observer.readiness.ready
        assert "[-]bgp-sessions failed: 0/1 BGP sessions Established" in (
            a.observer.readiness.report()
        )
        b.set_neighbors([neighbor(addrs[0], ports[0])])
        await wait(lambda: a.observer.readiness.ready and b.observer.readiness.ready)
        fam, block = prefix_from_str("10.244.3.0/26")
        a.set_local_routes(fam, {block: PathAttributes(origin=0)})
        peer = f'peer="{addrs[0]}"'
        accepted = f'routemesh_bgp_prefixes_accepted{{family="ipv4-unicast",{peer}}}'
        await wait(lambda: scrape(b).get(accepted) == 1.0)
        got = scrape(b)
        assert got[f'routemesh_bgp_session_state{{{peer},state="Established"}}'] == 1.0
        assert got[f'routemesh_bgp_session_state{{{peer},state="Idle"}}'] == 0.0
        assert got[f"routemesh_bgp_session_establishments_total{{{peer}}}"] == 1.0
        assert got[f'routemesh_bgp_messages_received_total{{{peer},type="open"}}'] == 1.0
        assert got[f'routemesh_bgp_messages_received_total{{{peer},type="update"}}'] >= 1.0
        assert got['routemesh_rib_routes{family="ipv4-unicast"}'] == 1.0
        assert got['routemesh_rib_paths{family="ipv4-unicast"}'] == 1.0
        assert got['routemesh_rib_best_path_runs_total{family="ipv4-unicast"}'] >= 1.0
        assert got["routemesh_rib_attribute_sets"] >= 1.0
        assert not any(name.startswith("routemesh_fib_") for name in got)  # no FIB here
        at_a = scrape(a)
        advertised = f'routemesh_bgp_prefixes_advertised{{family="ipv4-unicast",peer="{addrs[1]}"}}'
        assert at_a[advertised] == 1.0
        assert at_a['routemesh_rib_routes{family="ipv4-unicast"}'] == 1.0
        # The neighbor is removed from b: its series go; b has no neighbor left, so ready.
        b.set_neighbors([])
        got = scrape(b)
        assert not any(peer in name for name in got), [n for n in got if peer in n]
        b.observer.refresh()
        assert b.observer.readiness.ready
        # a lost its only session: not ready any more, and a flap is counted.
        await wait(lambda: not a.observer.readiness.ready)
        at_a = scrape(a)
        assert at_a[f'routemesh_bgp_session_flaps_total{{peer="{addrs[1]}"}}'] == 1.0
        code = f'routemesh_bgp_last_notification_code{{peer="{addrs[1]}",type="received"}}'
        assert at_a[code] == 6.0  # Cease: peer de-configured
    finally:
        for d in ds:
            d.request_stop()
        await asyncio.gather(*tasks, return_exceptions=True)
    assert all(d.observer.server is None for d in ds)  # closed with the daemon
