"""In-process datastore for unit tests and single-process labs: the contract, held in dicts.

It keeps the full event history (until ``compact``) so that watches from an old revision
replay exactly like etcd's, and it expires leases on the running loop's clock.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator

from bgpd.datastore.base import (
    CompactedError,
    Datastore,
    KeyExistsError,
    KeyNotFoundError,
    KeyValue,
    LeaseNotFoundError,
    RevisionConflictError,
    UnavailableError,
    WatchEvent,
)


class MemoryDatastore(Datastore):
    def __init__(self) -> None:
        self._data: dict[str, KeyValue] = {}
        self._revision = 1
        self._history: list[WatchEvent] = []
        self._compacted = 0
        self._changed = asyncio.Event()
        self._leases: dict[int, tuple[int, asyncio.TimerHandle | None]] = {}
        self._lease_keys: dict[int, set[str]] = {}
        self._lease_ids = itertools.count(0x1000)
        self._closed = False

    def _check(self) -> None:
        if self._closed:
            raise UnavailableError("memory datastore is closed")

    def _record(self, event: WatchEvent) -> None:
        self._history.append(event)
        self._changed.set()
        self._changed = asyncio.Event()

    def _attach(self, key: str, lease: int) -> None:
        if lease:
            if lease not in self._leases:
                raise LeaseNotFoundError(f"lease {lease:#x} not found")
            self._lease_keys[lease].add(key)

    def _detach(self, kv: KeyValue) -> None:
        if kv.lease and kv.lease in self._lease_keys:
            self._lease_keys[kv.lease].discard(kv.key)

    def _write(self, key: str, value: bytes, lease: int, old: KeyValue | None) -> int:
        self._attach(key, lease)
        if old is not None:
            self._detach(old)
        self._revision += 1
        create = old.create_revision if old is not None else self._revision
        self._data[key] = KeyValue(key, bytes(value), self._revision, create, lease)
        self._record(WatchEvent("put", key, bytes(value), self._revision))
        return self._revision

    def _remove(self, kv: KeyValue) -> int:
        self._detach(kv)
        del self._data[kv.key]
        self._revision += 1
        self._record(WatchEvent("delete", kv.key, None, self._revision))
        return self._revision

    async def get(self, key: str) -> KeyValue | None:
        self._check()
        return self._data.get(key)

    async def list(self, prefix: str) -> tuple[list[KeyValue], int]:
        self._check()
        items = [kv for k, kv in sorted(self._data.items()) if k.startswith(prefix)]
        return items, self._revision

    async def create(self, key: str, value: bytes, *, lease: int = 0) -> int:
        self._check()
        if key in self._data:
            raise KeyExistsError(key)
        return self._write(key, value, lease, None)

    async def update(self, key: str, value: bytes, *, revision: int, lease: int = 0) -> int:
        self._check()
        old = self._data.get(key)
        if old is None:
            raise KeyNotFoundError(key)
        if old.mod_revision != revision:
            raise RevisionConflictError(key, revision, old.mod_revision)
        return self._write(key, value, lease, old)

    async def put(self, key: str, value: bytes, *, lease: int = 0) -> int:
        self._check()
        return self._write(key, value, lease, self._data.get(key))

    async def delete(self, key: str, *, revision: int | None = None) -> int:
        self._check()
        old = self._data.get(key)
        if old is None:
            raise KeyNotFoundError(key)
        if revision is not None and old.mod_revision != revision:
            raise RevisionConflictError(key, revision, old.mod_revision)
        return self._remove(old)

    async def watch(self, prefix: str, *, start_revision: int) -> AsyncIterator[WatchEvent]:
        self._check()
        if start_revision <= self._compacted:
            raise CompactedError(start_revision, self._compacted + 1)
        # History is ordered by revision; find where to resume, then follow new appends.
        index = 0
        while index < len(self._history) and self._history[index].revision < start_revision:
            index += 1
        while not self._closed:
            while index < len(self._history):
                event = self._history[index]
                index += 1
                if event.key.startswith(prefix):
                    yield event
            changed = self._changed
            if index >= len(self._history):
                await changed.wait()
        raise UnavailableError("memory datastore is closed")

    def compact(self, revision: int) -> None:
        """Forget history up to and including ``revision``, as etcd's compaction does."""
        self._history = [e for e in self._history if e.revision > revision]
        self._compacted = max(self._compacted, revision)

    async def grant_lease(self, ttl: int) -> int:
        self._check()
        lease = next(self._lease_ids)
        self._leases[lease] = (ttl, None)
        self._lease_keys[lease] = set()
        self._arm(lease)
        return lease

    def _arm(self, lease: int) -> None:
        ttl, handle = self._leases[lease]
        if handle is not None:
            handle.cancel()
        handle = asyncio.get_running_loop().call_later(ttl, self._expire, lease)
        self._leases[lease] = (ttl, handle)

    def _expire(self, lease: int) -> None:
        entry = self._leases.pop(lease, None)
        if entry is None:
            return
        if entry[1] is not None:
            entry[1].cancel()
        for key in sorted(self._lease_keys.pop(lease, set())):
            kv = self._data.get(key)
            if kv is not None and kv.lease == lease:
                self._remove(kv)

    async def refresh_lease(self, lease: int) -> None:
        self._check()
        if lease not in self._leases:
            raise LeaseNotFoundError(f"lease {lease:#x} not found")
        self._arm(lease)

    async def revoke_lease(self, lease: int) -> None:
        self._check()
        if lease not in self._leases:
            raise LeaseNotFoundError(f"lease {lease:#x} not found")
        self._expire(lease)

    async def close(self) -> None:
        self._closed = True
        for _ttl, handle in self._leases.values():
            if handle is not None:
                handle.cancel()
        self._changed.set()
