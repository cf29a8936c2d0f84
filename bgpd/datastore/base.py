"""The datastore contract every backend implements: revisioned keys, CAS, prefix watch, leases.

The contract is etcd v3's model, cut to what routemesh needs: one global revision that grows
with every write, per-key ``mod_revision`` for compare-and-swap, a watch that replays every
event after a given revision, and leases whose expiry deletes the keys attached to them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Literal


class DatastoreError(Exception):
    """Base of every error a backend raises; the message never carries values or secrets."""


class KeyExistsError(DatastoreError):
    """``create`` found the key already present."""

    def __init__(self, key: str) -> None:
        super().__init__(f"{key}: already exists")
        self.key = key


class KeyNotFoundError(DatastoreError):
    """``update``/``delete`` found no such key."""

    def __init__(self, key: str) -> None:
        super().__init__(f"{key}: not found")
        self.key = key


class RevisionConflictError(DatastoreError):
    """A compare-and-swap failed: the key changed since the caller read it."""

    def __init__(self, key: str, expected: int, actual: int | None) -> None:
        super().__init__(f"{key}: revision {expected} is stale (current: {actual})")
        self.key = key
        self.expected = expected
        self.actual = actual


class CompactedError(DatastoreError):
    """A watch asked for history older than the store keeps; the caller must re-list."""

    def __init__(self, requested: int, oldest: int) -> None:
        super().__init__(f"revision {requested} is compacted (oldest kept: {oldest})")
        self.requested = requested
        self.oldest = oldest


class LeaseNotFoundError(DatastoreError):
    """A lease id is unknown or already expired."""


class UnavailableError(DatastoreError):
    """The backend cannot be reached right now; callers may retry."""


@dataclass(frozen=True, slots=True)
class KeyValue:
    key: str
    value: bytes
    mod_revision: int
    create_revision: int
    lease: int = 0


@dataclass(frozen=True, slots=True)
class WatchEvent:
    kind: Literal["put", "delete"]
    key: str
    # None for deletes.
    value: bytes | None
    revision: int


class Datastore(ABC):
    """Async key-value store with revisions. Keys are '/'-separated strings, values bytes."""

    @abstractmethod
    async def get(self, key: str) -> KeyValue | None:
        """The key's current value, or None."""

    @abstractmethod
    async def list(self, prefix: str) -> tuple[list[KeyValue], int]:
        """Every key under ``prefix`` sorted by key, plus the store revision of the read.

        Watching from ``revision + 1`` afterwards misses nothing and repeats nothing.
        """

    @abstractmethod
    async def create(self, key: str, value: bytes, *, lease: int = 0) -> int:
        """Write a new key; KeyExistsError if present. Returns the new revision."""

    @abstractmethod
    async def update(self, key: str, value: bytes, *, revision: int, lease: int = 0) -> int:
        """Overwrite ``key`` only if its mod_revision is ``revision``.

        RevisionConflictError if it changed, KeyNotFoundError if it is gone.
        """

    @abstractmethod
    async def put(self, key: str, value: bytes, *, lease: int = 0) -> int:
        """Unconditional write (create or overwrite). Returns the new revision."""

    @abstractmethod
    async def delete(self, key: str, *, revision: int | None = None) -> int:
        """Delete ``key``; with ``revision``, only if unchanged since then.

        KeyNotFoundError if absent, RevisionConflictError on a stale revision.
        """

    @abstractmethod
    def watch(self, prefix: str, *, start_revision: int) -> AsyncIterator[WatchEvent]:
        """Every event under ``prefix`` with revision >= ``start_revision``, in order, forever.

        Implementations reconnect on their own; a consumer only sees CompactedError when the
        history it asked for is gone.
        """

    @abstractmethod
    async def grant_lease(self, ttl: int) -> int:
        """A new lease of ``ttl`` seconds; keys written with it vanish when it expires."""

    @abstractmethod
    async def refresh_lease(self, lease: int) -> None:
        """Restart the lease's TTL; LeaseNotFoundError if it already expired."""

    @abstractmethod
    async def revoke_lease(self, lease: int) -> None:
        """Expire the lease now, deleting its keys."""

    @abstractmethod
    async def close(self) -> None:
        """Release connections; the object is unusable afterwards."""

    async def __aenter__(self) -> Datastore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
