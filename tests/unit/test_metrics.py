"""Metric values after simulated event sequences, per-daemon registries, and the health server."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client.parser import text_string_to_metric_families

from bgpd.health import BGP_SESSIONS, FIB_SYNCED, HealthServer, Readiness
from bgpd.metrics import AREAS, STATES, Metrics
from bgpd.speaker.events import (
    SessionDown,
    SessionEstablished,
    State,
    StateChanged,
    UpdateReceived,
)
from bgpd.speaker.fsm import Session, SessionConfig
from bgpd.speaker.messages import Update
from bgpd.speaker.types import IPV4_UNICAST, IPV6_UNICAST

PEER = "198.18.0.2"


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def state_of(m: Metrics, peer: str) -> list[str]:
    return [
        s for s in STATES if m.value("routemesh_bgp_session_state", {"peer": peer, "state": s}) == 1
    ]


def walk(m: Metrics, peer: str, *states: State) -> None:
    old = State.IDLE
    for new in states:
        m.bgp.on_event(peer, StateChanged(old, new))
        old = new


def test_session_lifecycle_state_establishments_flaps_uptime():
    clock = Clock()
    m = Metrics(areas=("bgp",), clock=clock)
    m.bgp.add_peer(PEER)
    assert state_of(m, PEER) == ["Idle"]
    assert m.value("routemesh_bgp_session_establishments_total", {"peer": PEER}) == 0
    walk(m, PEER, State.CONNECT, State.OPENSENT, State.OPENCONFIRM, State.ESTABLISHED)
    m.bgp.on_event(PEER, SessionEstablished(negotiated=None))  # type: ignore[arg-type]
    assert state_of(m, PEER) == ["Established"]
    assert m.value("routemesh_bgp_session_establishments_total", {"peer": PEER}) == 1
    clock.t += 42.5
    assert m.value("routemesh_bgp_session_uptime_seconds", {"peer": PEER}) == 42.5

    m.bgp.on_event(PEER, StateChanged(State.ESTABLISHED, State.IDLE))
    m.bgp.on_event(
        PEER,
        SessionDown("hold timer expired", True, (4, 0), sent=True, hold_timer_expired=True),
    )
    assert state_of(m, PEER) == ["Idle"]
    assert m.value("routemesh_bgp_session_flaps_total", {"peer": PEER}) == 1
    assert m.value("routemesh_bgp_hold_timer_expiries_total", {"peer": PEER}) == 1
    assert m.value("routemesh_bgp_last_notification_code", {"peer": PEER, "type": "sent"}) == 4
    assert m.value("routemesh_bgp_last_notification_subcode", {"peer": PEER, "type": "sent"}) == 0
    assert (
        m.value("routemesh_bgp_last_notification_code", {"peer": PEER, "type": "received"}) is None
    )
    assert m.value("routemesh_bgp_session_uptime_seconds", {"peer": PEER}) == 0

    # A connection that fails before Established is neither a flap nor an establishment.
    walk(m, PEER, State.CONNECT, State.OPENSENT)
    m.bgp.on_event(PEER, SessionDown("Cease", False, (6, 2), sent=False))
    assert m.value("routemesh_bgp_session_flaps_total", {"peer": PEER}) == 1
    assert m.value("routemesh_bgp_session_establishments_total", {"peer": PEER}) == 1
    assert m.value("routemesh_bgp_last_notification_code", {"peer": PEER, "type": "received"}) == 6
    assert (
        m.value("routemesh_bgp_last_notification_subcode", {"peer": PEER, "type": "received"}) == 2
    )

    # Up again: uptime restarts from the new establishment.
    walk(m, PEER, State.ACTIVE, State.OPENSENT, State.OPENCONFIRM, State.ESTABLISHED)
    m.bgp.on_event(PEER, SessionEstablished(negotiated=None))  # type: ignore[arg-type]
    clock.t += 3
    assert m.value("routemesh_bgp_session_uptime_seconds", {"peer": PEER}) == 3
    assert m.value("routemesh_bgp_session_establishments_total", {"peer": PEER}) == 2


def test_prefix_updates_and_counts_by_family():
    m = Metrics(areas=("bgp",))
    v4 = [(0x0AF40000 + (i << 6), 26, 0) for i in range(5)]
    m.bgp.on_event(PEER, UpdateReceived(Update(announce={IPV4_UNICAST: v4})))
    m.bgp.on_event(
        PEER,
        UpdateReceived(
            Update(withdraw={IPV4_UNICAST: v4[:2], IPV6_UNICAST: [(0xFD << 120, 64, 0)]})
        ),
    )
    # End-of-RIB for v6 (an empty MP_UNREACH) counts nothing.
    m.bgp.on_event(PEER, UpdateReceived(Update(withdraw={IPV6_UNICAST: []})))
    got = {
        (fam, kind): m.value(
            "routemesh_bgp_prefix_updates_received_total",
            {"peer": PEER, "family": fam, "type": kind},
        )
        for fam in ("ipv4-unicast", "ipv6-unicast")
        for kind in ("announce", "withdraw")
    }
    assert got == {
        ("ipv4-unicast", "announce"): 5,
        ("ipv4-unicast", "withdraw"): 2,
        ("ipv6-unicast", "announce"): 0,
        ("ipv6-unicast", "withdraw"): 1,
    }
    m.bgp.on_prefix_updates(PEER, "out", IPV4_UNICAST, 3, 1)
    assert (
        m.value(
            "routemesh_bgp_prefix_updates_sent_total",
            {"peer": PEER, "family": "ipv4-unicast", "type": "announce"},
        )
        == 3
    )

    m.bgp.set_prefixes(PEER, IPV4_UNICAST, received=3, accepted=2, advertised=7)
    m.bgp.set_prefixes(PEER, "ipv6-unicast", received=1, accepted=1, advertised=0)
    labels = {"peer": PEER, "family": "ipv4-unicast"}
    assert m.value("routemesh_bgp_prefixes_received", labels) == 3
    assert m.value("routemesh_bgp_prefixes_accepted", labels) == 2
    assert m.value("routemesh_bgp_prefixes_advertised", labels) == 7
    # Session down: what was learned over it is gone.
    m.bgp.on_down(PEER, was_established=True)
    assert m.value("routemesh_bgp_prefixes_received", labels) == 0
    assert m.value("routemesh_bgp_prefixes_advertised", labels) == 0


def test_prefix_update_counts_stay_exact_across_scrapes():
    # Counts are held between scrapes and added at each one: never lost, never added twice.
    m = Metrics(areas=("bgp",))
    one = UpdateReceived(Update(announce={IPV4_UNICAST: [(0x64400000, 29, 0)]}))
    labels = {"peer": PEER, "family": "ipv4-unicast", "type": "announce"}
    for _ in range(1000):
        m.bgp.on_event(PEER, one)
    assert m.value("routemesh_bgp_prefix_updates_received_total", labels) == 1000
    assert m.value("routemesh_bgp_prefix_updates_received_total", labels) == 1000
    for _ in range(500):
        m.bgp.on_event(PEER, one)
    assert f'{labels["type"]}"}} 1500.0' in m.render().decode()
    m.bgp.on_event(PEER, one)
    m.bgp.remove_peer(PEER)
    assert m.value("routemesh_bgp_prefix_updates_received_total", labels) is None
    # A peer configured again starts from zero, on fresh series.
    m.bgp.on_event(PEER, one)
    assert m.value("routemesh_bgp_prefix_updates_received_total", labels) == 1


def test_observe_session_turns_fsm_totals_into_monotonic_counters():
    m = Metrics(areas=("bgp",))
    s = Session(SessionConfig(local_asn=64512, router_id=1, remote_asn=64512))
    s.messages_in.update(open=1, keepalive=10, update=4)
    s.messages_out["keepalive"] = 9
    m.bgp.observe_session(PEER, s)
    m.bgp.observe_session(PEER, s)  # twice without change adds nothing
    rx = {"peer": PEER, "type": "keepalive"}
    assert m.value("routemesh_bgp_messages_received_total", rx) == 10
    assert m.value("routemesh_bgp_messages_sent_total", rx) == 9
    assert m.value("routemesh_bgp_messages_received_total", {"peer": PEER, "type": "update"}) == 4
    s.messages_in["keepalive"] = 15
    m.bgp.observe_session(PEER, s)
    assert m.value("routemesh_bgp_messages_received_total", rx) == 15
    # A new Session object starts from zero again: its counts are added, never subtracted.
    s2 = Session(SessionConfig(local_asn=64512, router_id=1, remote_asn=64512))
    s2.messages_in["keepalive"] = 2
    m.bgp.observe_session(PEER, s2)
    assert m.value("routemesh_bgp_messages_received_total", rx) == 17
    m.bgp.on_message(PEER, "in", "keepalive", 3)
    assert m.value("routemesh_bgp_messages_received_total", rx) == 20
    with pytest.raises(ValueError, match="direction"):
        m.bgp.on_message(PEER, "sideways", "keepalive")


def test_remove_peer_drops_every_series_of_that_peer_only():
    m = Metrics(areas=("bgp",))
    for peer in (PEER, "198.18.0.3"):
        m.bgp.add_peer(peer)
        m.bgp.set_prefixes(peer, IPV4_UNICAST, 1, 1, 1)
        m.bgp.on_notification(peer, 6, 4, sent=False)
        m.bgp.on_prefix_updates(peer, "in", IPV4_UNICAST, 1, 0)
    m.bgp.remove_peer(PEER)
    text = m.render().decode()
    assert f'peer="{PEER}"' not in text
    assert 'peer="198.18.0.3"' in text


def test_unknown_state_is_refused_with_the_choices():
    m = Metrics(areas=("bgp",))
    with pytest.raises(ValueError, match="Established"):
        m.bgp.on_state(PEER, "Up")


def test_two_daemons_in_one_process_keep_separate_registries():
    a, b = Metrics(), Metrics()
    a.bgp.set_prefixes(PEER, IPV4_UNICAST, 10, 10, 0)
    b.bgp.set_prefixes(PEER, IPV4_UNICAST, 20, 20, 0)
    labels = {"peer": PEER, "family": "ipv4-unicast"}
    assert a.value("routemesh_bgp_prefixes_received", labels) == 10
    assert b.value("routemesh_bgp_prefixes_received", labels) == 20


def test_other_areas_record_their_events():
    clock = Clock(5000.0)
    m = Metrics(clock=clock)
    m.rib.set_counts(IPV4_UNICAST, routes=12, paths=30)
    m.rib.set_attribute_sets(4)
    m.rib.on_best_path_runs(IPV4_UNICAST, 7)
    m.fib.set_routes("ipv4-unicast", 12)
    m.fib.observe_batch(0.002, errors=1)
    m.fib.observe_batch(0.2)
    m.fib.on_reconcile(added=2, removed=1)
    m.fib.set_in_sync(True)
    m.agent.set_dataplane(endpoints=3, ipsets=2, ipset_members=9, chains=11, rules=40)
    m.agent.on_restore("iptables", ok=True)
    m.agent.on_restore("ipset", ok=False)
    m.agent.observe_apply(0.03)
    m.ipam.set_pool("default-ipv4-ippool", in_use=5, free=59)
    m.ipam.set_blocks(1)
    m.ipam.observe_allocation(0.004)
    m.ipam.on_cas_conflict()
    m.datastore.set_watch_lag(store_revision=120, applied_revision=117)
    m.datastore.on_watch_event("put")
    m.datastore.on_reconnect()
    v = m.value
    assert v("routemesh_rib_routes", {"family": "ipv4-unicast"}) == 12
    assert v("routemesh_rib_paths", {"family": "ipv4-unicast"}) == 30
    assert v("routemesh_rib_attribute_sets") == 4
    assert v("routemesh_rib_best_path_runs_total", {"family": "ipv4-unicast"}) == 7
    assert v("routemesh_fib_routes", {"family": "ipv4-unicast"}) == 12
    assert v("routemesh_fib_netlink_errors_total") == 1
    assert v("routemesh_fib_apply_duration_seconds_count") == 2
    assert v("routemesh_fib_apply_duration_seconds_bucket", {"le": "0.0025"}) == 1
    assert v("routemesh_fib_reconcile_repairs_total", {"type": "added"}) == 2
    assert v("routemesh_fib_reconcile_repairs_total", {"type": "replaced"}) == 0
    assert v("routemesh_fib_in_sync") == 1
    assert v("routemesh_fib_last_sync_timestamp_seconds") == 5000.0
    m.fib.set_in_sync(False)
    assert v("routemesh_fib_in_sync") == 0
    assert v("routemesh_fib_last_sync_timestamp_seconds") == 5000.0
    assert v("routemesh_agent_endpoints") == 3
    assert v("routemesh_agent_ipset_members") == 9
    assert v("routemesh_agent_iptables_rules") == 40
    assert v("routemesh_agent_restore_calls_total", {"type": "ipset"}) == 1
    assert v("routemesh_agent_restore_errors_total", {"type": "ipset"}) == 1
    assert v("routemesh_agent_restore_errors_total", {"type": "iptables"}) == 0
    assert v("routemesh_agent_apply_duration_seconds_sum") == pytest.approx(0.03)
    assert v("routemesh_ipam_addresses_in_use", {"pool": "default-ipv4-ippool"}) == 5
    assert v("routemesh_ipam_addresses_free", {"pool": "default-ipv4-ippool"}) == 59
    assert v("routemesh_ipam_blocks") == 1
    assert v("routemesh_ipam_cas_conflicts_total") == 1
    assert v("routemesh_datastore_watch_lag_revisions") == 3
    assert v("routemesh_datastore_watch_events_total", {"type": "put"}) == 1
    assert v("routemesh_datastore_reconnects_total") == 1
    with pytest.raises(ValueError):
        m.agent.on_restore("nft", ok=True)


def test_naming_conventions_and_label_set():
    m = Metrics()
    specs = m.specs()
    assert {s.name.split("_")[1] for s in specs} == set(AREAS)
    for spec in specs:
        assert spec.name.startswith("routemesh_")
        assert spec.name.endswith("_total") == (spec.type == "counter"), spec
        assert not any(unit in spec.name for unit in ("_ms", "milliseconds", "_bytes_kb")), spec
        assert set(spec.labels) <= {"peer", "family", "type", "state", "pool"}, spec
        assert spec.help.endswith("."), spec
    # The exposition parses, and every declared family appears in it.
    exposed = {f.name for f in text_string_to_metric_families(m.render().decode())}
    for spec in specs:
        base = spec.name.removesuffix("_total")
        assert base in exposed, spec.name


def test_areas_are_selectable_and_checked():
    rr = Metrics(areas=("bgp", "rib"))
    assert rr.fib is None and rr.agent is None
    assert all(s.name.split("_")[1] in ("bgp", "rib") for s in rr.specs())
    with pytest.raises(ValueError, match="unknown metric areas"):
        Metrics(areas=("bgp", "bird"))


# -- health -------------------------------------------------------------------------------


def test_readiness_needs_every_condition_and_reports_flips():
    r = Readiness([BGP_SESSIONS, FIB_SYNCED])
    flips: list[bool] = []
    r.on_change(flips.append)
    assert not r.ready
    r.set(BGP_SESSIONS, True)
    assert not r.ready and r.failing() == [FIB_SYNCED]
    r.set(FIB_SYNCED, True)
    assert r.ready
    r.set(FIB_SYNCED, True)  # no flip, no second notification
    r.set(BGP_SESSIONS, False, "0 of 2 sessions Established")
    assert flips == [True, False]
    assert "[-]bgp-sessions failed: 0 of 2 sessions Established" in r.report()
    assert "[+]fib-synced ok" in r.report(verbose=True)
    assert "[+]fib-synced" not in r.report()
    with pytest.raises(KeyError, match="bgp-sessions"):
        r.set("dataplane", True)
    assert not Readiness([]).ready  # nothing registered is not "ready"


def test_handle_routes_and_methods():
    m = Metrics(areas=("bgp",))
    hooked: list[int] = []
    server = HealthServer(m, Readiness(["x"]), before_scrape=[lambda: hooked.append(1)])
    assert server.handle("GET", "/livez").status == 200
    assert server.handle("GET", "/readyz").status == 503
    assert server.handle("POST", "/metrics").status == 405
    assert server.handle("GET", "/nope").status == 404
    resp = server.handle("GET", "/metrics")
    assert resp.status == 200 and hooked == [1]
    assert resp.content_type.startswith("text/plain; version=0.0.4")
    om = server.handle("GET", "/metrics", "application/openmetrics-text; version=1.0.0")
    assert om.content_type.startswith("application/openmetrics-text")
    assert om.body.rstrip().endswith(b"# EOF")


async def _http(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    raw = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, body


async def test_server_not_ready_then_ready_over_http():
    m = Metrics(areas=("bgp",))
    readiness = Readiness([BGP_SESSIONS, FIB_SYNCED])
    server = HealthServer(m, readiness, host="127.0.0.1", port=0)
    await server.start()
    try:
        get = b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n"
        status, _, body = await _http(server.port, get % b"/readyz")
        assert status == 503 and b"[-]bgp-sessions" in body and b"[-]fib-synced" in body
        assert (await _http(server.port, get % b"/livez"))[0] == 200
        readiness.set(BGP_SESSIONS, True)
        readiness.set(FIB_SYNCED, True)
        status, _, body = await _http(server.port, get % b"/readyz")
        assert (status, body) == (200, b"readyz check passed\n")

        m.bgp.on_state(PEER, State.ESTABLISHED)
        status, headers, body = await _http(server.port, get % b"/metrics")
        assert status == 200 and int(headers["Content-Length"]) == len(body)
        assert (
            f'routemesh_bgp_session_state{{peer="{PEER}",state="Established"}} 1.0'.encode() in body
        )
        status, headers, body = await _http(server.port, b"HEAD /metrics HTTP/1.1\r\n\r\n")
        assert status == 200 and body == b"" and int(headers["Content-Length"]) > 0
        assert (await _http(server.port, b"BREW /pot HTCPCP/1.0\r\n\r\n"))[0] == 400
        assert (await _http(server.port, b"GET / HTTP/1.1\r\nno colon here\r\n\r\n"))[0] == 400
        huge = b"GET /livez HTTP/1.1\r\nX: " + b"a" * 70000 + b"\r\n\r\n"
        assert (await _http(server.port, huge))[0] == 400
        # The server still answers after the bad requests.
        assert (await _http(server.port, get % b"/livez"))[0] == 200
    finally:
        await server.close()
