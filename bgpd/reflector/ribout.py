"""Adj-RIB-Out shared by update-group members: one table per set of peers that hold the same routes.

A hundred reflector clients normally hold exactly the same routes, so they share one
`SharedTable` (prefix -> what was sent) and each keeps only its differences in `own` (for
example the routes it originated itself, which it must never be sent back). The update groups
(`bgpd.reflector.groups`) diff a shared table once for all its members and copy it on write
when only some of them change.
"""

from __future__ import annotations

from bgpd.speaker.rib import Sent
from bgpd.speaker.types import Family, Prefix

NOTHING: Sent = ()


class SharedTable:
    """Prefix -> the paths sent, for every member whose view points here (`refs` of them)."""

    __slots__ = ("refs", "routes")

    def __init__(self, routes: dict[Prefix, Sent] | None = None, refs: int = 1) -> None:
        self.routes: dict[Prefix, Sent] = routes if routes is not None else {}
        self.refs = refs


class View:
    """One peer's Adj-RIB-Out for one family: a shared table overlaid with the peer's own entries.

    What the peer holds for a prefix is `own[prefix]` when present (NOTHING: holds none), else
    the shared table's entry. `count` is the number of paths held (one per prefix without
    ADD-PATH), kept as the diffs are applied.
    """

    __slots__ = ("count", "merge_tried", "own", "table")

    def __init__(self) -> None:
        self.table = SharedTable()
        self.own: dict[Prefix, Sent] = {}
        self.count = 0
        # (own size, shared size) when joining a shared table last failed (groups._share).
        self.merge_tried: tuple[int, int] | None = None

    def held(self, prefix: Prefix) -> Sent:
        own = self.own.get(prefix)
        if own is not None:
            return own
        return self.table.routes.get(prefix, NOTHING)

    def attach(self, table: SharedTable) -> None:
        """Point at another table with the same content as ours (own entries stay valid)."""
        self.table.refs -= 1
        table.refs += 1
        self.table = table


class RibOut:
    """What we last sent one peer, per family: the truth the next diff is taken against, so a
    withdraw is only ever sent for something the peer holds from us."""

    def __init__(self) -> None:
        self.views: dict[Family, View] = {}

    def view(self, fam: Family) -> View:
        v = self.views.get(fam)
        if v is None:
            v = self.views[fam] = View()
        return v

    def held(self, fam: Family, prefix: Prefix) -> Sent:
        v = self.views.get(fam)
        return v.held(prefix) if v is not None else NOTHING

    def table(self, fam: Family) -> dict[Prefix, Sent]:
        """A copy of everything held in one family (diagnostics and tests; not a hot path)."""
        v = self.views.get(fam)
        if v is None:
            return {}
        out = dict(v.table.routes)
        for prefix, sent in v.own.items():
            if sent:
                out[prefix] = sent
            else:
                out.pop(prefix, None)
        return out

    def count(self, fam: Family | None = None) -> int:
        """Paths sent (a prefix counts once per path with ADD-PATH), in one family or all."""
        if fam is not None:
            v = self.views.get(fam)
            return v.count if v is not None else 0
        return sum(v.count for v in self.views.values())

    def clear(self) -> None:
        for v in self.views.values():
            v.table.refs -= 1
        self.views.clear()
