"""The RIB containers: Adj-RIB-In per peer and family, the Loc-RIB, and Adj-RIB-Out per peer.

Paths are keyed compactly: a prefix is `(int addr, int len)`, a received NLRI adds its ADD-PATH
path id. Attribute sets are interned (`AttrInterner`) so that the thousands of routes a peer sends
with one attribute set share a single `PathAttributes` object.

The decision itself is not here (see `bestpath.py`): a `Destination` holds every candidate path of
one prefix and the outcome of the last decision. Nothing in this module knows about reflection or
export; that is `bgpd.reflector.export`.

FIB hook: `LocRib.decide(...)` reports, for each prefix whose outcome changed, the new multipath
set (best first) or None when the prefix is gone; the daemon forwards exactly that to its optional
`route_sink(family, prefix, paths | None)`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from bgpd.speaker.attributes import PathAttributes
from bgpd.speaker.types import NLRI, Family, Prefix


@dataclass(frozen=True, slots=True)
class Source:
    """Where a path came from: one peer session (or ourselves, `local`), as best path needs it.

    A new Source is made for each session, so stale paths from the previous session of the same
    peer keep the router-id they were learned with; `key` (the peer's address) stays the same.
    """

    key: str
    address: int
    router_id: int
    asn: int
    ebgp: bool
    rr_client: bool = False
    local: bool = False


class Path:
    """One candidate route for one prefix. Mutable only by the RIB: `stale` and `tx_id`."""

    __slots__ = ("attrs", "next_hop", "path_id", "source", "stale", "tx_id")

    def __init__(
        self,
        source: Source,
        attrs: PathAttributes,
        next_hop: tuple[int, ...],
        path_id: int = 0,
    ) -> None:
        self.source = source
        self.path_id = path_id
        self.attrs = attrs
        self.next_hop = next_hop
        self.stale = False
        # Our own ADD-PATH id for this path when we send it on; unique within its Destination.
        self.tx_id = 0

    @property
    def nh(self) -> int | None:
        return self.next_hop[0] if self.next_hop else None

    def __repr__(self) -> str:
        return f"Path({self.source.key}#{self.path_id} nh={self.next_hop} {self.attrs})"


# A decision outcome: (best path or None, reason it won, multipath set best first).
Outcome = tuple[Path | None, str, tuple[Path, ...]]
NO_ROUTE: Outcome = (None, "", ())


class Destination:
    """Every candidate path of one prefix and the last decision over them."""

    __slots__ = ("best", "multipath", "paths", "reason")

    def __init__(self) -> None:
        self.paths: list[Path] = []
        self.best: Path | None = None
        self.reason = ""
        self.multipath: tuple[Path, ...] = ()

    def add(self, path: Path) -> Path | None:
        """Insert or replace the path of the same (source, path id); returns the replaced one."""
        for i, old in enumerate(self.paths):
            if old.source.key == path.source.key and old.path_id == path.path_id:
                path.tx_id = old.tx_id
                self.paths[i] = path
                return old
        used = {p.tx_id for p in self.paths}
        tx = 1
        while tx in used:
            tx += 1
        path.tx_id = tx
        self.paths.append(path)
        return None

    def remove(self, key: str, path_id: int) -> Path | None:
        for i, old in enumerate(self.paths):
            if old.source.key == key and old.path_id == path_id:
                del self.paths[i]
                return old
        return None


class AttrInterner:
    """One shared object per distinct attribute set, across every peer. Cleared when full."""

    def __init__(self, maxsize: int = 1 << 18) -> None:
        self.maxsize = maxsize
        self._table: dict[PathAttributes, PathAttributes] = {}

    def __len__(self) -> int:
        return len(self._table)

    def intern(self, attrs: PathAttributes) -> PathAttributes:
        got = self._table.get(attrs)
        if got is not None:
            return got
        if len(self._table) >= self.maxsize:
            self._table.clear()
        self._table[attrs] = attrs
        return attrs


class AdjRibIn:
    """What one peer sent us and we accepted (post import policy), per family, by NLRI."""

    def __init__(self) -> None:
        self.tables: dict[Family, dict[NLRI, Path]] = {}
        # Received but refused (loop checks, import filter): counted for status, never used.
        self.rejected: dict[Family, set[NLRI]] = {}

    def table(self, fam: Family) -> dict[NLRI, Path]:
        t = self.tables.get(fam)
        if t is None:
            t = self.tables[fam] = {}
        return t

    def accepted_count(self, fam: Family | None = None) -> int:
        if fam is not None:
            return len(self.tables.get(fam, ()))
        return sum(len(t) for t in self.tables.values())

    def received_count(self, fam: Family | None = None) -> int:
        if fam is not None:
            return self.accepted_count(fam) + len(self.rejected.get(fam, ()))
        return self.accepted_count() + sum(len(r) for r in self.rejected.values())

    def clear(self, fam: Family | None = None) -> None:
        if fam is None:
            self.tables.clear()
            self.rejected.clear()
        else:
            self.tables.pop(fam, None)
            self.rejected.pop(fam, None)


# What one prefix was last sent as: (our tx path id or 0, attributes, next hop) per path.
Sent = tuple[tuple[int, PathAttributes, tuple[int, ...]], ...]


class AdjRibOut:
    """What we last sent one peer: per family, prefix -> the paths sent (one without ADD-PATH).

    It is the truth the next diff is taken against, so a withdraw is only ever sent for
    something the peer holds from us.
    """

    def __init__(self) -> None:
        self.tables: dict[Family, dict[Prefix, Sent]] = {}
        # Paths sent per family (a prefix counts once per path with ADD-PATH).
        self.sent: dict[Family, int] = {}

    def table(self, fam: Family) -> dict[Prefix, Sent]:
        t = self.tables.get(fam)
        if t is None:
            t = self.tables[fam] = {}
        return t

    def count(self, fam: Family | None = None) -> int:
        if fam is not None:
            return self.sent.get(fam, 0)
        return sum(self.sent.values())

    def clear(self) -> None:
        self.tables.clear()
        self.sent.clear()


Decider = Callable[[Family, list[Path]], Outcome]


class LocRib:
    """The Loc-RIB: per family, prefix -> Destination. Changes are marked dirty and decided later.

    `update`/`withdraw` only touch candidates; `decide(prefixes)` runs the decision for the dirty
    ones and returns those whose outcome changed, so a burst of UPDATEs costs one decision per
    prefix rather than one per message.
    """

    def __init__(self, decider: Decider) -> None:
        self.decider = decider
        self.tables: dict[Family, dict[Prefix, Destination]] = {}
        self.dirty: dict[Family, dict[Prefix, None]] = {}

    def table(self, fam: Family) -> dict[Prefix, Destination]:
        t = self.tables.get(fam)
        if t is None:
            t = self.tables[fam] = {}
        return t

    def _mark(self, fam: Family, prefix: Prefix) -> None:
        d = self.dirty.get(fam)
        if d is None:
            d = self.dirty[fam] = {}
        d[prefix] = None

    def update(self, fam: Family, prefix: Prefix, path: Path) -> None:
        table = self.table(fam)
        dest = table.get(prefix)
        if dest is None:
            dest = table[prefix] = Destination()
        dest.add(path)
        self._mark(fam, prefix)

    def withdraw(self, fam: Family, prefix: Prefix, key: str, path_id: int) -> bool:
        dest = self.tables.get(fam, {}).get(prefix)
        if dest is None or dest.remove(key, path_id) is None:
            return False
        self._mark(fam, prefix)
        return True

    def mark_all(self) -> None:
        """Re-run the decision everywhere (next-hop reachability or policy changed)."""
        for fam, table in self.tables.items():
            for prefix in table:
                self._mark(fam, prefix)

    def pending(self) -> int:
        return sum(len(d) for d in self.dirty.values())

    def take_dirty(self, limit: int) -> list[tuple[Family, Prefix]]:
        """Up to `limit` dirty prefixes, removed from the dirty set."""
        out: list[tuple[Family, Prefix]] = []
        for fam in list(self.dirty):
            d = self.dirty[fam]
            room = limit - len(out)
            if len(d) <= room:
                out.extend((fam, p) for p in d)
                del self.dirty[fam]
            else:
                # popitem is O(1); taking from the front of a dict that keeps shrinking there
                # makes every later scan skip the holes (quadratic over a 100k burst).
                pop = d.popitem
                out.extend((fam, pop()[0]) for _ in range(room))
            if len(out) >= limit:
                break
        return out

    def decide(
        self, items: Iterable[tuple[Family, Prefix]]
    ) -> list[tuple[Family, Prefix, Destination | None, bool]]:
        """Decide each (family, prefix); returns (fam, prefix, dest or None if gone, fib_changed).

        fib_changed says the best/multipath set changed, which is what the FIB needs to know.
        Every listed prefix is returned: even with the same best, the set of paths (ADD-PATH)
        or their attributes may differ.
        """
        out = []
        for fam, prefix in items:
            table = self.tables.get(fam)
            dest = table.get(prefix) if table is not None else None
            if dest is None:
                continue
            before = dest.multipath
            before_best = dest.best
            before_attrs = before_best.attrs if before_best is not None else None
            if dest.paths:
                dest.best, dest.reason, dest.multipath = self.decider(fam, dest.paths)
            else:
                dest.best, dest.reason, dest.multipath = NO_ROUTE
            changed = dest.multipath != before or (
                dest.best is not None and dest.best.attrs is not before_attrs
            )
            if not dest.paths:
                del table[prefix]  # type: ignore[union-attr]
                out.append((fam, prefix, None, bool(before)))
            else:
                out.append((fam, prefix, dest, changed))
        return out

    def destinations(self, fam: Family) -> Iterator[tuple[Prefix, Destination]]:
        yield from self.tables.get(fam, {}).items()

    def count(self) -> int:
        return sum(len(t) for t in self.tables.values())
