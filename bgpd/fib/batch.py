"""The RIB bridge's batch path into `bgpd.fib.manager.FibManager`: a decided slice as runs of
prefixes sharing next hops, decided at once or held as runs while the writer is busy.

`BatchPath` is a base class of FibManager (as `bgpd.fib.kernelsync.KernelSync` is); the
attributes are the manager's.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Iterable
from operator import itemgetter

from bgpd.fib.kernelsync import _ABSENT, _SAME
from bgpd.fib.prefixtable import PrefixTable
from bgpd.fib.reconcile import same_hops
from bgpd.fib.types import Hops, Prefix, RouteError

# The manager's logger: these lines are the manager's, wherever the code lives.
log = logging.getLogger("bgpd.fib")

_first = itemgetter(0)  # the prefix of a (prefix, hops, replace) write
# (next hops or None to withdraw, [(addr, len) keys]) of one IP version
Runs = Iterable[tuple[Hops | None, list[tuple[int, int]]]]


class BatchPath:
    """The batch half of FibManager's input side (its base class)."""

    desired: PrefixTable[Hops]
    write_max: int
    _differs: dict[Prefix, object]
    _pending: dict[Prefix, object]
    _inflight: set[Prefix]
    _repairing: set[Prefix]
    _held: deque[tuple[int, Runs]]
    _next_writes: list[tuple[Prefix, Hops, bool]]
    _next_deletes: list[Prefix]
    _flight: asyncio.Future[list[RouteError]] | None
    _interned: dict[Hops, Hops]
    _last_hops: tuple[object, Hops]
    _refs: dict[tuple[int, int], int]
    _syncing: bool
    _task: asyncio.Task[None] | None
    _resync_wanted: bool

    def backlog(self) -> int:
        """Routes handed in and not yet on their way to the kernel: queued one by one, held
        as runs, or decided for the next write (what a reader throttle would watch)."""
        held = sum(len(keys) for _version, runs in self._held for _hops, keys in runs)
        return len(self._pending) + held + len(self._next_writes) + len(self._next_deletes)

    def want_runs(
        self, version: int, runs: Iterable[tuple[Hops | None, list[tuple[int, int]]]]
    ) -> None:
        """``want``/``withdraw`` for many prefixes of one IP version at once: each run is next
        hops (None to withdraw) and the (addr, len) keys that get them. The RIB bridge's path,
        one call per decided slice, with the RIB's own key objects (desired keeps them, so a
        route's key costs nothing here). When nothing is queued the changes are decided here
        and now, in one loop with the next hops interned and resolved once per run, and
        handed to the kernel writer (or joined to the write it is taking); otherwise they
        queue one by one. While the writer is busy and its next write is full, the runs are
        held as they are (a list slot per prefix, the keys being the RIB's) and decided once
        it has room: decided early, each route cost ~190 bytes until written (its prefix,
        its write, its in-flight and _differs entries), and at 500k the backlog was ~150k."""
        if self._pending or self._syncing or self._task is None:
            # Behind queued changes (order), or a prune or resync (it works from a snapshot
            # of desired and installed), or not started.
            for hops, keys in runs:
                if hops is None:
                    for key in keys:
                        self.withdraw((version, key[0], key[1]))
                else:
                    for key in keys:
                        self.want((version, key[0], key[1]), hops)
            return
        if self._held or (
            self._flight is not None
            and len(self._next_writes) + len(self._next_deletes) >= self.write_max
        ):
            self._held.append((version, runs))
            self._kick()
            return
        self._decide_runs(version, runs)
        if self._next_writes or self._next_deletes or self._pending:
            self._kick()
            if self._flight is None:
                try:
                    self._launch()
                except Exception:
                    # As the owner task does with a failed write cycle: the scan repairs.
                    log.exception("fib: write cycle failed; resync scheduled")
                    self._resync_wanted = True

    def _decide_runs(
        self, version: int, runs: Iterable[tuple[Hops | None, list[tuple[int, int]]]]
    ) -> None:
        """``_apply_slice``'s decision for runs of prefixes sharing next hops (see want_runs):
        the same outcome per prefix, with the per-Hops work done once per run."""
        writes: list[tuple[Prefix, Hops, bool]] = []
        deletes: list[Prefix] = []
        flying, pending = self._inflight, self._pending
        desired, differs, refs = self.desired.tables[version], self._differs, self._refs
        repairing = self._repairing
        for hops, keys in runs:
            dropped: Hops | None = None  # next hops given up by `drops` prefixes in a row
            drops = 0
            if hops is None:
                for key in keys:
                    prefix = (version, key[0], key[1])
                    if (flying and prefix in flying) or (pending and prefix in pending):
                        self._queue(prefix, None)  # decided once its write has landed
                        continue
                    old = desired.pop(key, None)
                    have = differs.get(prefix, _SAME)
                    if old is not None:
                        if old is not dropped:
                            if drops:
                                self._unref(version, dropped, drops)  # type: ignore[arg-type]
                            dropped, drops = old, 0
                        drops += 1
                        if have is _SAME:
                            have = differs[prefix] = old  # in the kernel until deleted
                    if have is not _SAME and have is not _ABSENT:
                        deletes.append(prefix)
                    else:
                        if have is _ABSENT:
                            del differs[prefix]  # no longer differs from (no) desired
                        if repairing:
                            repairing.discard(prefix)
                if drops:
                    self._unref(version, dropped, drops)  # type: ignore[arg-type]
                continue
            last = self._last_hops
            if hops is last[0]:
                interned = last[1]
            else:
                interned = self._interned.get(hops)  # type: ignore[assignment]
                if interned is None:
                    interned = self._interned[hops] = hops
                self._last_hops = (hops, interned)
            want = self._effective(version, interned)
            added = 0
            for key in keys:
                prefix = (version, key[0], key[1])
                if (flying and prefix in flying) or (pending and prefix in pending):
                    self._queue(prefix, interned)
                    continue
                old = desired.get(key)
                have = differs.get(prefix, _SAME)
                if have is _SAME:
                    have = _ABSENT if old is None else old
                if old is not interned:
                    desired[key] = interned
                    added += 1
                    if old is not None:
                        if old is not dropped:
                            if drops:
                                self._unref(version, dropped, drops)  # type: ignore[arg-type]
                            dropped, drops = old, 0
                        drops += 1
                    if have is interned:
                        del differs[prefix]
                    else:
                        differs[prefix] = have
                if want is None:
                    if have is not _ABSENT:
                        deletes.append(prefix)
                    elif repairing:
                        repairing.discard(prefix)
                elif have is want or (
                    have is not _ABSENT and same_hops(want, have)  # type: ignore[arg-type]
                ):
                    if repairing:
                        repairing.discard(prefix)
                else:
                    writes.append((prefix, want, have is not _ABSENT))
            if added:
                key = (version, id(interned))
                n = refs.get(key)
                if n is None:
                    self._ref_new(version, interned)
                    n = 1
                    added -= 1
                refs[key] = n + added
            if drops:
                self._unref(version, dropped, drops)  # type: ignore[arg-type]
        if writes or deletes:
            flying.update(map(_first, writes))
            flying.update(deletes)
            self._next_writes.extend(writes)
            self._next_deletes.extend(deletes)

    def _decide_held(self) -> None:
        """Decide held runs until the next write is full (see want_runs)."""
        held = self._held
        while held and len(self._next_writes) + len(self._next_deletes) < self.write_max:
            version, runs = held.popleft()
            self._decide_runs(version, runs)

    def _unhold(self) -> None:
        """Queue every held run one prefix at a time, in order: something needs them seen
        as asked for (a per-prefix change after them, a lookup, a prune or resync)."""
        held, self._held = self._held, deque()
        for version, runs in held:
            for hops, keys in runs:
                value: object = None
                if hops is not None:
                    value = self._interned.get(hops)
                    if value is None:
                        value = self._interned[hops] = hops
                for key in keys:
                    self._queue((version, key[0], key[1]), value)
