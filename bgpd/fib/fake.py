"""FakeFib: an in-memory kernel table with the kernel's rules that matter to us, for logic tests.

It refuses an exclusive add where a route of the same metric exists (EEXIST), deletes only our
protocol's route (ESRCH otherwise), echoes every change as an event like the route monitor, and
lets a test play the operator (``external_*``) or inject errors (``fail``).
"""

from __future__ import annotations

import asyncio
import errno
import os
from collections.abc import Callable

from bgpd.fib.base import Fib, KernelEvent, LinkEvent, RouteEvent
from bgpd.fib.types import (
    RTN_BLACKHOLE,
    RTN_UNICAST,
    Hops,
    KernelRoute,
    Prefix,
    Route,
    RouteError,
    route_of,
)


class FakeFib(Fib):
    """See the module docstring. ``tables[table][prefix]`` lists the routes at that prefix."""

    def __init__(self, protocol: int = 80, table: int = 254, metric: int = 0) -> None:
        super().__init__(protocol, table, metric)
        self.tables: dict[int, dict[Prefix, list[KernelRoute]]] = {}
        self.fail: dict[Prefix, int] = {}
        self.messages = 0
        self.batches = 0
        self._listeners: list[Callable[[KernelEvent], None]] = []

    # -- the Fib interface ---------------------------------------------------------------------

    async def _write(
        self, writes: list[tuple[Prefix, Hops, bool]], deletes: list[Prefix]
    ) -> list[RouteError]:
        self.batches += 1
        errors: list[RouteError] = []
        for prefix, hops, replace in writes:
            route = route_of(prefix, hops)
            self.messages += 1
            op = "replace" if replace else "add"
            code = self.fail.get(route.prefix) or self._put(route, replace)
            if code:
                errors.append(RouteError(route.prefix, op, code, _text(code), route))
        for prefix in deletes:
            self.messages += 1
            code = self.fail.get(prefix) or self._delete(self.table, prefix, self.protocol)
            if code:
                errors.append(RouteError(prefix, "delete", code, _text(code)))
        await asyncio.sleep(0)
        return errors

    async def _dump(self, table: int) -> list[KernelRoute]:
        await asyncio.sleep(0)
        return [kr for routes in self.tables.get(table, {}).values() for kr in routes]

    def kernel_metric(self, version: int) -> int:
        return self.metric

    def monitor(self, listener: Callable[[KernelEvent], None]) -> Callable[[], None]:
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    # -- inspection and the operator's hand -------------------------------------------------

    def ours_in_kernel(self) -> dict[Prefix, Route | None]:
        """Our routes in our table, by prefix."""
        return {
            kr.prefix: kr.route
            for routes in self.tables.get(self.table, {}).values()
            for kr in routes
            if kr.protocol == self.protocol
        }

    def external_add(
        self, route: Route, *, protocol: int = 4, table: int | None = None, metric: int = 0
    ) -> None:
        """Someone else adds a route (protocol 4 is `static`, 2 `kernel`, as `ip route` does)."""
        table = self.table if table is None else table
        kind = RTN_BLACKHOLE if route.blackhole else RTN_UNICAST
        kr = KernelRoute(route.prefix, protocol, table, metric, kind, route)
        routes = self.tables.setdefault(table, {}).setdefault(route.prefix, [])
        routes[:] = [r for r in routes if r.metric != metric]
        routes.append(kr)
        self._emit(RouteEvent(kr, deleted=False))

    def external_delete(self, prefix: Prefix, *, protocol: int | None = None) -> None:
        """``ip route del`` of the route at ``prefix`` (ours unless ``protocol`` says)."""
        self._delete(self.table, prefix, self.protocol if protocol is None else protocol)

    def link(self, index: int, name: str, up: bool) -> None:
        """A device changes state."""
        self._emit(LinkEvent(index, name, up))

    # -- the kernel's rules ----------------------------------------------------------------------

    def _put(self, route: Route, replace: bool) -> int:
        routes = self.tables.setdefault(self.table, {}).setdefault(route.prefix, [])
        same = [i for i, r in enumerate(routes) if r.metric == self.metric]
        kind = RTN_BLACKHOLE if route.blackhole else RTN_UNICAST
        kr = KernelRoute(route.prefix, self.protocol, self.table, self.metric, kind, route)
        if same and not replace:
            return errno.EEXIST
        if same:
            routes[same[0]] = kr
        else:
            routes.append(kr)
        self._emit(RouteEvent(kr, deleted=False))
        return 0

    def _delete(self, table: int, prefix: Prefix, protocol: int) -> int:
        routes = self.tables.get(table, {}).get(prefix, [])
        for i, r in enumerate(routes):
            if r.protocol == protocol:
                del routes[i]
                if not routes:
                    del self.tables[table][prefix]
                self._emit(RouteEvent(r, deleted=True))
                return 0
        return errno.ESRCH

    def _emit(self, event: KernelEvent) -> None:
        # The real monitor delivers from the event loop later, never inside the write call.
        if not self._listeners:
            return
        loop = asyncio.get_running_loop()
        for listener in list(self._listeners):
            loop.call_soon(listener, event)


def _text(code: int) -> str:
    return os.strerror(code)
