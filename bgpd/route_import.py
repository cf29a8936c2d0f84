"""The daemon's import path: received UPDATEs into each peer's Adj-RIB-In and the Loc-RIB
(loop checks, import filters, max-prefix), End-of-RIB and route-refresh handling."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from typing import TYPE_CHECKING

from bgpd.neighbors import Peer
from bgpd.reflector.export import LocalView, import_loop
from bgpd.reflector.filters import apply_filter
from bgpd.speaker import errors as E
from bgpd.speaker.attributes import PathAttributes
from bgpd.speaker.events import RouteRefreshReceived
from bgpd.speaker.messages import (
    ROUTE_REFRESH_BORR,
    ROUTE_REFRESH_EORR,
    ROUTE_REFRESH_NORMAL,
    Update,
)
from bgpd.speaker.rib import AttrInterner, LocRib, Source
from bgpd.speaker.rib import Path as RibPath
from bgpd.speaker.transport import PeerDriver
from bgpd.speaker.types import IPV4_UNICAST, Family, Prefix

if TYPE_CHECKING:
    from bgpd.observe import Observer

# The daemon's logger: these lines are the daemon's, wherever the code lives.
log = logging.getLogger("routemesh.bgpd")


class RouteImport:
    """Import half of `bgpd.daemon.Daemon` (its base class); the attributes are the daemon's."""

    peers: dict[str, Peer]
    loc_rib: LocRib
    interner: AttrInterner
    local: LocalView
    observer: Observer
    converged: asyncio.Event
    sink_live: bool
    route_sink: object
    _export_enabled: bool
    _awaiting_eor: set[str]
    _work: asyncio.Event

    def _on_updates(self, driver: PeerDriver, updates: list[Update]) -> None:
        """The UPDATEs one read completed: imported in order; waking the route worker and the
        max-prefix check are per batch (a teardown queued by it follows the batch)."""
        addr = driver.endpoint.address
        peer = self.peers[addr]
        # Whether anyone wants to hear of changes is the same for the whole batch unless an
        # End-of-RIB in it moves convergence on (`_import_update` then empties this).
        wanted: dict[Family, bool] = {}
        src = peer.source
        if src is not None and peer.config.import_filter is None:
            self._import_run(peer, src, updates, wanted)
        else:
            self.observer.on_updates(addr, updates)
            imp = self._import_update
            for update in updates:
                imp(peer, update, wanted)
        self._work.set()
        self._check_max_prefix(peer)

    def _import_run(
        self, peer: Peer, src: Source, updates: list[Update], wanted: dict[Family, bool]
    ) -> None:
        """`_import_update` for each UPDATE of a batch from a peer without an import filter.

        A feed with its own attribute set per route sends one prefix per UPDATE, and per UPDATE
        the general path was most of the import's cost. So a one-prefix announcement (nothing
        withdrawn, nothing for RFC 7606 to say, no loop, nothing to strip) is gathered here,
        and the run of them reaches the Loc-RIB as one `update_many` per
        family. Any other UPDATE hands that run over first, then takes `_import_update`, so
        the Loc-RIB sees every change in the order the peer sent it. The received-prefix
        metrics count a run at once and the other UPDATEs as such.
        """
        rib_in, loc, local, ebgp = peer.rib_in, self.loc_rib, self.local, src.ebgp
        intern = self.interner.intern
        observer, addr = self.observer, peer.config.address
        fam: Family | None = None  # the family of the run gathered in prefixes/paths
        rejected: set | None = None
        prefixes: list[Prefix] = []
        paths: list[RibPath] = []
        others: list[Update] = []

        def hand_over() -> None:
            nonlocal prefixes, paths
            if prefixes:
                observer.on_announced(addr, fam, len(prefixes))  # type: ignore[arg-type]
                track = self._wanted(peer, fam, wanted)  # type: ignore[arg-type]
                new = loc.update_many(fam, zip(prefixes, paths), track=track)  # type: ignore[arg-type]
                rib_in.counted(fam, new)  # type: ignore[arg-type]
                prefixes, paths = [], []

        # From an eBGP peer the loop check reads the AS path alone: the last path found clean
        # is not checked again (the MED variants of one attribute set share the path object).
        clean_path: object = None
        for update in updates:
            attrs = update.attrs
            ann = update.announce
            nlri = None
            if not (
                attrs is None
                or len(ann) != 1
                or update.withdraw
                or update.diagnostics
                or (ebgp and (attrs.local_pref is not None or attrs.originator_id is not None))
            ) and (attrs.as_path is clean_path or import_loop(attrs, local, ebgp) is None):
                if ebgp:
                    clean_path = attrs.as_path
                ((f, nlri),) = ann.items()
            if nlri is None or len(nlri) != 1:
                hand_over()
                others.append(update)
                self._import_update(peer, update, wanted)
                fam = None  # it may have made the family's refused set: look that up again
                continue
            if f is not fam and f != fam:
                hand_over()
                fam = f
                rejected = rib_in.rejected.get(f)
            key = nlri[0]
            pid = key[2]
            prefix = (key[0], key[1])
            path = RibPath(src, intern(attrs), update.next_hop.get(f, ()), pid)
            if rejected:
                rejected.discard(key)
            prefixes.append(prefix)
            paths.append(path)
        hand_over()
        if others:
            observer.on_updates(addr, others)

    def _on_update(self, peer: Peer, update: Update) -> None:
        """One UPDATE on its own (see `_on_updates`)."""
        self._import_update(peer, update)
        self._work.set()
        self._check_max_prefix(peer)

    def _import_update(
        self, peer: Peer, update: Update, wanted: dict[Family, bool] | None = None
    ) -> None:
        """Adj-RIB-In and Loc-RIB changes for one UPDATE; the caller wakes the route worker.

        `wanted` caches `_changes_wanted` per family across the UPDATEs of one batch.
        """
        if wanted is None:
            wanted = {}
        addr = peer.config.address
        for diag in update.diagnostics:
            log.warning("peer %s: malformed UPDATE handled per RFC 7606: %s", addr, diag)
        rib_in, loc = peer.rib_in, self.loc_rib
        # The peer's accepted paths live in the Loc-RIB only (see AdjRibIn): a withdrawal
        # removes this peer's path of that path id there, if it has one.
        for fam, nlri in update.withdraw.items():
            rejected = rib_in.rejected.get(fam)
            if rejected:
                rejected.difference_update(nlri)
            track = self._wanted(peer, fam, wanted)
            gone = loc.withdraw_many(fam, addr, (((k[0], k[1]), k[2]) for k in nlri), track=track)
            rib_in.counted(fam, -gone)
        attrs = update.attrs
        if attrs is None:
            # Only an UPDATE without attributes can be End-of-RIB.
            eor = update.end_of_rib()
            if eor is not None:
                self._on_eor(peer, eor)
                wanted.clear()
                return
        if attrs is None or not update.announce or peer.source is None:
            return
        src = peer.source
        loop_reason = import_loop(attrs, self.local, src.ebgp)
        if src.ebgp and (attrs.local_pref is not None or attrs.originator_id is not None):
            # LOCAL_PREF and the RR attributes from another AS mean nothing here (RFC 4271
            # §5.1.5, RFC 4456 §8).
            attrs = replace(attrs, local_pref=None, originator_id=None, cluster_list=())
        flt = peer.config.import_filter
        shared: PathAttributes | None = None
        if loop_reason is None and (flt is None or flt.prefix_independent):
            got = attrs if flt is None else apply_filter(flt, IPV4_UNICAST, (0, 0), attrs, src.ebgp)
            shared = self.interner.intern(got) if got is not None else None
        for fam, nlri in update.announce.items():
            rejected = rib_in.rejected.get(fam)
            if rejected is None:
                rejected = rib_in.rejected[fam] = set()
            nh = update.next_hop.get(fam, ())
            if shared is not None and len(nlri) == 1:
                # One prefix per UPDATE (a distinct attribute set per route): no lists to zip.
                key = nlri[0]
                pid = key[2]
                prefix = (key[0], key[1])
                path = RibPath(src, shared, nh, pid)
                if rejected:
                    rejected.discard(key)
                track = self._wanted(peer, fam, wanted)
                rib_in.counted(fam, loc.update_many(fam, ((prefix, path),), track=track))
                continue
            # Two lists zipped rather than a (prefix, path) tuple per route: tuples alive across
            # a collection get promoted, and promotions are what trigger full collections.
            prefixes: list[Prefix] = []
            paths: list[RibPath] = []
            if shared is not None:
                # Every prefix takes the same attributes: the common case, kept tight. One
                # Path serves every prefix of the UPDATE with the same path id (all of them
                # without ADD-PATH): a Path per prefix was a third of the RIB's bytes.
                base = RibPath(src, shared, nh, 0)
                by_id: dict[int, RibPath] = {}
                for key in nlri:
                    pid = key[2]
                    prefix = (key[0], key[1])
                    if pid:
                        path = by_id.get(pid)  # type: ignore[assignment]
                        if path is None:
                            path = by_id[pid] = RibPath(src, shared, nh, pid)
                    else:
                        path = base
                    prefixes.append(prefix)
                    paths.append(path)
                if rejected:
                    rejected.difference_update(nlri)
                track = self._wanted(peer, fam, wanted)
                rib_in.counted(fam, loc.update_many(fam, zip(prefixes, paths), track=track))
                continue
            for key in nlri:
                pid = key[2]
                prefix = (key[0], key[1])
                if loop_reason is not None or flt is None or flt.prefix_independent:
                    use = None  # the shared verdict was a refusal
                else:
                    got = apply_filter(flt, fam, prefix, attrs, src.ebgp)
                    use = self.interner.intern(got) if got is not None else None
                if use is None:
                    rejected.add(key)
                    if loc.withdraw(fam, prefix, addr, pid):
                        rib_in.counted(fam, -1)
                    continue
                rejected.discard(key)
                prefixes.append(prefix)
                paths.append(RibPath(src, use, nh, pid))
            track = self._wanted(peer, fam, wanted)
            rib_in.counted(fam, loc.update_many(fam, zip(prefixes, paths), track=track))

    def _wanted(self, peer: Peer, fam: Family, cache: dict[Family, bool]) -> bool:
        got = cache.get(fam)
        if got is None:
            got = cache[fam] = self._changes_wanted(peer, fam)
        return got

    def _changes_wanted(self, peer: Peer, fam: Family) -> bool:
        """Whether anyone must hear of Loc-RIB changes in `fam` made by `peer`'s routes now.

        No: while the FIB sink waits for convergence (it is then handed the whole table), and
        while no other peer can be sent the family and `peer` holds nothing of ours in it
        (a peer that comes up later is sent the whole table). Then a prefix decided as it is
        stored needs no slice of the route worker at all.
        """
        if self.route_sink is not None and (self.sink_live or self.converged.is_set()):
            return True
        if not self._export_enabled:
            return False
        key = peer.config.address
        for other in self.peers.values():
            m = other.out
            if m is not None and fam in m.policies and (m.key != key or m.rib_out.count(fam)):
                return True
        return False

    def _check_max_prefix(self, peer: Peer) -> None:
        limit = peer.config.max_prefix
        if limit is None:
            return
        count = peer.rib_in.accepted_count()
        if count <= limit:
            return
        nb = peer.config
        if nb.max_prefix_action == "warn":
            if not peer.max_prefix_warned:
                log.warning("peer %s: %d prefixes, above max-prefix %d", nb.address, count, limit)
                peer.max_prefix_warned = True
            return
        if peer.hard_reset:
            return
        log.error(
            "peer %s: %d prefixes, above max-prefix %d: session torn down%s",
            nb.address,
            count,
            limit,
            f", restart in {nb.max_prefix_restart}s" if nb.max_prefix_restart else "",
        )
        peer.hard_reset = True
        peer.driver.stop(subcode=E.CEASE_MAX_PREFIXES)
        if nb.max_prefix_restart:
            loop = asyncio.get_running_loop()
            peer.restart_timer = loop.call_later(nb.max_prefix_restart, peer.driver.start)

    def _on_eor(self, peer: Peer, fam: Family) -> None:
        peer.eor_received.add(fam)
        if fam in peer.stale:
            n = self._flush_peer(peer, fam, only_stale=True)
            peer.stale.discard(fam)
            log.info("peer %s: End-of-RIB %s, %d stale routes removed",
                     peer.config.address, fam.name, n)  # fmt: skip
            if not peer.stale and peer.stale_timer is not None:
                peer.stale_timer.cancel()
                peer.stale_timer = None
        neg = peer.negotiated
        if neg is not None and neg.families <= peer.eor_received:
            self._owes_no_eor(peer, "End-of-RIB from every neighbor")
        self._work.set()

    def _owes_no_eor(self, peer: Peer, why: str) -> None:
        """Initial convergence waits no longer for `peer`; it is done when nobody is left."""
        self._awaiting_eor.discard(peer.config.address)
        if not self._awaiting_eor:
            self._converge(why)

    def _on_route_refresh(self, peer: Peer, event: RouteRefreshReceived) -> None:
        fam = event.family
        if event.subtype == ROUTE_REFRESH_NORMAL:
            neg = peer.negotiated
            enhanced = bool(neg and neg.enhanced_route_refresh)
            log.info("peer %s: route refresh requested for %s", peer.config.address, fam.name)
            if self._export_enabled:
                self._start_sync(peer, fam, force=True, enhanced=enhanced)
        elif event.subtype == ROUTE_REFRESH_BORR:
            # RFC 7313: everything the peer re-sends until EoRR is fresh; the rest goes then.
            self._mark_stale(peer, fam)
        elif event.subtype == ROUTE_REFRESH_EORR:
            n = self._flush_peer(peer, fam, only_stale=True)
            if n:
                log.info("peer %s: EoRR %s, %d stale routes removed",
                         peer.config.address, fam.name, n)  # fmt: skip
