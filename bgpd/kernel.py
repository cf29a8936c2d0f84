"""The bridge between the RIB and the kernel FIB: best paths in, kernel routes out, and
next-hop reachability back to the decision process.

The RIB calls ``sink(family, prefix, paths)`` for every Loc-RIB change (multipath set, best
first; None when gone), or ``sink_batch(family, [(prefix, entry), ...])`` once per decided
slice. The bridge turns the paths' next hops into one ``Route`` through a forwarding policy:
plain gateways for a standalone bgpd, the pool's tunnel rules for a node
(``agent.routing.forward_route``). Locally originated paths are never installed: a node's own
blocks get blackholes, which the node hands in as static routes.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Callable, Mapping, Sequence

from bgpd.fib.manager import FibManager
from bgpd.fib.types import Hops, NextHop, Prefix, Route
from bgpd.speaker.rib import Entry
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


def _gateways_of(paths: Sequence[RibPath]) -> tuple[int, ...]:
    """The distinct next hops of paths learnt from peers, in the order given (best first)."""
    seen: list[int] = []
    for path in paths:
        if path.source.local or not path.next_hop:
            continue
        gw = path.next_hop[0]
        if gw not in seen:
            seen.append(gw)
    return tuple(seen)


def _address(version: int, value: int) -> IPAddress:
    return ipaddress.IPv4Address(value) if version == 4 else ipaddress.IPv6Address(value)


class KernelRoutes:
    """Feeds one FibManager from the RIB; see the module docstring.

    With the ``direct`` policy it hands the FIB one shared next-hop set per distinct set of
    gateways, and keeps nothing per prefix itself: the FIB's routes are the gateways then
    (``learned`` only holds those hidden under a static route, and is rebuilt from the FIB
    if another policy comes). Any other policy needs the gateways of every prefix to
    re-derive it, and ``learned`` keeps them, one shared tuple of ints per distinct set.
    No address object, route or tuple is built per prefix on the way to the kernel.
    """

    def __init__(self, fib: FibManager, forward: ForwardPolicy = direct) -> None:
        self.fib = fib
        self.forward = forward
        # What BGP wants per prefix (its gateways), kept so a policy change can re-derive all;
        # with ``direct``, only where a static route hides it (the FIB holds the rest).
        self.learned: dict[Prefix, tuple[int, ...]] = {}
        self._keep_all = forward is not direct
        self.static: dict[Prefix, Route] = {}
        self.reachability_changed: Callable[[], None] | None = None
        self._recheck: asyncio.Handle | None = None
        self._gateway_sets: dict[tuple[int, ...], tuple[int, ...]] = {}
        self._direct_hops: dict[tuple[int, tuple[int, ...]], Hops] = {}
        self._last: tuple[int, tuple[int, ...], Hops] = (0, (), ())

    # -- from the RIB --------------------------------------------------------------------------

    def sink(
        self, family: Family, prefix: tuple[int, int], paths: tuple[RibPath, ...] | None
    ) -> None:
        version = 4 if family.afi == AFI_IPV4 else 6
        key: Prefix = (version, prefix[0], prefix[1])
        gateways: tuple[int, ...] = ()
        if paths:
            if len(paths) == 1:
                path = paths[0]
                if not path.source.local and path.next_hop:
                    gateways = (path.next_hop[0],)
            else:
                gateways = _gateways_of(paths)
        if gateways:
            gateways = self._gateway_sets.setdefault(gateways, gateways)
        if not self.static and not self._keep_all:
            # The common case, _push inlined: direct policy, no static route to hide under.
            if not gateways:
                self.fib.withdraw(key)
                return
            last = self._last
            if gateways is last[1] and version == last[0]:
                self.fib.want(key, last[2])
                return
        elif self._keep_all or key in self.static:
            if gateways:
                self.learned[key] = gateways
            else:
                self.learned.pop(key, None)
        self._push(key, gateways)

    def sink_batch(
        self, family: Family, items: Sequence[tuple[tuple[int, int], Entry | None]]
    ) -> None:
        """``sink`` for one decided slice of one family: (prefix, Loc-RIB entry) pairs, an
        entry standing for its multipath set (None, or no best path: gone). The FIB gets the
        slice in one call, as runs of prefixes that share next hops, so the per-prefix work is
        one loop here and one in the manager (500 prefixes of an UPDATE share one run)."""
        if self.static or self._keep_all:
            # Statics to hide under, or a policy that needs every prefix's gateways kept.
            for prefix, entry in items:
                paths = None
                if entry is not None and entry.best is not None:
                    paths = entry.multipath
                self.sink(family, prefix, paths)
            return
        version = 4 if family.afi == AFI_IPV4 else 6
        # The RIB's own (addr, len) key objects go to the FIB: it keeps them as its keys.
        runs: list[tuple[Hops | None, list[tuple[int, int]]]] = []
        run: list[tuple[int, int]] = []
        run_hops: object = runs  # no run yet: matches no Hops and not None
        last_gw = -1
        last_hops: Hops | None = None
        for prefix, entry in items:
            hops: Hops | None = None
            if entry is None:
                pass
            elif entry.__class__ is RibPath:
                nh = entry.next_hop  # type: ignore[union-attr]
                if nh and not entry.source.local:  # type: ignore[union-attr]
                    gw = nh[0]
                    if gw == last_gw:
                        hops = last_hops
                    else:
                        hops = last_hops = self._hops(version, (gw,))
                        last_gw = gw
            elif entry.best is not None:
                gateways = _gateways_of(entry.multipath)  # type: ignore[union-attr]
                if gateways:
                    hops = self._hops(version, gateways)
            if hops is not run_hops:
                run = []
                runs.append((hops, run))
                run_hops = hops
            run.append(prefix)
        self.fib.want_runs(version, runs)

    def _hops(self, version: int, gateways: tuple[int, ...]) -> Hops:
        """The one shared next-hop set of the direct policy for these gateways."""
        gateways = self._gateway_sets.setdefault(gateways, gateways)
        found = self._direct_hops.get((version, gateways))
        if found is None:
            found = Route((version, 0, 0), tuple(NextHop(gw) for gw in gateways)).nexthops
            self._direct_hops[(version, gateways)] = found
        return found

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
        if not self._keep_all:
            # BGP's route there goes into hiding: take its gateways back from the FIB.
            for key in routes.keys() - self.static.keys():
                gateways = self._from_fib(self.fib.latest_hops(key))
                if gateways:
                    self.learned[key] = gateways
        gone = self.static.keys() - routes.keys()
        self.static = dict(routes)
        for key in gone:
            gateways = self.learned.get(key, ())
            if not self._keep_all:
                self.learned.pop(key, None)
            self._push(key, gateways)
        for key in routes:
            self._push(key)

    def set_forward(self, forward: ForwardPolicy) -> None:
        """A new forwarding policy (pools or nodes changed): re-derive every learned route."""
        if not self._keep_all:
            for key, hops in self.fib.latest_routes():
                if key not in self.static:
                    gateways = self._from_fib(hops)
                    if gateways:
                        self.learned[key] = gateways
        self.forward = forward
        self._keep_all = forward is not direct
        for key in list(self.learned):
            self._push(key, self.learned[key])
        if not self._keep_all:
            self.learned = {k: v for k, v in self.learned.items() if k in self.static}

    def _from_fib(self, hops: Hops | None) -> tuple[int, ...]:
        """The gateways a ``direct`` route's next hops were made from."""
        if not hops:
            return ()
        gateways = tuple(h.gateway for h in hops if h.gateway is not None)
        return self._gateway_sets.setdefault(gateways, gateways)

    def _push(self, key: Prefix, gateways: tuple[int, ...] | None = None) -> None:
        if self.static:
            route = self.static.get(key)
            if route is not None:
                self.fib.update(route)
                return
        if gateways is None:
            gateways = self.learned.get(key, ())  # a forward policy needs them all kept
        if not gateways:
            self.fib.withdraw(key)
            return
        version = key[0]
        if self.forward is direct:
            last = self._last
            if gateways is last[1] and version == last[0]:
                hops = last[2]
            else:
                found = self._direct_hops.get((version, gateways))
                if found is None:
                    found = Route(key, tuple(NextHop(gw) for gw in gateways)).nexthops
                    self._direct_hops[(version, gateways)] = found
                hops = found
                self._last = (version, gateways, hops)
            self.fib.want(key, hops)
            return
        route = self.forward(key, tuple(_address(version, gw) for gw in gateways))
        if route is None:
            self.fib.withdraw(key)
        else:
            self.fib.update(route)
