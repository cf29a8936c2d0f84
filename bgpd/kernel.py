"""The bridge between the RIB and the kernel FIB: best paths in, kernel routes out, and
next-hop reachability back to the decision process.

The RIB calls ``sink(family, prefix, paths)`` for every Loc-RIB change (multipath set, best
first; None when gone). The bridge turns the paths' next hops into one ``Route`` through a
forwarding policy: plain gateways for a standalone bgpd, the pool's tunnel rules for a node
(``agent.routing.forward_route``). Locally originated paths are never installed: a node's own
blocks get blackholes, which the node hands in as static routes.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Callable, Mapping, Sequence

from bgpd.fib.manager import FibManager
from bgpd.fib.types import NextHop, Prefix, Route
from bgpd.speaker.rib import Path as RibPath
from bgpd.speaker.types import AFI_IPV4, Family

log = logging.getLogger("routemesh.kernel")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# (kernel prefix, BGP next hops best first) -> the route to install, or None for none.
ForwardPolicy = Callable[[Prefix, Sequence[IPAddress]], Route | None]


def direct(prefix: Prefix, gateways: Sequence[IPAddress]) -> Route | None:
    """Install the BGP next hops as gateways, resolved by the kernel (BIRD's default)."""
    if not gateways:
        return None
    return Route(prefix, tuple(NextHop(int(gw)) for gw in gateways))


def _address(version: int, value: int) -> IPAddress:
    return ipaddress.IPv4Address(value) if version == 4 else ipaddress.IPv6Address(value)


class KernelRoutes:
    """Feeds one FibManager from the RIB; see the module docstring."""

    def __init__(self, fib: FibManager, forward: ForwardPolicy = direct) -> None:
        self.fib = fib
        self.forward = forward
        # What BGP wants per prefix (its gateways), kept so a policy change can re-derive all.
        self.learned: dict[Prefix, tuple[IPAddress, ...]] = {}
        self.static: dict[Prefix, Route] = {}
        self.reachability_changed: Callable[[], None] | None = None
        self._recheck: asyncio.Handle | None = None

    # -- from the RIB --------------------------------------------------------------------------

    def sink(
        self, family: Family, prefix: tuple[int, int], paths: tuple[RibPath, ...] | None
    ) -> None:
        version = 4 if family.afi == AFI_IPV4 else 6
        key: Prefix = (version, prefix[0], prefix[1])
        gateways: list[IPAddress] = []
        for path in paths or ():
            if path.source.local or not path.next_hop:
                continue
            gw = _address(version, path.next_hop[0])
            if gw not in gateways:
                gateways.append(gw)
        if gateways:
            self.learned[key] = tuple(gateways)
        else:
            self.learned.pop(key, None)
        self._push(key)

    def reachable(self, family: Family, next_hop: int) -> bool:
        """The decision process's first step: can the kernel reach this BGP next hop?"""
        return self.fib.reachable(4 if family.afi == AFI_IPV4 else 6, next_hop)

    def on_reachability(self, version: int, gateway: int, reachable: bool) -> None:
        """FibManager callback: a gateway came or went; re-run the decision once per burst."""
        log.info(
            "next hop %s is now %s",
            _address(version, gateway),
            "reachable" if reachable else "unreachable",
        )
        if self.reachability_changed is None or self._recheck is not None:
            return
        self._recheck = asyncio.get_running_loop().call_soon(self._rerun)

    def _rerun(self) -> None:
        self._recheck = None
        if self.reachability_changed is not None:
            self.reachability_changed()

    # -- from the node ------------------------------------------------------------------------

    def set_static(self, routes: Mapping[Prefix, Route]) -> None:
        """Routes the node wants regardless of BGP (blackholes for its blocks)."""
        gone = self.static.keys() - routes.keys()
        self.static = dict(routes)
        for key in gone:
            self._push(key)
        for key in routes:
            self._push(key)

    def set_forward(self, forward: ForwardPolicy) -> None:
        """A new forwarding policy (pools or nodes changed): re-derive every learned route."""
        self.forward = forward
        for key in list(self.learned):
            self._push(key)

    def _push(self, key: Prefix) -> None:
        route = self.static.get(key)
        if route is None:
            gateways = self.learned.get(key)
            route = self.forward(key, gateways) if gateways else None
        if route is None:
            self.fib.withdraw(key)
        else:
            self.fib.update(route)
