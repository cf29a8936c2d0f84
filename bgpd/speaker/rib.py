"""The RIB containers: Adj-RIB-In per peer and family, the Loc-RIB, and Adj-RIB-Out per peer.

Paths are keyed compactly: a prefix is `(int addr, int len)`, a received NLRI adds its ADD-PATH
path id. A received path is held once, in the Loc-RIB under its prefix; the Adj-RIB-In counts
a peer's accepted routes and keeps the refused NLRI. Attribute sets are interned (`AttrInterner`) so that the thousands of routes a peer sends
with one attribute set share a single `PathAttributes` object.

The decision itself is not here (see `bestpath.py`): a `Destination` holds every candidate path of
one prefix and the outcome of the last decision. Most prefixes have one path, which wins alone:
the Loc-RIB then stores that `Path` itself, decided as it is inserted (until a second path
comes; a Destination then stays until the prefix is gone), and a `Path` answers
`best`/`paths`/`multipath`/`reason` as such a Destination would, so readers need not care (about
200 bytes per route less, and no comparator chain). Nothing in this module knows about
reflection or export; that is `bgpd.reflector.export`.

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


ONLY_PATH = "only-path"
UNREACHABLE = "next-hop-reachable"


class Path:
    """One candidate route: a source, attributes and next hop, shared by every prefix of the
    UPDATE that carried it (one object per UPDATE, not per prefix: about 80 bytes per route).

    Mutable only by the RIB, and only as a whole: `stale` marks every prefix the path holds,
    which is what graceful restart and enhanced route refresh want (they mark all of a peer's
    routes of a family). Anything per prefix lives in the prefix's `Destination` (the ADD-PATH
    ids we send a path with); a lone path sends id 1.
    """

    __slots__ = ("attrs", "next_hop", "path_id", "source", "stale")

    # Stored bare in the Loc-RIB, a Path is the decided sole winner of its prefix.
    reason = ONLY_PATH
    txs = (1,)

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

    @property
    def nh(self) -> int | None:
        return self.next_hop[0] if self.next_hop else None

    @property
    def best(self) -> Path:
        return self

    @property
    def paths(self) -> tuple[Path, ...]:
        return (self,)

    @property
    def multipath(self) -> tuple[Path, ...]:
        return (self,)

    def __repr__(self) -> str:
        return f"Path({self.source.key}#{self.path_id} nh={self.next_hop} {self.attrs})"


# A decision outcome: (best path or None, reason it won, multipath set best first).
Outcome = tuple[Path | None, str, tuple[Path, ...]]
NO_ROUTE: Outcome = (None, "", ())


class Destination:
    """Every candidate path of one prefix and the last decision over them.

    `txs[i]` is the ADD-PATH id we send `paths[i]` with: unique within the prefix, kept while
    the same (source, path id) is replaced, reused once freed. It lives here, not on the Path,
    because one Path is shared by all the prefixes of its UPDATE.
    """

    __slots__ = ("best", "multipath", "paths", "reason", "txs")

    def __init__(self) -> None:
        self.paths: list[Path] = []
        self.txs: list[int] = []
        self.best: Path | None = None
        self.reason = ""
        self.multipath: tuple[Path, ...] = ()

    @classmethod
    def holding(cls, path: Path, best: bool) -> Destination:
        """A Destination for a prefix whose one path `path` was decided (best or unreachable)."""
        d = cls()
        d.paths.append(path)
        d.txs.append(1)
        if best:
            d.best, d.reason, d.multipath = path, ONLY_PATH, (path,)
        else:
            d.reason = UNREACHABLE
        return d

    def tx_of(self, path: Path) -> int:
        """The ADD-PATH id `path` is sent with for this prefix."""
        for p, tx in zip(self.paths, self.txs):
            if p is path:
                return tx
        raise KeyError(path)

    def add(self, path: Path) -> Path | None:
        """Insert or replace the path of the same (source, path id); returns the replaced one."""
        for i, old in enumerate(self.paths):
            if old.source.key == path.source.key and old.path_id == path.path_id:
                self.paths[i] = path
                return old
        used = self.txs
        tx = 1
        while tx in used:
            tx += 1
        self.paths.append(path)
        used.append(tx)
        return None

    def remove(self, key: str, path_id: int) -> Path | None:
        for i, old in enumerate(self.paths):
            if old.source.key == key and old.path_id == path_id:
                del self.paths[i]
                del self.txs[i]
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
        # One lookup (one hash of the attribute set) whether it is new or not.
        table = self._table
        got = table.setdefault(attrs, attrs)
        if got is attrs and len(table) > self.maxsize:
            table.clear()
            table[attrs] = attrs
        return got


class AdjRibIn:
    """What one peer sent us, per family: the routes it has accepted (post import policy) are
    counted here and held in the Loc-RIB only, each path under its source's key (a second
    table of them cost a dict entry per route, about 42 bytes at 500k); refused NLRI are kept.

    `LocRib.paths_of(family, key)` finds a peer's paths again (session down, graceful restart,
    enhanced route refresh), as BIRD walks its one table to flush a protocol's routes.
    """

    def __init__(self) -> None:
        self.accepted: dict[Family, int] = {}
        # Received but refused (loop checks, import filter): counted for status, never used.
        self.rejected: dict[Family, set[NLRI]] = {}

    def families(self) -> list[Family]:
        """Every family the peer holds routes in, accepted or refused."""
        return [f for f in {**self.accepted, **self.rejected} if self.received_count(f)]

    def counted(self, fam: Family, delta: int) -> None:
        """`delta` routes accepted (or, negative, gone) in `fam`."""
        if delta:
            self.accepted[fam] = self.accepted.get(fam, 0) + delta

    def accepted_count(self, fam: Family | None = None) -> int:
        if fam is not None:
            return self.accepted.get(fam, 0)
        return sum(self.accepted.values())

    def received_count(self, fam: Family | None = None) -> int:
        if fam is not None:
            return self.accepted_count(fam) + len(self.rejected.get(fam, ()))
        return self.accepted_count() + sum(len(r) for r in self.rejected.values())

    def clear(self, fam: Family | None = None) -> None:
        if fam is None:
            self.accepted.clear()
            self.rejected.clear()
        else:
            self.accepted.pop(fam, None)
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
Reachable = Callable[[Family, int], bool]
# A Loc-RIB slot: the decided sole path itself, or a Destination (see the module docstring).
Entry = Path | Destination
# A dirty prefix as `take_dirty` hands it out: with the entry its last decision left (None: none).
Dirty = tuple[Family, Prefix, Entry | None]


class LocRib:
    """The Loc-RIB: per family, prefix -> Path or Destination. Changes are marked dirty.

    `update`/`withdraw` touch candidates; a prefix whose only path is new or replaced is decided
    on the spot (the decision over one path is only the next-hop check). `decide(take_dirty(n))`
    decides the rest and returns every dirty prefix with whether its outcome changed, so a burst
    of UPDATEs costs one decision and one export per prefix rather than one per message.
    `reachable(family, nh)` is the decision's next-hop check (None: always reachable); it must be
    the same function the decider uses.
    """

    def __init__(self, decider: Decider, reachable: Reachable | None = None) -> None:
        self.decider = decider
        self.reachable = reachable
        self.tables: dict[Family, dict[Prefix, Entry]] = {}
        # Per family: prefix -> the entry its last decision left (its outcome is the "before").
        self.dirty: dict[Family, dict[Prefix, Entry | None]] = {}
        # Decisions made, one per dirty prefix decided, per family (read by the metrics).
        self.decisions: dict[Family, int] = {}

    def table(self, fam: Family) -> dict[Prefix, Entry]:
        t = self.tables.get(fam)
        if t is None:
            t = self.tables[fam] = {}
        return t

    def _dirty(self, fam: Family) -> dict[Prefix, Entry | None]:
        d = self.dirty.get(fam)
        if d is None:
            d = self.dirty[fam] = {}
        return d

    def update(self, fam: Family, prefix: Prefix, path: Path) -> None:
        self.update_many(fam, ((prefix, path),))

    def update_many(
        self, fam: Family, items: Iterable[tuple[Prefix, Path]], *, track: bool = True
    ) -> int:
        """Insert or replace (by source and path id) each path; one UPDATE's prefixes at once.
        Returns how many were new (not replacing a path of the same source and path id).

        The next-hop check runs once per distinct next hop of the batch, not once per prefix.
        `track=False` says nobody needs to hear of these changes (no FIB yet, no peer that
        could be sent them): prefixes decided here are then not marked dirty at all.
        """
        table = self.table(fam)
        dirty = self._dirty(fam)
        reach = self.reachable
        known: dict[int, bool] = {}
        quiet = 0
        new = 0
        for prefix, path in items:
            cur = table.get(prefix)
            if cur is None or (
                cur.__class__ is Path
                and cur.path_id == path.path_id  # type: ignore[union-attr]
                and cur.source.key == path.source.key  # type: ignore[union-attr]
            ):
                # The prefix's only path, new or replaced by its own source: decide it here.
                if cur is None:
                    new += 1
                nh = path.next_hop
                ok = True
                if reach is not None and nh and not path.source.local:
                    ok = known.get(nh[0])  # type: ignore[assignment]
                    if ok is None:
                        ok = known[nh[0]] = reach(fam, nh[0])
                table[prefix] = path if ok else Destination.holding(path, False)
                if not track:
                    quiet += 1
                    continue
            elif cur.__class__ is Path:
                dest = table[prefix] = Destination.holding(cur, True)  # type: ignore[arg-type]
                dest.add(path)
                new += 1
            elif cur.add(path) is None:  # type: ignore[union-attr]
                new += 1
            if prefix not in dirty:
                dirty[prefix] = cur
        if quiet:
            self.decisions[fam] = self.decisions.get(fam, 0) + quiet
        return new

    def withdraw(self, fam: Family, prefix: Prefix, key: str, path_id: int) -> bool:
        return self.withdraw_many(fam, key, ((prefix, path_id),)) == 1

    def withdraw_many(
        self, fam: Family, key: str, items: Iterable[tuple[Prefix, int]], *, track: bool = True
    ) -> int:
        """Remove source `key`'s path of each (prefix, path id); how many were there.

        `track=False` as in `update_many`: a prefix left with no path is then not marked dirty.
        """
        table = self.tables.get(fam)
        if table is None:
            return 0
        dirty = self._dirty(fam)
        done = 0
        for prefix, path_id in items:
            cur = table.get(prefix)
            if cur is None:
                continue
            if cur.__class__ is Path:
                if cur.path_id != path_id or cur.source.key != key:  # type: ignore[union-attr]
                    continue
                del table[prefix]
                done += 1
                if not track:
                    continue
            elif cur.remove(key, path_id) is None:  # type: ignore[union-attr]
                continue
            else:
                done += 1
            if prefix not in dirty:
                dirty[prefix] = cur
        return done

    def paths_of(self, fam: Family, key: str) -> Iterator[tuple[Prefix, Path]]:
        """Every path of source `key` in `fam` with its prefix: a walk of the whole table.

        Materialise it (a list) before changing the table.
        """
        for prefix, entry in self.tables.get(fam, {}).items():
            if entry.__class__ is Path:
                if entry.source.key == key:  # type: ignore[union-attr]
                    yield prefix, entry  # type: ignore[misc]
            else:
                for p in entry.paths:  # type: ignore[union-attr]
                    if p.source.key == key:
                        yield prefix, p

    def mark_all(self) -> None:
        """Re-run the decision everywhere (next-hop reachability or policy changed)."""
        for fam, table in self.tables.items():
            dirty = self._dirty(fam)
            for prefix, entry in table.items():
                dirty.setdefault(prefix, entry)

    def pending(self) -> int:
        return sum(len(d) for d in self.dirty.values())

    def take_dirty(self, limit: int) -> list[Dirty]:
        """Up to `limit` dirty prefixes, removed from the dirty set."""
        out: list[Dirty] = []
        for fam in list(self.dirty):
            d = self.dirty[fam]
            room = limit - len(out)
            if len(d) <= room:
                out.extend((fam, p, e) for p, e in d.items())
                del self.dirty[fam]
            else:
                # popitem is O(1); taking from the front of a dict that keeps shrinking there
                # makes every later scan skip the holes (quadratic over a 100k burst).
                pop = d.popitem
                for _ in range(room):
                    p, e = pop()
                    out.append((fam, p, e))
            if len(out) >= limit:
                break
        return out

    def decide(self, items: Iterable[Dirty]) -> list[tuple[Family, Prefix, Entry | None, bool]]:
        """Decide each dirty prefix; returns (fam, prefix, entry or None if gone, fib_changed).

        fib_changed says the best/multipath set changed, which is what the FIB needs to know.
        Every listed prefix is returned: even with the same best, the set of paths (ADD-PATH)
        or their attributes may differ.
        """
        out: list[tuple[Family, Prefix, Entry | None, bool]] = []
        reach = self.reachable
        known: dict[tuple[Family, int], bool] = {}
        decided: dict[Family, int] = {}
        for fam, prefix, before in items:
            # The outcome of the last decision, to tell whether this one changed it.
            if before is None:
                b_multi: tuple[Path, ...] = ()
                b_attrs = None
            elif before.__class__ is Path:
                b_multi = (before,)  # type: ignore[assignment]
                b_attrs = before.attrs  # type: ignore[union-attr]
            else:
                b_multi = before.multipath
                b_best = before.best
                b_attrs = b_best.attrs if b_best is not None else None
            table = self.tables.get(fam)
            cur = table.get(prefix) if table is not None else None
            if cur is None:
                out.append((fam, prefix, None, bool(b_multi)))
                continue
            decided[fam] = decided.get(fam, 0) + 1
            if cur.__class__ is Path:
                # Decided when inserted; reachability may have changed since (mark_all).
                nh = cur.next_hop  # type: ignore[union-attr]
                if reach is not None and nh and not cur.source.local:  # type: ignore[union-attr]
                    ok = known.get((fam, nh[0]))
                    if ok is None:
                        ok = known[(fam, nh[0])] = reach(fam, nh[0])
                    if not ok:
                        cur = table[prefix] = Destination.holding(cur, False)  # type: ignore
                        out.append((fam, prefix, cur, bool(b_multi)))
                        continue
                changed = b_multi != (cur,) or cur.attrs is not b_attrs  # type: ignore[union-attr]
                out.append((fam, prefix, cur, changed))
                continue
            dest: Destination = cur  # type: ignore[assignment]
            paths = dest.paths
            if not paths:
                del table[prefix]  # type: ignore[union-attr]
                out.append((fam, prefix, None, bool(b_multi)))
                continue
            # A Destination left with one path stays one: a prefix that has had two paths tends
            # to get them again (a peer withdrawing and re-announcing everything), and building
            # a Destination per prefix each time would feed the garbage collector hundreds of
            # thousands of objects per cycle (full collections of a second and more, measured).
            best, reason, multi = self.decider(fam, paths)
            dest.best, dest.reason, dest.multipath = best, reason, multi
            changed = multi != b_multi or (best is not None and best.attrs is not b_attrs)
            out.append((fam, prefix, dest, changed))
        counts = self.decisions
        for fam, n in decided.items():
            counts[fam] = counts.get(fam, 0) + n
        return out

    def destinations(self, fam: Family) -> Iterator[tuple[Prefix, Entry]]:
        yield from self.tables.get(fam, {}).items()

    def count(self) -> int:
        return sum(len(t) for t in self.tables.values())
