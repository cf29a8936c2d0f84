"""The FIB interface every writer implements (kernel over netlink, or a fake for logic tests).

``apply`` writes, ``dump`` reads one table, ``reconcile`` makes the table hold exactly what is
desired among our routes. Kernel events reach a listener as plain values (KernelEvent).
"""

from __future__ import annotations

import asyncio
import errno
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field

from bgpd.fib.reconcile import Conflict, plan
from bgpd.fib.types import Hops, KernelRoute, Prefix, Route, RouteError, hops_of


@dataclass(frozen=True, slots=True)
class RouteEvent:
    """The kernel added/changed (``deleted`` False) or removed a route, in any table."""

    route: KernelRoute
    deleted: bool


@dataclass(frozen=True, slots=True)
class LinkEvent:
    """A device appeared, changed state or went away (``up`` False when removed)."""

    index: int
    name: str
    up: bool
    removed: bool = False


@dataclass(frozen=True, slots=True)
class Overrun:
    """Events were lost (ENOBUFS on the monitor socket): only a full resync is safe."""


KernelEvent = RouteEvent | LinkEvent | Overrun


@dataclass(slots=True)
class ReconcileReport:
    """What one reconcile did."""

    added: int = 0
    replaced: int = 0
    deleted: int = 0
    conflicts: list[Conflict] = field(default_factory=list)
    errors: list[RouteError] = field(default_factory=list)

    @property
    def repairs(self) -> int:
        return self.added + self.replaced + self.deleted


class Fib(ABC):
    """A table of routes with our protocol number in it.

    Subclasses implement ``_write`` and ``_dump``; this class tracks which prefixes are ours in
    the kernel so that a write to one of them replaces it, while a write to any other prefix
    is exclusive and so can never overwrite another protocol's route.

    A FibManager keeps that knowledge itself (``installed``) and writes through ``write``
    with the flag spelled out; it turns ``track_ours`` off, so that a 500k-route dump does
    not also build a set of every prefix.
    """

    def __init__(self, protocol: int, table: int, metric: int = 0) -> None:
        self.protocol = protocol
        self.table = table
        self.metric = metric
        self.ours: set[Prefix] = set()
        self.track_ours = True

    def kernel_metric(self, version: int) -> int:
        """The metric the kernel shows on our routes (IPv6 turns 0 into 1024)."""
        return self.metric or (1024 if version == 6 else 0)

    @abstractmethod
    async def _write(
        self, writes: list[tuple[Prefix, Hops, bool]], deletes: list[Prefix]
    ) -> list[RouteError]:
        """Write (prefix, hops, replace?) and delete prefixes; return every refusal."""

    @abstractmethod
    async def _dump(self, table: int) -> list[KernelRoute]:
        """Every route in ``table``, of every protocol."""

    async def dump(self, table: int | None = None) -> list[KernelRoute]:
        """Every route in ``table`` (default: ours), of every protocol."""
        table = self.table if table is None else table
        kernel = await self._dump(table)
        if table == self.table and self.track_ours:
            self.ours = {kr.prefix for kr in kernel if kr.protocol == self.protocol}
        return kernel

    def monitor(self, listener: Callable[[KernelEvent], None]) -> Callable[[], None]:
        """Call ``listener`` for kernel route/link events until the returned closer is called.

        The default has no events; a periodic reconcile is then the only repair.
        """
        return lambda: None

    def close(self) -> None:  # noqa: B027 - nothing to release unless a subclass holds sockets
        """Release sockets (the routes stay)."""

    async def write(
        self, writes: list[tuple[Prefix, Hops, bool]], deletes: list[Prefix]
    ) -> list[RouteError]:
        """Write (prefix, hops, replace?) as the caller says, delete ``deletes``; every error
        but the delete of a route already gone. ``ours`` is left alone."""
        errors = await self._write(writes, deletes)
        return [e for e in errors if not (e.op == "delete" and e.errno == errno.ESRCH)]

    def submit(
        self, writes: list[tuple[Prefix, Hops, bool]], deletes: list[Prefix]
    ) -> Awaitable[list[RouteError]]:
        """``write``, started now rather than when first awaited (a writer with its own
        thread hands it the work at once); await the result to learn the errors."""
        return asyncio.ensure_future(self.write(writes, deletes))

    async def apply(self, routes: Iterable[Route], deletes: Iterable[Prefix]) -> list[RouteError]:
        """Add or replace ``routes`` and delete ours at ``deletes``; return every error.

        Deleting a route that is already gone is not an error.
        """
        writes = [(r.prefix, hops_of(r), r.prefix in self.ours) for r in routes]
        dels = list(deletes)
        errors = await self._write(writes, dels)
        failed = {(e.prefix, e.op) for e in errors}
        real: list[RouteError] = []
        for prefix, _hops, replace in writes:
            if (prefix, "replace" if replace else "add") not in failed:
                self.ours.add(prefix)
        for e in errors:
            if e.op == "delete" and e.errno == errno.ESRCH:
                continue
            real.append(e)
        kept = {e.prefix for e in real if e.op == "delete"}
        for prefix in dels:
            if prefix not in kept:
                self.ours.discard(prefix)
        return real

    async def reconcile(self, desired: Mapping[Prefix, Route]) -> ReconcileReport:
        """Make our routes in the table exactly ``desired``; leave every other route alone."""
        kernel = await self.dump()
        p = plan(desired, kernel, self.protocol)
        errors = await self.apply(p.writes, p.deletes)
        return ReconcileReport(p.added, p.replaced, len(p.deletes), p.conflicts, errors)
