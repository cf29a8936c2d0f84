"""Update groups: turn Loc-RIB changes into encoded UPDATEs per peer, sharing work and bytes.

Peers whose `ExportPolicy` for a family is equal form one group. For each changed prefix the
export decision runs once per group (and once per distinct attribute set, not per prefix), then
each member's Adj-RIB-Out is diffed. Announcements are batched by attribute set, so prefixes
that share attributes go out in one UPDATE; members with the same changes share the very same
encoded bytes, which is what makes reflecting to 100 clients cost little more than to one.

Pure: no sockets, no asyncio. The daemon hands the messages to each session.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

from bgpd.reflector.export import Exported, ExportPolicy, LocalView, export_path, is_own
from bgpd.speaker.attributes import PathAttributes
from bgpd.speaker.context import CodecContext
from bgpd.speaker.messages import encode_updates, encode_withdrawals
from bgpd.speaker.rib import AdjRibOut, AttrInterner, Destination, Path, Sent
from bgpd.speaker.types import NLRI, Family, Prefix

log = logging.getLogger("routemesh.bgpd")


@dataclass(eq=False)
class Outbound:
    """One peer as export sees it: identity for split horizon, policy per family, codec, RIB-Out."""

    key: str
    router_id: int
    ctx: CodecContext
    policies: dict[Family, ExportPolicy]
    rib_out: AdjRibOut = field(default_factory=AdjRibOut)


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


GroupExport = tuple[Prefix, list[tuple[int, Path, Exported]], Sent]


def _group_exports(
    fam: Family,
    changes: list[Change],
    policy: ExportPolicy,
    local: LocalView,
    interner: AttrInterner,
) -> list[GroupExport]:
    """Per prefix, every path this policy would send with what it would send (own excluded later)."""
    flt = policy.export_filter
    per_attrs = flt is None or flt.prefix_independent
    cache: dict[tuple[int, int, tuple[int, ...]], Exported | None] = {}
    out: list[GroupExport] = []
    addpath = policy.addpath
    for prefix, dest in changes:
        sends: list[tuple[int, Path, Exported]] = []
        if dest is not None and dest.best is not None:
            cands = dest.paths if addpath else (dest.best,)
            for p in cands:
                if per_attrs:
                    # ids are stable here: every path is alive for the whole call.
                    key = (id(p.attrs), id(p.source), p.next_hop)
                    if key in cache:
                        r = cache[key]
                    else:
                        r = cache[key] = _intern(export_path(p, prefix, policy, local), interner)
                else:
                    r = _intern(export_path(p, prefix, policy, local), interner)
                if r is not None:
                    sends.append((p.tx_id if addpath else 0, p, r))
        # The Adj-RIB-Out value for members that own none of the paths: one shared tuple, so
        # 100 clients holding the same route cost one object, not 100.
        out.append((prefix, sends, tuple((tx, r[0], r[1]) for tx, _, r in sends)))
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
        exports = _group_exports(fam, changes, policy, local, interner)
        for m in group:
            msgs = _member_diff(fam, exports, m, encoder, force)
            if msgs:
                result.append((m, msgs))
    return result


def _member_diff(
    fam: Family,
    exports: list[GroupExport],
    m: Outbound,
    encoder: EncodeCache,
    force: bool,
) -> list[bytes]:
    table = m.rib_out.table(fam)
    key, rid = m.key, m.router_id
    # Keyed by identity: attribute sets are interned, and hashing one per prefix is not free.
    ann: dict[tuple[int, tuple[int, ...]], tuple[PathAttributes, list[NLRI]]] = {}
    wd: list[NLRI] = []
    delta = 0
    for prefix, sends, shared in exports:
        desired: Sent = shared
        for _, p, _ in sends:
            if is_own(p, key, rid):
                desired = tuple((tx, r[0], r[1]) for tx, q, r in sends if not is_own(q, key, rid))
                break
        old = table.get(prefix, ())
        if desired == old and not force:
            continue
        if desired:
            table[prefix] = desired
        elif old:
            del table[prefix]
        delta += len(desired) - len(old)
        addr, plen = prefix
        if old:
            keep = {d[0] for d in desired}
            for tx, _, _ in old:
                if tx not in keep:
                    wd.append((addr, plen, tx))
        for d in desired:
            if force or d not in old:
                k = (id(d[1]), d[2])
                batch = ann.get(k)
                if batch is None:
                    batch = ann[k] = (d[1], [])
                batch[1].append((addr, plen, d[0]))
    m.rib_out.sent[fam] = m.rib_out.sent.get(fam, 0) + delta
    msgs: list[bytes] = []
    if wd:
        msgs += encoder.withdraw(m.ctx, fam, tuple(wd))
    for (_, nh), (attrs, nlri) in ann.items():
        msgs += encoder.announce(m.ctx, fam, attrs, nh, tuple(nlri))
    return msgs
