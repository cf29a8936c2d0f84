"""PrefixTable: a mapping keyed by the FIB's (version, addr, len) prefixes that stores each IP
version's entries under (addr, len), so it can share the RIB's own key objects."""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping
from typing import TypeVar

from bgpd.fib.types import Prefix

V = TypeVar("V")

_MISSING = object()


class PrefixTable(MutableMapping[Prefix, V]):
    """``table[(version, addr, len)]`` as a dict would have it; ``tables[version]`` is the
    dict keyed by ``(addr, len)`` underneath.

    Half a million routes keyed by a (version, addr, len) tuple each cost 64 bytes per route
    for the key alone, while the RIB already holds an ``(addr, len)`` tuple per prefix: keyed
    by that very object (``tables[v][rib_key] = ...``), a route's key costs nothing here.
    Hot paths use ``tables``; everything else uses the mapping interface (which builds the
    3-tuples it hands out).
    """

    __slots__ = ("tables",)

    def __init__(self) -> None:
        self.tables: dict[int, dict[tuple[int, int], V]] = {4: {}, 6: {}}

    def __getitem__(self, prefix: Prefix) -> V:
        return self.tables[prefix[0]][(prefix[1], prefix[2])]

    def get(self, prefix: Prefix, default: object = None) -> V | None:  # type: ignore[override]
        table = self.tables.get(prefix[0])
        if table is None:
            return default  # type: ignore[return-value]
        return table.get((prefix[1], prefix[2]), default)  # type: ignore[arg-type]

    def __setitem__(self, prefix: Prefix, value: V) -> None:
        self.tables[prefix[0]][(prefix[1], prefix[2])] = value

    def __delitem__(self, prefix: Prefix) -> None:
        del self.tables[prefix[0]][(prefix[1], prefix[2])]

    def pop(self, prefix: Prefix, default: object = _MISSING) -> V:  # type: ignore[override]
        table = self.tables.get(prefix[0])
        if table is not None:
            found = table.pop((prefix[1], prefix[2]), _MISSING)
            if found is not _MISSING:
                return found  # type: ignore[return-value]
        if default is _MISSING:
            raise KeyError(prefix)
        return default  # type: ignore[return-value]

    def __contains__(self, prefix: object) -> bool:
        if not isinstance(prefix, tuple) or len(prefix) != 3:
            return False
        table = self.tables.get(prefix[0])
        return table is not None and (prefix[1], prefix[2]) in table

    def __iter__(self) -> Iterator[Prefix]:
        for version, table in self.tables.items():
            for addr, length in table:
                yield (version, addr, length)

    def items(self) -> Iterator[tuple[Prefix, V]]:  # type: ignore[override]
        for version, table in self.tables.items():
            for (addr, length), value in table.items():
                yield (version, addr, length), value

    def values(self) -> Iterator[V]:  # type: ignore[override]
        for table in self.tables.values():
            yield from table.values()

    def __len__(self) -> int:
        return sum(len(t) for t in self.tables.values())

    def __bool__(self) -> bool:
        return any(self.tables.values())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, PrefixTable):
            return self.tables == other.tables
        if isinstance(other, dict):
            return len(self) == len(other) and all(
                p in self and self[p] == v for p, v in other.items()
            )
        return NotImplemented

    def __repr__(self) -> str:
        return f"PrefixTable({dict(self.items())!r})"
