"""The RIB-to-FIB bridge: paths become kernel routes, statics win, withdrawals follow."""

from __future__ import annotations

import ipaddress

from bgpd.fib.types import NextHop, Route, hops_of, parse_prefix
from bgpd.kernel import KernelRoutes, direct
from bgpd.speaker.attributes import PathAttributes
from bgpd.speaker.rib import Path, Source
from bgpd.speaker.types import IPV4_UNICAST, IPV6_UNICAST


class RecordingFib:
    """Just the FibManager calls the bridge makes, with the last word per prefix kept."""

    def __init__(self) -> None:
        self.wanted: dict = {}

    def update(self, route: Route) -> None:
        self.wanted[route.prefix] = route

    def want(self, prefix, hops) -> None:
        self.wanted[prefix] = Route(prefix, hops, blackhole=not hops)

    def latest_hops(self, prefix):
        route = self.wanted.get(prefix)
        return None if route is None else hops_of(route)

    def latest_routes(self):
        return [(p, hops_of(r)) for p, r in self.wanted.items() if r is not None]

    def withdraw(self, prefix) -> None:
        self.wanted[prefix] = None

    def reachable(self, version: int, gateway: int) -> bool:
        return gateway != int(ipaddress.ip_address("198.18.0.99"))


def path(nh: str, *, local: bool = False) -> Path:
    src = Source("198.18.0.3", 1, 1, 64512, False, local=local)
    return Path(src, PathAttributes(origin=0), () if local else (int(ipaddress.ip_address(nh)),))


P = parse_prefix("10.244.1.0/26")
KEY = (P[1], P[2])


def test_paths_become_a_multipath_route_and_withdrawals_remove_it() -> None:
    fib = RecordingFib()
    kr = KernelRoutes(fib)  # type: ignore[arg-type]
    kr.sink(IPV4_UNICAST, KEY, (path("198.18.0.3"), path("198.18.0.4"), path("198.18.0.3")))
    route = fib.wanted[P]
    assert [h.gateway for h in route.nexthops] == [
        int(ipaddress.ip_address("198.18.0.3")),
        int(ipaddress.ip_address("198.18.0.4")),
    ]
    kr.sink(IPV4_UNICAST, KEY, None)
    assert fib.wanted[P] is None
    assert P not in kr.learned


def test_local_paths_are_never_installed_and_statics_win() -> None:
    fib = RecordingFib()
    kr = KernelRoutes(fib)  # type: ignore[arg-type]
    kr.sink(IPV4_UNICAST, KEY, (path("", local=True),))
    assert fib.wanted[P] is None
    kr.set_static({P: Route(P, blackhole=True)})
    assert fib.wanted[P].blackhole
    # A peer announcing our own block back must not replace the blackhole.
    kr.sink(IPV4_UNICAST, KEY, (path("198.18.0.3"),))
    assert fib.wanted[P].blackhole
    kr.set_static({})
    assert fib.wanted[P].nexthops == (NextHop(int(ipaddress.ip_address("198.18.0.3"))),)


def test_a_new_forwarding_policy_rederives_every_learned_route() -> None:
    fib = RecordingFib()
    kr = KernelRoutes(fib)  # type: ignore[arg-type]
    kr.sink(IPV4_UNICAST, KEY, (path("198.18.0.3"),))
    kr.set_forward(lambda prefix, gws: Route(prefix, (NextHop(1, "vxlan.calico", True),)))
    assert fib.wanted[P].nexthops[0].device == "vxlan.calico"
    kr.set_forward(lambda prefix, gws: None)
    assert fib.wanted[P] is None
    kr.set_forward(direct)
    assert fib.wanted[P] is not None


def test_reachability_maps_families_to_ip_versions() -> None:
    kr = KernelRoutes(RecordingFib())  # type: ignore[arg-type]
    assert kr.reachable(IPV4_UNICAST, int(ipaddress.ip_address("198.18.0.3")))
    assert not kr.reachable(IPV4_UNICAST, int(ipaddress.ip_address("198.18.0.99")))
    assert kr.reachable(IPV6_UNICAST, 1)
