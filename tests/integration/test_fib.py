"""The FIB writer against the real kernel, in namespaces: scale, ECMP, reconcile, repair, VXLAN.

The writer's sockets are opened inside the test namespace (NetlinkFib(netns=...)); what the
kernel holds is read back with iproute2 (`ip -json`) and /proc, never with our own parser.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import re

import pytest

from bgpd.fib.base import RouteEvent
from bgpd.fib.manager import FibManager
from bgpd.fib.netlink import NetlinkFib
from bgpd.fib.types import NextHop, Route, parse_addr, parse_prefix
from tests.lab.netns import Lab, Netns
from tests.lab.require import require_link_kind, require_root

pytestmark = pytest.mark.root

PROTO = 80


def gw(text: str) -> int:
    return parse_addr(text)[1]


def route(prefix: str, *gateways: str) -> Route:
    return Route(parse_prefix(prefix), tuple(NextHop(gw(g)) for g in gateways))


def host(lab: Lab) -> Netns:
    """A namespace with 198.18.0.1/24 and fd00:198:18::1/64 on a veth (the far end is up in
    a second namespace, so the link has carrier)."""
    require_root()
    ns, peer = lab.netns(), lab.netns()
    lab.veth(
        ns, peer, ["198.18.0.1/24", "fd00:198:18::1/64"], ["198.18.0.2/24", "fd00:198:18::2/64"]
    )
    return ns


def kernel(ns: Netns, version: int = 4, *, proto: int | None = PROTO, table: int = 254) -> dict:
    """dst -> route dict, as `ip -json route show` prints it."""
    args = ["-json"] + (["-6"] if version == 6 else []) + ["route", "show", "table", str(table)]
    if proto is not None:
        args += ["proto", str(proto)]
    out = ns.run(["ip", *args], timeout=120).stdout
    routes = json.loads(out) if out.strip() else []
    result = {}
    for r in routes:
        dst = r["dst"]
        if dst != "default" and "/" not in dst:
            dst += "/32" if version == 4 else "/128"
        result[dst] = r
    return result


def gateways(r: dict) -> list[str]:
    hops = r.get("nexthops") or [r]
    return sorted(h["gateway"] for h in hops if "gateway" in h)


def fib_trie_prefixes(ns: Netns) -> int:
    """IPv4 prefixes in the main table, from /proc/net/fib_triestat."""
    text = ns.run(["cat", "/proc/net/fib_triestat"]).stdout
    main = text.split("Main:", 1)[1]
    return int(re.search(r"Prefixes:\s+(\d+)", main).group(1))


async def manager(ns: Netns, **kw) -> FibManager:
    mgr = FibManager(NetlinkFib(PROTO, netns=ns.name), **kw)
    await mgr.start()
    return mgr


def net_text(prefix) -> str:
    version, addr, length = prefix
    return str(
        ipaddress.ip_network((addr, length))
        if version == 4
        else ipaddress.IPv6Network((addr, length))
    )


def addr_text(version: int, addr: int) -> str:
    return str(ipaddress.IPv4Address(addr) if version == 4 else ipaddress.IPv6Address(addr))


async def test_100k_ipv4_and_10k_ipv6_installed_with_our_protocol_then_removed(lab):
    ns = host(lab)
    base = fib_trie_prefixes(ns)
    mgr = await manager(ns)
    v4 = [
        Route(
            (4, 0x64400000 + (i << 8), 24), (NextHop(gw("198.18.0.2" if i % 2 else "198.18.0.3")),)
        )
        for i in range(100_000)
    ]
    v6 = [
        Route((6, (0xFD00_0010_0244 << 80) | (i << 64), 64), (NextHop(gw("fd00:198:18::2")),))
        for i in range(10_000)
    ]
    ticks = 0
    done = asyncio.Event()

    async def keepalive_like() -> None:
        nonlocal ticks
        while not done.is_set():
            ticks += 1
            await asyncio.sleep(0)

    ticker = asyncio.create_task(keepalive_like())
    for r in v4 + v6:
        mgr.update(r)
    mgr.converged()
    await mgr.settle()
    done.set()
    await ticker
    assert mgr.apply_batches >= 55  # 110k routes in slices of 2,000
    assert ticks >= mgr.apply_batches, "other tasks must run between the slices"
    assert mgr.netlink_errors == 0, list(mgr.recent_errors)[:3]
    assert fib_trie_prefixes(ns) == base + 100_000
    got4, got6 = kernel(ns, 4), kernel(ns, 6)
    assert set(got4) == {net_text(r.prefix) for r in v4}
    assert set(got6) == {net_text(r.prefix) for r in v6}
    for r in v4 + v6:
        seen = (got4 if r.version == 4 else got6)[net_text(r.prefix)]
        assert gateways(seen) == [addr_text(r.version, r.nexthops[0].gateway)], seen
    assert mgr.routes_installed == 110_000

    for r in v4 + v6:
        mgr.withdraw(r.prefix)
    await mgr.settle()
    assert fib_trie_prefixes(ns) == base
    assert kernel(ns, 4) == {} and kernel(ns, 6) == {}
    assert mgr.routes_installed == 0
    await mgr.stop()


async def test_ecmp_two_next_hops_then_one_leaves_a_single_path(lab):
    ns = host(lab)
    mgr = await manager(ns)
    mgr.update(route("10.244.1.0/26", "198.18.0.2", "198.18.0.3"))
    mgr.update(route("fd00:10:244:1::/64", "fd00:198:18::2", "fd00:198:18::3"))
    await mgr.settle()
    assert gateways(kernel(ns, 4)["10.244.1.0/26"]) == ["198.18.0.2", "198.18.0.3"]
    assert gateways(kernel(ns, 6)["fd00:10:244:1::/64"]) == ["fd00:198:18::2", "fd00:198:18::3"]

    mgr.update(route("10.244.1.0/26", "198.18.0.3"))
    mgr.update(route("fd00:10:244:1::/64", "fd00:198:18::2"))
    await mgr.settle()
    single4, single6 = kernel(ns, 4)["10.244.1.0/26"], kernel(ns, 6)["fd00:10:244:1::/64"]
    assert "nexthops" not in single4 and single4["gateway"] == "198.18.0.3"
    assert "nexthops" not in single6 and single6["gateway"] == "fd00:198:18::2"
    assert len(kernel(ns, 6)) == 1  # IPv6 replaced the multipath route, not appended to it
    assert mgr.netlink_errors == 0
    await mgr.stop()


async def test_blackhole_and_custom_table_and_metric(lab):
    ns = host(lab)
    mgr = FibManager(NetlinkFib(PROTO, table=1000, metric=20, netns=ns.name))
    await mgr.start()
    mgr.update(Route(parse_prefix("10.244.5.0/26"), blackhole=True))
    mgr.update(Route(parse_prefix("fd00:10:244:5::/64"), blackhole=True))
    mgr.update(route("10.244.6.0/26", "198.18.0.2"))
    await mgr.settle()
    v4, v6 = kernel(ns, 4, table=1000), kernel(ns, 6, table=1000)
    assert v4["10.244.5.0/26"]["type"] == "blackhole"
    assert v6["fd00:10:244:5::/64"]["type"] == "blackhole"
    assert v4["10.244.6.0/26"]["metric"] == 20 and gateways(v4["10.244.6.0/26"]) == ["198.18.0.2"]
    assert kernel(ns, 4) == {}  # nothing of ours in main
    # Tables above 255 travel in RTA_TABLE; our own dump must still find exactly these.
    dumped = await mgr.fib.dump()
    assert {(kr.prefix, kr.protocol, kr.metric) for kr in dumped} == {
        (parse_prefix("10.244.5.0/26"), PROTO, 20),
        (parse_prefix("fd00:10:244:5::/64"), PROTO, 20),
        (parse_prefix("10.244.6.0/26"), PROTO, 20),
    }
    await mgr.stop()


async def test_onlink_routes_through_a_device_ipv4_and_ipv6(lab):
    ns = host(lab)  # its veth is eth0
    mgr = await manager(ns)
    # Gateways outside every connected network: only `onlink` makes the kernel accept them.
    for prefix, gateway in (
        ("10.244.2.0/26", "10.244.2.0"),
        ("fd00:10:244:2::/64", "fd00:10:244:2::"),
    ):
        mgr.update(Route(parse_prefix(prefix), (NextHop(gw(gateway), "eth0", onlink=True),)))
    await mgr.settle()
    assert mgr.netlink_errors == 0, list(mgr.recent_errors)
    for version, prefix, gateway in (
        (4, "10.244.2.0/26", "10.244.2.0"),
        (6, "fd00:10:244:2::/64", "fd00:10:244:2::"),
    ):
        seen = kernel(ns, version)[prefix]
        assert seen["dev"] == "eth0" and "onlink" in seen.get("flags", []), seen
        assert gateways(seen) == [gateway]
    await mgr.stop()


async def test_reconcile_prunes_stale_routes_of_ours_and_leaves_a_static_route(lab):
    ns = host(lab)
    ns.ip("route", "add", "10.244.9.0/26", "via", "198.18.0.9", "proto", str(PROTO))
    ns.ip("route", "add", "10.244.1.0/26", "via", "198.18.0.9", "proto", str(PROTO))
    ns.ip("-6", "route", "add", "fd00:10:244:9::/64", "via", "fd00:198:18::9", "proto", str(PROTO))
    ns.ip("route", "add", "10.244.7.0/26", "via", "198.18.0.7", "proto", "static")
    mgr = await manager(ns)
    assert set(mgr.installed) == {
        parse_prefix("10.244.9.0/26"),
        parse_prefix("10.244.1.0/26"),
        parse_prefix("fd00:10:244:9::/64"),
    }
    mgr.update(route("10.244.1.0/26", "198.18.0.2"))
    mgr.update(route("10.244.2.0/26", "198.18.0.2"))
    mgr.update(route("10.244.7.0/26", "198.18.0.3"))  # the static route's prefix
    await mgr.settle()
    assert "10.244.9.0/26" in kernel(ns, 4), "stale routes stay until converged()"
    assert "fd00:10:244:9::/64" in kernel(ns, 6)

    mgr.converged()
    await mgr.settle()
    ours = kernel(ns, 4)
    assert set(ours) == {"10.244.1.0/26", "10.244.2.0/26"}
    assert gateways(ours["10.244.1.0/26"]) == ["198.18.0.2"]
    assert kernel(ns, 6) == {}
    static = kernel(ns, 4, proto=None)["10.244.7.0/26"]
    assert static["protocol"] == "static" and gateways(static) == ["198.18.0.7"]
    conflict = mgr.conflicts[parse_prefix("10.244.7.0/26")]
    assert conflict.protocol == 4
    refused = [e for e in mgr.recent_errors if e.prefix == parse_prefix("10.244.7.0/26")]
    assert refused and refused[0].errno == 17  # EEXIST: the kernel refused, we reported
    await mgr.stop()


async def wait_until(probe, *, timeout: float, what: str) -> None:
    """Poll ``probe`` while the event loop keeps running (the manager lives on it)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not probe():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.1)


async def test_route_deleted_by_hand_comes_back_through_the_monitor(lab):
    ns = host(lab)
    ns.ip("route", "add", "10.244.7.0/26", "via", "198.18.0.7", "proto", "static")
    mgr = await manager(ns, scan_time=3600)
    mgr.update(route("10.244.1.0/26", "198.18.0.2"))
    mgr.converged()
    await mgr.settle()
    ns.ip("route", "del", "10.244.1.0/26", "proto", str(PROTO))
    ns.ip("route", "del", "10.244.7.0/26")
    await wait_until(
        lambda: "10.244.1.0/26" in kernel(ns, 4), timeout=10, what="the monitor's repair"
    )
    assert mgr.reconcile_repairs >= 1
    assert "10.244.7.0/26" not in kernel(ns, 4, proto=None), "a static route is not ours to restore"
    await mgr.stop()


async def test_route_deleted_by_hand_comes_back_within_the_scan_time(lab):
    ns = host(lab)
    scan = 2.0
    mgr = await manager(ns, scan_time=scan, watch=False)
    mgr.update(route("10.244.1.0/26", "198.18.0.2"))
    mgr.update(route("fd00:10:244:1::/64", "fd00:198:18::2"))
    mgr.converged()
    await mgr.settle()
    ns.ip("route", "add", "10.244.7.0/26", "via", "198.18.0.7", "proto", "static")
    ns.ip("route", "del", "10.244.1.0/26", "proto", str(PROTO))
    ns.ip("-6", "route", "del", "fd00:10:244:1::/64", "proto", str(PROTO))
    await wait_until(
        lambda: "10.244.1.0/26" in kernel(ns, 4) and "fd00:10:244:1::/64" in kernel(ns, 6),
        timeout=scan * 3,
        what="the periodic scan's repair",
    )
    assert kernel(ns, 4, proto=None)["10.244.7.0/26"]["protocol"] == "static"
    assert mgr.resyncs >= 2
    await mgr.stop()


async def test_persist_off_removes_ours_on_stop(lab):
    ns = host(lab)
    ns.ip("route", "add", "10.244.7.0/26", "via", "198.18.0.7", "proto", "static")
    for persist in (True, False):
        mgr = await manager(ns, persist=persist)
        mgr.update(route("10.244.1.0/26", "198.18.0.2"))
        await mgr.settle()
        await mgr.stop()
        assert ("10.244.1.0/26" in kernel(ns, 4)) is persist
    assert "10.244.7.0/26" in kernel(ns, 4, proto=None)


async def test_recursive_next_hop_follows_the_kernel_table(lab):
    ns = host(lab)
    ns.ip("route", "add", "198.19.0.0/16", "via", "198.18.0.254")
    calls = []
    mgr = await manager(ns, on_reachability=lambda v, g, ok: calls.append((v, g, ok)))
    mgr.update(route("10.244.1.0/26", "198.19.5.1"))
    await mgr.settle()
    assert gateways(kernel(ns, 4)["10.244.1.0/26"]) == ["198.18.0.254"]
    ns.ip("route", "del", "198.19.0.0/16")
    await wait_until(lambda: "10.244.1.0/26" not in kernel(ns, 4), timeout=10, what="withdrawal")
    assert calls == [(4, gw("198.19.5.1"), False)]
    ns.ip("route", "add", "198.19.0.0/16", "via", "198.18.0.253")
    await wait_until(lambda: "10.244.1.0/26" in kernel(ns, 4), timeout=10, what="reinstall")
    assert gateways(kernel(ns, 4)["10.244.1.0/26"]) == ["198.18.0.253"]
    assert calls[-1] == (4, gw("198.19.5.1"), True)
    await mgr.stop()


VTEP_MAC = {1: "66:00:00:00:00:01", 2: "66:00:00:00:00:02"}


def vxlan_host(lab: Lab, ns: Netns, n: int, underlay_if: str) -> None:
    """vxlan.calico as Calico's agent makes it: VNI 4096, port 4789, no learning, the host's
    tunnel address on it (10.244.n.0/32)."""
    ns.ip(
        "link",
        "add",
        "vxlan.calico",
        "address",
        VTEP_MAC[n],
        "type",
        "vxlan",
        "id",
        "4096",
        "local",
        f"198.18.1.{n}",
        "dstport",
        "4789",
        "nolearning",
        "dev",
        underlay_if,
    )
    ns.link_up("vxlan.calico")
    ns.add_address("vxlan.calico", f"10.244.{n}.0/32")
    ns.sysctl("net.ipv4.conf.all.rp_filter", 0)


def vxlan_peer(ns: Netns, remote: int) -> None:
    """FDB and neighbour entries for the remote VTEP, as the agent writes them."""
    mac = VTEP_MAC[remote]
    ns.run(["bridge", "fdb", "add", mac, "dev", "vxlan.calico", "dst", f"198.18.1.{remote}"])
    ns.ip(
        "neigh",
        "add",
        f"10.244.{remote}.0",
        "lladdr",
        mac,
        "dev",
        "vxlan.calico",
        "nud",
        "permanent",
    )


async def test_vxlan_route_via_vxlan_calico_onlink_carries_a_ping(lab):
    require_link_kind("vxlan")
    a, b = lab.netns(), lab.netns()
    if_a, if_b = lab.veth(a, b, ["198.18.1.1/24"], ["198.18.1.2/24"])
    vxlan_host(lab, a, 1, if_a)
    vxlan_host(lab, b, 2, if_b)
    vxlan_peer(a, 2)
    vxlan_peer(b, 1)
    assert not a.ping("10.244.2.0", timeout=1), "no route yet: the ping must not get across"

    managers = []
    for ns, remote in ((a, 2), (b, 1)):
        mgr = await manager(ns)
        hop = NextHop(gw(f"10.244.{remote}.0"), "vxlan.calico", onlink=True)
        mgr.update(Route(parse_prefix(f"10.244.{remote}.0/26"), (hop,)))
        mgr.converged()
        managers.append(mgr)
    for mgr in managers:
        await mgr.settle()
        assert mgr.netlink_errors == 0, list(mgr.recent_errors)
    seen = kernel(a, 4)["10.244.2.0/26"]
    assert seen["dev"] == "vxlan.calico" and "onlink" in seen.get("flags", [])
    assert gateways(seen) == ["10.244.2.0"]
    assert await asyncio.to_thread(a.ping, "10.244.2.0", count=3, timeout=2)
    for mgr in managers:
        await mgr.stop()


async def test_ipip_route_via_tunl0_onlink_live_where_the_kernel_has_ipip(lab):
    # This kernel has no IPIP (DESIGN.md); the packed bytes are tested in test_fib_messages.
    require_link_kind("ipip", skip_even_in_ci=True)
    ns = host(lab)
    ns.ip("link", "add", "tunl0", "type", "ipip")
    ns.link_up("tunl0")
    mgr = await manager(ns)
    hop = NextHop(gw("198.18.0.2"), "tunl0", onlink=True)
    mgr.update(Route(parse_prefix("10.244.2.0/26"), (hop,)))
    await mgr.settle()
    seen = kernel(ns, 4)["10.244.2.0/26"]
    assert seen["dev"] == "tunl0" and "onlink" in seen.get("flags", [])
    await mgr.stop()


async def test_manager_from_the_fib_config_section_and_writer_reconcile(lab):
    from bgpd.config import FibSection
    from bgpd.fib import manager_from_config

    ns = host(lab)
    assert manager_from_config(FibSection(enabled=False)) is None
    mgr = manager_from_config(
        FibSection(table=254, protocol=81, persist=False, scan_time=5), netns=ns.name
    )
    await mgr.start()
    assert mgr.reachable(4, gw("198.18.0.77")) and not mgr.reachable(4, gw("198.19.0.1"))
    mgr.update(route("10.244.1.0/26", "198.18.0.2"))
    await mgr.settle()
    assert "10.244.1.0/26" in kernel(ns, 4, proto=81)
    await mgr.stop()
    assert kernel(ns, 4, proto=81) == {}, "persist = false removes our routes on stop"

    fib = NetlinkFib(PROTO, netns=ns.name)
    ns.ip("route", "add", "10.244.9.0/26", "via", "198.18.0.9", "proto", str(PROTO))
    report = await fib.reconcile(
        {route("10.244.2.0/26", "198.18.0.2").prefix: route("10.244.2.0/26", "198.18.0.2")}
    )
    assert (report.added, report.deleted, report.errors) == (1, 1, [])
    assert set(kernel(ns, 4)) == {"10.244.2.0/26"}
    fib.close()


async def test_scans_in_steady_state_rewrite_nothing(lab):
    """Our dump must read back every kind we write exactly as we wrote it, or each scan
    would replace routes that are fine (churn on every host every scan-time)."""
    ns = host(lab)
    mgr = await manager(ns, scan_time=0.2)
    mgr.converged()
    for r in (
        route("10.244.1.0/26", "198.18.0.2", "198.18.0.3"),
        route("fd00:10:244:1::/64", "fd00:198:18::2", "fd00:198:18::3"),
        route("10.244.4.0/26", "198.18.0.2"),
        Route(parse_prefix("10.244.2.0/26"), (NextHop(gw("10.244.2.0"), "eth0", onlink=True),)),
        Route(
            parse_prefix("fd00:10:244:2::/64"),
            (NextHop(gw("fd00:10:244:2::"), "eth0", onlink=True),),
        ),
        Route(parse_prefix("10.244.3.0/26"), blackhole=True),
        Route(parse_prefix("fd00:10:244:3::/64"), blackhole=True),
    ):
        mgr.update(r)
    await mgr.settle()
    first = mgr.resyncs
    await wait_until(lambda: mgr.resyncs >= first + 3, timeout=20, what="three more scans")
    await mgr.settle()
    assert mgr.reconcile_repairs == 0, mgr.repairs_by_type
    assert mgr.netlink_errors == 0 and mgr.in_sync
    await mgr.stop()


async def test_every_error_in_a_batch_is_mapped_to_its_route(lab):
    ns = host(lab)
    fib = NetlinkFib(PROTO, netns=ns.name, batch=64)
    good = [route(f"10.244.{i}.0/26", "198.18.0.2") for i in range(100)]
    no_device = Route(parse_prefix("10.244.200.0/26"), (NextHop(None, "nosuch0"),))
    off_link = route("10.244.201.0/26", "198.19.9.9")  # gateway on no connected network
    bad_v6 = route("fd00:10:244:9::/64", "fd00:198:19::9")
    # Failures sit in the middle of a batch and at the end of one (index 63 of 64).
    writes = [*good[:30], off_link, *good[30:62], no_device, *good[62:], bad_v6]
    errors = await fib.apply(writes, [parse_prefix("10.244.250.0/26")])  # not there: fine
    got = sorted((str(e.route), e.op, e.errno) for e in errors)
    assert got == sorted(
        [
            (str(off_link), "add", 101),  # ENETUNREACH
            (str(no_device), "add", 19),  # ENODEV
            (str(bad_v6), "add", 113),  # IPv6 says EHOSTUNREACH
        ]
    ), [str(e) for e in errors]
    assert any("nosuch0" in e.message for e in errors)
    installed = kernel(ns, 4)
    assert {net_text(r.prefix) for r in good} <= set(installed)
    assert "10.244.201.0/26" not in installed and "10.244.200.0/26" not in installed
    assert fib.netlink_errors == 3
    fib.close()


async def test_a_batch_longer_than_the_send_buffer_goes_in_several_sendmsgs(lab):
    """The kernel refuses a sendmsg longer than the socket's send buffer; a batch that would
    be (wide ECMP routes, a buffer we could not enlarge) is split at message boundaries,
    and every failure still maps back to its route."""
    ns = host(lab)
    fib = NetlinkFib(PROTO, netns=ns.name, batch=500)
    fib.send_max = 1000  # ~18 messages per sendmsg
    good = [route(f"10.244.{i}.0/26", "198.18.0.2") for i in range(200)]
    off_link = route("10.244.201.0/26", "198.19.9.9")
    writes = [*good[:100], off_link, *good[100:]]
    errors = await fib.apply(writes, [])
    assert [(str(e.route), e.errno) for e in errors] == [(str(off_link), 101)]
    assert fib.sendmsg_calls > 10
    assert {net_text(r.prefix) for r in good} <= set(kernel(ns, 4))
    errors = await fib.apply([], [r.prefix for r in good])
    assert errors == [] and not {net_text(r.prefix) for r in good} & set(kernel(ns, 4))
    fib.close()


async def test_the_monitor_hears_no_echo_of_our_writes_but_hears_others(lab):
    """Each route we write or delete comes back on the monitor socket; a socket filter drops
    those of our writer in the kernel (at 500k routes, parsing them cost more than writing),
    while a deletion of ours by anyone else, and others' routes, still arrive."""
    ns = host(lab)
    fib = NetlinkFib(PROTO, netns=ns.name)
    events: list = []
    close = fib.monitor(events.append)
    ours = [route(f"10.244.{i >> 2}.{(i & 3) << 6}/26", "198.18.0.2") for i in range(1000)]
    assert await fib.apply(ours, []) == []
    assert await fib.apply([], [r.prefix for r in ours[1:]]) == []
    ns.ip("route", "del", "10.244.0.0/26", "proto", str(PROTO))  # the one left, by hand
    ns.ip("route", "add", "10.250.0.0/24", "via", "198.18.0.7", "proto", "static")

    def routes_seen() -> list:
        return [e.route for e in events if isinstance(e, RouteEvent) and e.route.table == 254]

    await wait_until(
        lambda: any(kr.prefix == parse_prefix("10.250.0.0/24") for kr in routes_seen()),
        timeout=10,
        what="the static route's event",
    )
    mine = [kr for kr in routes_seen() if kr.protocol == PROTO]
    assert [kr.prefix for kr in mine] == [parse_prefix("10.244.0.0/26")], mine[:5]
    assert [e.deleted for e in events if isinstance(e, RouteEvent) and e.route in mine] == [True]
    close()
    fib.close()
