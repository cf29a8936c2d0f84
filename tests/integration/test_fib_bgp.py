"""Issue 4 through BGP: our `bgpd -f` with `[fib]` writes what it learns from a real BIRD into
the kernel of its namespace (protocol 80), at scale, as ECMP, repaired after `ip route del`,
next to another protocol's routes it never touches, and not at all on a dedicated reflector."""

from __future__ import annotations

import ipaddress

import pytest

from tests.lab.netns import Lab, Netns
from tests.lab.ours import FIB_PROTOCOL, RoutemeshSpeaker, kernel_route_count, kernel_routes
from tests.lab.ours import Neighbor as OurNeighbor
from tests.lab.peers import BirdPeer
from tests.lab.peers import Neighbor as PeerNeighbor
from tests.lab.require import require_binary, require_root
from tests.lab.waiting import wait_for

pytestmark = pytest.mark.root

OUR_ASN, PEER_ASN = 65001, 65002
FAMILIES = ("ipv4-unicast", "ipv6-unicast")


def _require() -> None:
    require_root()
    require_binary("ip")
    BirdPeer.require()


def _bird(ns: Netns, v4: str, v6: str, ours: str) -> BirdPeer:
    return BirdPeer(
        ns,
        asn=PEER_ASN,
        router_id=v4,
        local_addresses=[v4, v6],
        neighbors=[PeerNeighbor(ours, OUR_ASN, hold_time=30)],
    )


def _ours(
    lab: Lab, ns: Netns, address: str, peers: list[str], *, fib: str = "", **global_: object
) -> RoutemeshSpeaker:
    return RoutemeshSpeaker(
        lab,
        ns,
        OUR_ASN,
        address,
        [OurNeighbor(p, PEER_ASN, families=FAMILIES, hold_time=30) for p in peers],
        listen=[address],
        extra_global=dict(global_),
        extra_toml=fib,
    )


def _v4_prefixes(count: int) -> list[str]:
    base = int(ipaddress.IPv4Address("100.64.0.0"))
    return [f"{ipaddress.IPv4Address(base + (i << 3))}/29" for i in range(count)]


def _v6_prefixes(count: int) -> list[str]:
    base = int(ipaddress.IPv6Address("fd00:64::"))
    return [f"{ipaddress.IPv6Address(base + (i << 64))}/64" for i in range(count)]


def _fib_log_problems(ours: RoutemeshSpeaker) -> list[str]:
    return [
        line
        for line in ours.log_text().splitlines()
        if "Traceback" in line or "fib: cannot start" in line or "write cycle failed" in line
    ]


# -- 1. scale: 100k IPv4 + 10k IPv6 in and out -----------------------------------------------


def test_100k_ipv4_and_10k_ipv6_learned_by_bgp_are_installed_and_withdrawn(lab: Lab) -> None:
    _require()
    dut, peer = lab.netns(), lab.netns()
    lab.veth(dut, peer, ["198.18.40.1/24", "fd00:198:18:40::1/64"],
             ["198.18.40.2/24", "fd00:198:18:40::2/64"])  # fmt: skip
    v4, v6 = _v4_prefixes(100_000), _v6_prefixes(10_000)
    bird = _bird(peer, "198.18.40.2", "fd00:198:18:40::2", "198.18.40.1")
    bird.announce(v4 + v6)
    bird.start()
    ours = _ours(lab, dut, "198.18.40.1", ["198.18.40.2"], fib="[fib]\nenabled = true\n")
    ours.start()
    ours.wait_established("198.18.40.2", timeout=60)

    def counts() -> tuple[int, int]:
        return kernel_route_count(dut, 4), kernel_route_count(dut, 6)

    wait_for(
        lambda: counts() == (len(v4), len(v6)),
        timeout=120,
        interval=1.0,
        what="100k + 10k routes of protocol 80 in the kernel",
        describe=lambda: f"kernel holds {counts()}\n{ours.log_text()[-3000:]}",
    )
    # Every route, not a sample: exactly the announced prefixes, each via BIRD's address.
    got4, got6 = kernel_routes(dut, 4), kernel_routes(dut, 6)
    assert set(got4) == set(v4)
    assert set(got6) == set(v6)
    assert {tuple(g) for g in got4.values()} == {("198.18.40.2",)}
    assert {tuple(g) for g in got6.values()} == {("fd00:198:18:40::2",)}

    bird.withdraw(v4 + v6)
    wait_for(
        lambda: counts() == (0, 0),
        timeout=120,
        interval=1.0,
        what="every route of protocol 80 gone after the withdraw",
        describe=lambda: f"kernel holds {counts()}\n{ours.log_text()[-3000:]}",
    )
    assert ours.alive()
    assert _fib_log_problems(ours) == []


# -- 2. ECMP -----------------------------------------------------------------------------------


def test_two_equal_peers_make_one_multipath_route_and_one_leaving_leaves_a_single_path(
    lab: Lab,
) -> None:
    _require()
    dut, p1, p2 = lab.netns(), lab.netns(), lab.netns()
    lab.bridge(
        [dut, p1, p2],
        [
            ["198.18.41.1/24", "fd00:198:18:41::1/64"],
            ["198.18.41.2/24", "fd00:198:18:41::2/64"],
            ["198.18.41.3/24", "fd00:198:18:41::3/64"],
        ],
    )
    prefixes = ["10.244.41.0/26", "fd00:10:244:41::/64"]
    birds = []
    for ns, host in ((p1, 2), (p2, 3)):
        bird = _bird(ns, f"198.18.41.{host}", f"fd00:198:18:41::{host}", "198.18.41.1")
        bird.announce(prefixes)
        bird.start()
        birds.append(bird)
    ours = _ours(
        lab,
        dut,
        "198.18.41.1",
        ["198.18.41.2", "198.18.41.3"],
        fib="[fib]\nenabled = true\n",
        multipath=2,
    )
    ours.start()

    both = {
        "10.244.41.0/26": ["198.18.41.2", "198.18.41.3"],
        "fd00:10:244:41::/64": ["fd00:198:18:41::2", "fd00:198:18:41::3"],
    }

    def kernel() -> dict[str, list[str]]:
        return kernel_routes(dut, 4) | kernel_routes(dut, 6)

    wait_for(
        lambda: kernel() == both,
        timeout=60,
        what="one multipath route per family with both next hops",
        describe=lambda: f"kernel: {kernel()}\n{ours.log_text()[-3000:]}",
    )
    # One route per prefix, carrying RTA_MULTIPATH (not two routes at different metrics).
    for version, prefix in ((4, "10.244.41.0/26"), (6, "fd00:10:244:41::/64")):
        out = dut.ip(f"-{version}", "route", "show", prefix, "proto", str(FIB_PROTOCOL)).stdout
        assert out.count("nexthop via") == 2 and len(out.split(prefix)) == 2, out

    birds[1].stop()  # a Cease: its paths go at once (no graceful restart here)
    single = {
        "10.244.41.0/26": ["198.18.41.2"],
        "fd00:10:244:41::/64": ["fd00:198:18:41::2"],
    }
    wait_for(
        lambda: kernel() == single,
        timeout=60,
        what="a single-path route via the remaining peer",
        describe=lambda: f"kernel: {kernel()}\n{ours.log_text()[-3000:]}",
    )
    assert _fib_log_problems(ours) == []


# -- 4. repair, and other protocols' routes -------------------------------------------------


def test_a_route_deleted_by_hand_comes_back_and_a_static_route_is_left_alone(lab: Lab) -> None:
    _require()
    dut, peer = lab.netns(), lab.netns()
    lab.veth(dut, peer, ["198.18.42.1/24", "fd00:198:18:42::1/64"],
             ["198.18.42.2/24", "fd00:198:18:42::2/64"])  # fmt: skip
    mine, taken, v6 = "10.244.42.0/26", "10.244.43.0/26", "fd00:10:244:42::/64"
    unrelated = "10.244.44.0/26"
    # An operator's static routes: one where BGP will want the same prefix, one elsewhere.
    dut.ip("route", "add", taken, "via", "198.18.42.99", "proto", "static")
    dut.ip("route", "add", unrelated, "via", "198.18.42.98", "proto", "static")
    statics_before = kernel_routes(dut, 4, proto="static")
    bird = _bird(peer, "198.18.42.2", "fd00:198:18:42::2", "198.18.42.1")
    bird.announce([mine, taken, v6])
    bird.start()
    scan = 2
    ours = _ours(
        lab, dut, "198.18.42.1", ["198.18.42.2"], fib=f"[fib]\nenabled = true\nscan-time = {scan}\n"
    )
    ours.start()
    want4 = {mine: ["198.18.42.2"]}
    want6 = {v6: ["fd00:198:18:42::2"]}
    wait_for(
        lambda: kernel_routes(dut, 4) == want4 and kernel_routes(dut, 6) == want6,
        timeout=60,
        what="our routes installed (and none over the static route)",
        describe=lambda: f"{kernel_routes(dut, 4)} {kernel_routes(dut, 6)}\n{ours.log_text()}",
    )
    # The conflict is reported: the log names the prefix another protocol holds.
    wait_for(
        lambda: [ln for ln in ours.log_text().splitlines() if "fib:" in ln and taken in ln],
        timeout=30,
        what=f"a reported conflict at {taken}",
        describe=ours.log_text,
    )

    for version, prefix, want in ((4, mine, want4), (6, v6, want6)):
        # `ip route del` fails unless the route was there; the monitor may repair it at once.
        dut.ip(f"-{version}", "route", "del", prefix, "proto", str(FIB_PROTOCOL))
        wait_for(
            lambda v=version, w=want: kernel_routes(dut, v) == w,
            timeout=3 * scan,
            interval=0.1,
            what=f"{prefix} back within the scan time",
            describe=ours.log_text,
        )
    # A route of ours changed in place sends no event we listen to (our own protocol's
    # RTM_NEWROUTE is filtered out); only the periodic resync puts it right.
    dut.ip("route", "replace", mine, "via", "198.18.42.77", "proto", str(FIB_PROTOCOL))
    assert kernel_routes(dut, 4)[mine] == ["198.18.42.77"]
    wait_for(
        lambda: kernel_routes(dut, 4) == want4,
        timeout=3 * scan,
        interval=0.1,
        what=f"{mine} restored by the periodic resync",
        describe=ours.log_text,
    )
    assert kernel_routes(dut, 4, proto="static") == statics_before
    assert kernel_routes(dut, 4, proto="static") == {
        taken: ["198.18.42.99"],
        unrelated: ["198.18.42.98"],
    }
    assert _fib_log_problems(ours) == []


# -- 5. a dedicated reflector ------------------------------------------------------------------


@pytest.mark.parametrize("fib", ["", "[fib]\nenabled = true\n"], ids=["default", "fib-enabled"])
def test_a_dedicated_reflector_writes_no_kernel_route_unless_fib_is_enabled(
    lab: Lab, fib: str
) -> None:
    _require()
    rr, client = lab.netns(), lab.netns()
    lab.veth(rr, client, ["198.18.45.1/24", "fd00:198:18:45::1/64"],
             ["198.18.45.2/24", "fd00:198:18:45::2/64"])  # fmt: skip
    bird = BirdPeer(
        client,
        asn=PEER_ASN,
        router_id="198.18.45.2",
        local_addresses=["198.18.45.2", "fd00:198:18:45::2"],
        neighbors=[PeerNeighbor("198.18.45.1", PEER_ASN, hold_time=30)],
    )
    prefixes = ["10.244.45.0/26", "fd00:10:244:45::/64"]
    bird.announce(prefixes)
    bird.start()
    ours = RoutemeshSpeaker(
        lab,
        rr,
        PEER_ASN,
        "198.18.45.1",
        [
            OurNeighbor(
                "198.18.45.2",
                PEER_ASN,
                families=FAMILIES,
                hold_time=30,
                extra={"route-reflector-client": True},
            )
        ],
        listen=["198.18.45.1"],
        extra_global={"cluster-id": "198.18.45.1"},
        extra_toml=fib,
    )
    ours.start()
    wait_for(
        lambda: all(ours.best(p) for p in prefixes),
        timeout=60,
        what="the reflector's best paths from its client",
        describe=ours.log_text,
    )
    wait_for(
        lambda: "initial convergence" in ours.log_text(),
        timeout=60,
        what="initial convergence",
        describe=ours.log_text,
    )
    if fib:
        want = {"10.244.45.0/26": ["198.18.45.2"], "fd00:10:244:45::/64": ["fd00:198:18:45::2"]}
        wait_for(
            lambda: kernel_routes(rr, 4) | kernel_routes(rr, 6) == want,
            timeout=30,
            what="the reflector's routes in its kernel with [fib] enabled = true",
            describe=ours.log_text,
        )
    else:
        assert "fib: disabled" in ours.log_text()
        # Nothing of ours, and nothing at these prefixes from anyone.
        assert kernel_route_count(rr, 4) == kernel_route_count(rr, 6) == 0
        for version, prefix in ((4, prefixes[0]), (6, prefixes[1])):
            assert kernel_routes(rr, version, proto=None, prefix=prefix) == {}
    assert _fib_log_problems(ours) == []


# -- persist -----------------------------------------------------------------------------------


@pytest.mark.parametrize("persist", [True, False], ids=["persist", "no-persist"])
def test_sigterm_leaves_our_routes_with_persist_and_removes_them_without(
    lab: Lab, persist: bool
) -> None:
    _require()
    dut, peer = lab.netns(), lab.netns()
    lab.veth(dut, peer, ["198.18.48.1/24", "fd00:198:18:48::1/64"],
             ["198.18.48.2/24", "fd00:198:18:48::2/64"])  # fmt: skip
    bird = _bird(peer, "198.18.48.2", "fd00:198:18:48::2", "198.18.48.1")
    bird.announce(["10.244.48.0/26", "fd00:10:244:48::/64"])
    bird.start()
    flag = "true" if persist else "false"
    ours = _ours(
        lab, dut, "198.18.48.1", ["198.18.48.2"], fib=f"[fib]\nenabled = true\npersist = {flag}\n"
    )
    ours.start()
    want = {"10.244.48.0/26": ["198.18.48.2"], "fd00:10:244:48::/64": ["fd00:198:18:48::2"]}

    def kernel() -> dict[str, list[str]]:
        return kernel_routes(dut, 4) | kernel_routes(dut, 6)

    wait_for(lambda: kernel() == want, timeout=60, what="our routes", describe=ours.log_text)
    assert ours.stop() == 0
    assert kernel() == (want if persist else {})
    assert _fib_log_problems(ours) == []
