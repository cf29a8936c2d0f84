"""Next-hop resolution: is a BGP gateway reachable, and through which connected neighbour?

A longest-prefix match over the kernel's main-table routes of every protocol but ours (connected,
static, IGP), fed by a dump and the route/link monitor. A gateway behind another gateway is
followed recursively; routes of ours never resolve a next hop, so BGP cannot recurse on itself.
"""

from __future__ import annotations

from collections.abc import Iterable

from bgpd.fib.types import RTN_UNICAST, KernelRoute, bits

MAX_DEPTH = 4
# Route types that make a destination unreachable rather than forwardable.
_DEAD_END = frozenset({6, 7, 8})  # blackhole, unreachable, prohibit


class NextHopResolver:
    """Longest-prefix match over non-ours routes; ``resolve`` answers per gateway (cached)."""

    def __init__(self, protocol: int) -> None:
        self.protocol = protocol
        # (version, length) -> network address -> routes at that prefix
        self._routes: dict[tuple[int, int], dict[int, list[KernelRoute]]] = {}
        self._lengths: dict[int, list[int]] = {4: [], 6: []}
        self.down: set[int] = set()
        self._cache: dict[tuple[int, int], int | None] = {}

    def load(self, kernel: Iterable[KernelRoute]) -> None:
        """Start over from a dump of the main table."""
        self._routes.clear()
        self._cache.clear()
        for kr in kernel:
            self._add(kr)
        self._relength()

    def route_changed(self, kr: KernelRoute, deleted: bool) -> bool:
        """Apply a monitor event; True if it may change a resolution."""
        if kr.protocol == self.protocol or (kr.kind != RTN_UNICAST and kr.kind not in _DEAD_END):
            return False
        if deleted:
            bucket = self._routes.get((kr.prefix[0], kr.prefix[2]), {})
            routes = bucket.get(kr.prefix[1], [])
            keep = [r for r in routes if (r.protocol, r.metric) != (kr.protocol, kr.metric)]
            if len(keep) == len(routes):
                return False
            if keep:
                bucket[kr.prefix[1]] = keep
            else:
                bucket.pop(kr.prefix[1], None)
        else:
            self._add(kr)
        self._relength()
        self._cache.clear()
        return True

    def link_changed(self, index: int, up: bool) -> bool:
        """A device went up or down; True if that changed anything."""
        was_down = index in self.down
        if up:
            self.down.discard(index)
        else:
            self.down.add(index)
        if was_down == (not up):
            return False
        self._cache.clear()
        return True

    def resolve(self, version: int, gateway: int) -> int | None:
        """The directly connected gateway to use for ``gateway`` (itself when connected), or
        None when nothing but our own routes (or a blackhole) leads there."""
        key = (version, gateway)
        if key not in self._cache:
            self._cache[key] = self._resolve(version, gateway, 0)
        return self._cache[key]

    # -- internals -----------------------------------------------------------------------------

    def _add(self, kr: KernelRoute) -> None:
        if kr.protocol == self.protocol or (kr.kind != RTN_UNICAST and kr.kind not in _DEAD_END):
            return
        bucket = self._routes.setdefault((kr.prefix[0], kr.prefix[2]), {})
        routes = [
            r
            for r in bucket.get(kr.prefix[1], [])
            if (r.protocol, r.metric) != (kr.protocol, kr.metric)
        ]
        routes.append(kr)
        routes.sort(key=lambda r: r.metric)
        bucket[kr.prefix[1]] = routes

    def _relength(self) -> None:
        for version in (4, 6):
            self._lengths[version] = sorted(
                (length for (v, length), b in self._routes.items() if v == version and b),
                reverse=True,
            )

    def _usable(self, kr: KernelRoute) -> bool:
        return not kr.oifs or any(i not in self.down for i in kr.oifs)

    def _resolve(self, version: int, gateway: int, depth: int) -> int | None:
        if depth > MAX_DEPTH:
            return None
        width = bits(version)
        for length in self._lengths[version]:
            net = gateway & ~((1 << (width - length)) - 1) & ((1 << width) - 1)
            for kr in self._routes[(version, length)].get(net, ()):
                if not self._usable(kr):
                    continue
                if kr.kind in _DEAD_END:
                    return None
                if kr.route is None:
                    continue
                via = [h.gateway for h in kr.route.nexthops if h.gateway is not None]
                if not via:
                    return gateway  # a device route: the gateway is on that link
                for hop in via:
                    resolved = self._resolve(version, hop, depth + 1)
                    if resolved is not None:
                        return resolved
                return None
        return None
