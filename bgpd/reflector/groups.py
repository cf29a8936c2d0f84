"""Update groups: turn Loc-RIB changes into encoded UPDATEs per peer, sharing work and bytes.

Peers whose `ExportPolicy` for a family is equal form one group. For each changed prefix the
export decision runs once per group (and once per distinct attribute set, not per prefix).
Members that hold the same routes share one Adj-RIB-Out table (`bgpd.reflector.ribout`), which
is diffed once for all of them; only a member's own differences (the routes it originated,
which split horizon keeps from it) are diffed per member. Announcements are batched by
attribute set, so prefixes that share attributes go out in one UPDATE, and members with the same
changes get the very same encoded bytes: reflecting to 100 clients costs little more than to one.

Pure: no sockets, no asyncio. The daemon hands the messages to each session.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from bgpd.reflector.export import Exported, ExportPolicy, LocalView, export_path
from bgpd.reflector.ribout import NOTHING, RibOut, SharedTable, View
from bgpd.speaker.attributes import PathAttributes
from bgpd.speaker.context import CodecContext
from bgpd.speaker.messages import encode_updates, encode_withdrawals
from bgpd.speaker.rib import AttrInterner, Destination, Path, Sent
from bgpd.speaker.types import NLRI, Family, Prefix

log = logging.getLogger("routemesh.bgpd")

MERGE_SLACK = 64  # a member joins a shared table when at most this many routes differ
JOIN_BUDGET = 1 << 18  # routes marked "not held" per call for members joining a shared table


@dataclass(eq=False)
class Outbound:
    """One peer as export sees it: identity for split horizon, policy per family, codec, RIB-Out."""

    key: str
    router_id: int
    ctx: CodecContext
    policies: dict[Family, ExportPolicy]
    rib_out: RibOut = field(default_factory=RibOut)


Change = tuple[Prefix, Destination | None]


class EncodeCache:
    """Encoded UPDATEs by content, shared by every member that needs the same batch."""

    def __init__(self, maxsize: int = 4096) -> None:
        self._cache: dict[tuple, list[bytes]] = {}
        self.maxsize = maxsize
        self.hits = 0

    def _room(self) -> None:
        # Entries are keyed by content, so they never go stale; only memory bounds them.
        if len(self._cache) >= self.maxsize:
            self._cache.clear()

    def announce(
        self,
        ctx: CodecContext,
        fam: Family,
        attrs: PathAttributes,
        nh: tuple[int, ...],
        nlri: tuple[NLRI, ...],
    ) -> list[bytes]:
        key = ("a", ctx, fam, attrs, nh, nlri)
        got = self._cache.get(key)
        if got is None:
            self._room()
            try:
                got = encode_updates(ctx, fam, attrs, nlri, nh)
            except ValueError as err:
                # Attributes too big for this peer's message size (no extended message): the
                # routes cannot be sent to it at all; say so rather than stop the worker.
                log.warning("%d %s routes not sent: %s", len(nlri), fam.name, err)
                got = []
            self._cache[key] = got
        else:
            self.hits += 1
        return got

    def withdraw(self, ctx: CodecContext, fam: Family, nlri: tuple[NLRI, ...]) -> list[bytes]:
        key = ("w", ctx, fam, nlri)
        got = self._cache.get(key)
        if got is None:
            self._room()
            got = self._cache[key] = encode_withdrawals(ctx, fam, nlri)
        else:
            self.hits += 1
        return got


# What one group sends per changed prefix: the prefixes, what a member that owns none of the
# paths gets (`Sent`), and for the members that own some (split horizon) what each gets instead.
Exclusions = dict[Outbound, Sent]
# One step of a diff: (prefix, held before, held after).
Step = tuple[Prefix, Sent, Sent]


class _GroupExports:
    """The export decision for one group over one batch of changes, shared by every member."""

    __slots__ = ("excls", "prefixes", "reaches", "shareds")

    def __init__(self) -> None:
        self.prefixes: list[Prefix] = []
        self.shareds: list[Sent] = []
        self.excls: list[Exclusions | None] = []
        self.reaches = False  # some member would be sent something


def _owners_finder(group: list[Outbound]) -> Callable[[Path], tuple[Outbound, ...]]:
    """Members a path must not go to (`export.is_own`), looked up by key and router-id."""
    by_key = {m.key: m for m in group}
    by_rid: dict[int, list[Outbound]] = {}
    for m in group:
        by_rid.setdefault(m.router_id, []).append(m)
    cache: dict[tuple[str, int | None], tuple[Outbound, ...]] = {}

    def owners(p: Path) -> tuple[Outbound, ...]:
        oid = p.attrs.originator_id
        key = (p.source.key, oid)
        got = cache.get(key)
        if got is None:
            found: list[Outbound] = []
            m = by_key.get(p.source.key)
            if m is not None:
                found.append(m)
            if oid is not None:
                found.extend(o for o in by_rid.get(oid, ()) if o is not m)
            got = cache[key] = tuple(found)
        return got

    return owners


def _group_exports(
    changes: list[Change],
    policy: ExportPolicy,
    local: LocalView,
    interner: AttrInterner,
    group: list[Outbound],
) -> _GroupExports:
    """Per prefix, what this policy sends to members owning none of the paths, and exceptions."""
    flt = policy.export_filter
    per_attrs = flt is None or flt.prefix_independent
    addpath = policy.addpath
    owners = _owners_finder(group)
    everyone = len(group)
    # One Sent tuple per (attributes, next hop): the shared table holds the same object for
    # every prefix with that route, not one tuple per prefix.
    sent_of: dict[tuple[int, tuple[int, ...]], Sent] = {}
    # Non-ADD-PATH, per (attrs, source, next hop): (shared Sent, exclusions, reaches anyone).
    single: dict[tuple[int, int, tuple[int, ...]], tuple[Sent, Exclusions | None, bool]] = {}
    results: dict[tuple[int, int, tuple[int, ...]], Exported | None] = {}
    out = _GroupExports()
    prefixes, shareds, excls = out.prefixes, out.shareds, out.excls
    reaches = False

    def exported(p: Path, prefix: Prefix) -> Exported | None:
        if not per_attrs:
            return _intern(export_path(p, prefix, policy, local), interner)
        # ids are stable here: every path is alive for the whole call.
        key = (id(p.attrs), id(p.source), p.next_hop)
        if key in results:
            return results[key]
        r = results[key] = _intern(export_path(p, prefix, policy, local), interner)
        return r

    def sent(tx: int, r: Exported) -> Sent:
        k = (id(r[0]), r[1])
        s = sent_of.get(k) if tx == 0 else None
        if s is None:
            s = ((tx, r[0], r[1]),)
            if tx == 0:
                sent_of[k] = s
        return s

    for prefix, dest in changes:
        prefixes.append(prefix)
        best = dest.best if dest is not None else None
        if best is None:
            shareds.append(NOTHING)
            excls.append(None)
            continue
        if not addpath:
            key = (id(best.attrs), id(best.source), best.next_hop)
            ent = single.get(key) if per_attrs else None
            if ent is None:
                r = exported(best, prefix)
                if r is None:
                    ent = (NOTHING, None, False)
                else:
                    own = owners(best)
                    ent = (
                        sent(0, r),
                        {m: NOTHING for m in own} if own else None,
                        len(own) < everyone,
                    )
                if per_attrs:
                    single[key] = ent
            shareds.append(ent[0])
            excls.append(ent[1])
            reaches = reaches or ent[2]
            continue
        entries: list[tuple[int, PathAttributes, tuple[int, ...]]] = []
        owned: list[tuple[Outbound, ...]] = []
        for p, tx in zip(dest.paths, dest.txs):
            r = exported(p, prefix)
            if r is not None:
                entries.append((tx, r[0], r[1]))
                owned.append(owners(p))
        shared: Sent = tuple(entries)
        x: Exclusions | None = None
        for own in owned:
            for m in own:
                if x is None:
                    x = {}
                if m not in x:
                    x[m] = tuple(e for e, o in zip(entries, owned) if m not in o)
        shareds.append(shared)
        excls.append(x)
        if shared and (x is None or len(x) < everyone or any(x.values())):
            reaches = True
    out.reaches = reaches
    return out


def _intern(r: Exported | None, interner: AttrInterner) -> Exported | None:
    if r is None:
        return None
    return interner.intern(r[0]), r[1]


def export_changes(
    fam: Family,
    changes: list[Change],
    members: Iterable[Outbound],
    local: LocalView,
    interner: AttrInterner,
    encoder: EncodeCache | None = None,
    *,
    force: bool = False,
) -> list[tuple[Outbound, list[bytes]]]:
    """Diff each member's Adj-RIB-Out against `changes` and return the UPDATEs to send.

    force re-announces what is already sent (route refresh out); withdrawals are exact either way.
    """
    encoder = encoder or EncodeCache()
    groups: dict[ExportPolicy, list[Outbound]] = {}
    for m in members:
        pol = m.policies.get(fam)
        if pol is not None:
            groups.setdefault(pol, []).append(m)
    result: list[tuple[Outbound, list[bytes]]] = []
    for policy, group in groups.items():
        exports = _group_exports(changes, policy, local, interner, group)
        views = [(m, m.rib_out.view(fam)) for m in group]
        empty = [v for _, v in views if not v.table.routes and not v.own]
        if not exports.reaches and len(empty) == len(views):
            continue  # nobody holds anything and nobody gets anything: the common ingest case
        if len(empty) < len(views):
            _share(views, empty)
        elif len(empty) > 1:
            # Members holding nothing hold the same thing: let them share one table from now on.
            table = SharedTable(refs=0)
            for v in empty:
                v.attach(table)
        parts: dict[int, list[tuple[Outbound, View]]] = {}
        for m, v in views:
            parts.setdefault(id(v.table), []).append((m, v))
        for part in parts.values():
            result += _partition_diff(fam, exports, part, encoder, force)
    return result


def _share(views: list[tuple[Outbound, View]], empty: list[View]) -> None:
    """Move members onto the group's most shared table where that costs little to describe.

    A peer that connects later fills a table of its own through its sync; without this, every
    later change would be diffed once for it and once for everyone else. A member holding
    nothing joins with every route of that table marked as not held (its sync then clears the
    marks as it sends them); a member whose own table has become nearly the same joins with
    only the differences as its own entries.
    """
    sizes: dict[int, int] = {}
    tables: dict[int, SharedTable] = {}
    for _, v in views:
        if v.table.routes:
            sizes[id(v.table)] = sizes.get(id(v.table), 0) + 1
            tables[id(v.table)] = v.table
    if not sizes:
        return  # what is held is all in members' own entries: nothing shared to join
    main = tables[max(sizes, key=sizes.__getitem__)]
    routes = main.routes
    # Marking costs one entry per route: a bounded number per call, so that many peers coming
    # back at once onto a large table cannot hold the loop up (the rest join on later calls).
    budget = JOIN_BUDGET
    for i, v in enumerate(empty):
        if len(routes) > budget:
            if len(empty) - i > 1:
                rest = SharedTable(refs=0)  # the rest hold nothing alike: one table for them
                for w in empty[i:]:
                    w.attach(rest)
            break
        budget -= len(routes)
        v.own = dict.fromkeys(routes, NOTHING)
        v.attach(main)
    # Few differences only: a table that is not nearly the same is walked in full before that
    # shows, and sizes within reach of each other are what makes a walk worth trying.
    slack = MERGE_SLACK
    for _, v in views:
        t = v.table
        if t is main or v.own or t.refs != 1 or abs(len(t.routes) - len(routes)) > slack:
            continue
        if v.merge_tried == (len(t.routes), len(routes)):
            continue  # nothing changed in size since the last look: not worth another walk
        v.merge_tried = (len(t.routes), len(routes))
        mine = t.routes
        diff: dict[Prefix, Sent] = {}
        for prefix, sent in routes.items():
            have = mine.get(prefix, NOTHING)
            if have is not sent and have != sent:
                diff[prefix] = have
                if len(diff) > slack:
                    break
        else:
            for prefix, have in mine.items():
                if prefix not in routes:
                    diff[prefix] = have
                    if len(diff) > slack:
                        break
        if len(diff) <= slack:
            v.own = diff
            v.attach(main)


def _partition_diff(
    fam: Family,
    ex: _GroupExports,
    part: list[tuple[Outbound, View]],
    encoder: EncodeCache,
    force: bool,
) -> list[tuple[Outbound, list[bytes]]]:
    """Diff one shared table once for all the members pointing at it, then each member's own."""
    size = len(part)
    table = part[0][1].table
    routes = table.routes
    get = routes.get
    inpart = {m for m, _ in part}
    base: list[Step] = []
    mutate = False
    # Per member: prefix -> what it must hold, where that differs from the shared table.
    special: dict[Outbound, dict[Prefix, Sent]] = {}
    uniform: dict[Prefix, Sent] = {}  # every member excluded alike: the table holds that
    # Exclusions are shared by every prefix with the same route: sort each out once.
    sorted_out: dict[int, tuple[Sent | None, list[tuple[Outbound, Sent]]]] = {}
    base_delta = 0
    for prefix, new, x in zip(ex.prefixes, ex.shareds, ex.excls):
        if x is not None:
            got = sorted_out.get(id(x))
            if got is None:
                mine = [(m, d) for m, d in x.items() if m in inpart]
                d0 = mine[0][1] if mine else None
                if mine and len(mine) == size and all(d == d0 for _, d in mine):
                    got = (d0, [])
                else:
                    got = (None, mine)
                sorted_out[id(x)] = got
            if got[0] is not None:
                new = uniform[prefix] = got[0]
            else:
                for m, d in got[1]:
                    sp = special.get(m)
                    if sp is None:
                        sp = special[m] = {}
                    sp[prefix] = d
        old = get(prefix, NOTHING)
        if old is not new and old != new:
            base.append((prefix, old, new))
            base_delta += len(new) - len(old)
            mutate = True
        elif force:
            base.append((prefix, old, new))
    if any(v.own for _, v in part):
        shared_of = dict(zip(ex.prefixes, ex.shareds))
        for m, v in part:
            if not v.own:
                continue
            hits = v.own.keys() & shared_of.keys()
            if hits:
                sp = special.setdefault(m, {})
                for prefix in hits:
                    if prefix not in sp:
                        sp[prefix] = uniform.get(prefix, shared_of[prefix])

    out: list[tuple[Outbound, list[bytes]]] = []
    shared_msgs: dict[CodecContext, list[bytes]] = {}
    base_batches: _Batches | None = None
    own_updates: list[tuple[View, dict[Prefix, Sent]]] = []
    for m, v in part:
        sp = special.get(m)
        if not sp:
            v.count += base_delta
            if not base:
                continue
            msgs = shared_msgs.get(m.ctx)
            if msgs is None:
                if base_batches is None:
                    base_batches = _batches(base, force)
                msgs = shared_msgs[m.ctx] = _encode(encoder, m.ctx, fam, base_batches)
            else:
                encoder.hits += 1
        else:
            delta = base_delta
            steps: list[Step] = []
            for step in base:
                if step[0] in sp:
                    delta -= len(step[2]) - len(step[1])
                else:
                    steps.append(step)
            own = v.own
            for prefix, want in sp.items():
                had = own.get(prefix)
                if had is None:
                    had = get(prefix, NOTHING)
                if force or had != want:
                    steps.append((prefix, had, want))
                delta += len(want) - len(had)
            v.count += delta
            own_updates.append((v, sp))
            msgs = _encode(encoder, m.ctx, fam, _batches(steps, force)) if steps else []
        if msgs:
            out.append((m, msgs))

    if mutate:
        if table.refs > size:
            # Other peers (not in this call, or now in another group) share the table: copy it.
            table.refs -= size
            table = SharedTable(dict(routes), refs=size)
            for _, v in part:
                v.table = table
            routes = table.routes
        for prefix, old, new in base:
            if new:
                routes[prefix] = new
            elif old:
                routes.pop(prefix, None)
    for v, sp in own_updates:
        own = v.own
        for prefix, want in sp.items():
            if want == routes.get(prefix, NOTHING):
                own.pop(prefix, None)
            else:
                own[prefix] = want
    return out


# Withdrawn NLRI, and announcements batched by (attributes, next hop).
_Batches = tuple[list[NLRI], list[tuple[PathAttributes, tuple[int, ...], list[NLRI]]]]


def _batches(steps: list[Step], force: bool) -> _Batches:
    wd: list[NLRI] = []
    # Keyed by identity: attribute sets are interned, and hashing one per prefix is not free.
    ann: dict[tuple[int, tuple[int, ...]], tuple[PathAttributes, tuple[int, ...], list[NLRI]]] = {}
    for (addr, plen), old, new in steps:
        if old:
            if new:
                keep = {d[0] for d in new}
                wd.extend((addr, plen, tx) for tx, _, _ in old if tx not in keep)
            else:
                wd.extend((addr, plen, tx) for tx, _, _ in old)
        for d in new:
            if force or d not in old:
                k = (id(d[1]), d[2])
                batch = ann.get(k)
                if batch is None:
                    batch = ann[k] = (d[1], d[2], [])
                batch[2].append((addr, plen, d[0]))
    return wd, list(ann.values())


def _encode(encoder: EncodeCache, ctx: CodecContext, fam: Family, batches: _Batches) -> list[bytes]:
    wd, ann = batches
    msgs: list[bytes] = []
    if wd:
        msgs += encoder.withdraw(ctx, fam, tuple(wd))
    for attrs, nh, nlri in ann:
        msgs += encoder.announce(ctx, fam, attrs, nh, tuple(nlri))
    return msgs
