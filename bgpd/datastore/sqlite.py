"""The embedded backend: the datastore contract in one SQLite file, shared by processes on a host.

WAL mode lets readers run beside one writer; every write is a ``BEGIN IMMEDIATE`` transaction
(taken under SQLite's busy timeout), so the global revision, the key and its history row always
move together. Watches poll the history table (and wake at once for writes from this process).
Leases carry a wall-clock expiry; whichever process next touches the store deletes the keys of
expired leases, each delete a normal revisioned event that watchers see.
"""

from __future__ import annotations

import asyncio
import os
import random
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from bgpd.datastore.base import (
    CompactedError,
    Datastore,
    DatastoreError,
    KeyExistsError,
    KeyNotFoundError,
    KeyValue,
    LeaseNotFoundError,
    RevisionConflictError,
    UnavailableError,
    WatchEvent,
)

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO meta VALUES ('revision', 1), ('compacted', 0);
CREATE TABLE IF NOT EXISTS kv (
    key TEXT PRIMARY KEY,
    value BLOB NOT NULL,
    mod_revision INTEGER NOT NULL,
    create_revision INTEGER NOT NULL,
    lease INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS kv_by_lease ON kv(lease) WHERE lease != 0;
CREATE TABLE IF NOT EXISTS history (
    revision INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    key TEXT NOT NULL,
    value BLOB
);
CREATE TABLE IF NOT EXISTS leases (id INTEGER PRIMARY KEY, ttl INTEGER NOT NULL, expires REAL NOT NULL);
"""

# History rows kept behind the newest revision; a watcher further behind gets CompactedError
# and re-lists, as it would with etcd's auto-compaction.
DEFAULT_HISTORY = 100_000


def _prefix_end(prefix: str) -> str | None:
    """The smallest string above every string starting with ``prefix`` (None: no bound).

    SQLite compares TEXT as UTF-8 bytes, which orders like code points, so bumping the last
    code point is enough.
    """
    while prefix:
        last = ord(prefix[-1])
        if last < 0x10FFFF:
            return prefix[:-1] + chr(last + 1)
        prefix = prefix[:-1]
    return None


class SqliteDatastore(Datastore):
    """SQLite file backend; ``path`` is created (with its directory) if missing."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        poll_interval: float = 0.05,
        busy_timeout: float = 30.0,
        history: int = DEFAULT_HISTORY,
    ) -> None:
        self.path = Path(path)
        self._poll = poll_interval
        self._busy = busy_timeout
        self._history = history
        # One thread owns the connection: sqlite3 objects must stay on the thread that made them.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-store")
        self._con: sqlite3.Connection | None = None
        self._closed = False
        self._changed: asyncio.Event | None = None

    # --- plumbing -------------------------------------------------------------------------------

    def _open(self) -> sqlite3.Connection:
        if self._con is None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                con = sqlite3.connect(
                    self.path, timeout=self._busy, isolation_level=None, check_same_thread=True
                )
                con.execute("PRAGMA journal_mode=WAL")
                con.execute("PRAGMA synchronous=NORMAL")
                # executescript commits any open transaction first, so BEGIN goes inside it.
                con.executescript("BEGIN IMMEDIATE;" + _SCHEMA + "COMMIT;")
            except (sqlite3.Error, OSError) as exc:
                raise UnavailableError(f"sqlite {self.path}: cannot open: {exc}") from None
            self._con = con
        return self._con

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._closed:
            raise UnavailableError("sqlite datastore is closed")

        def job() -> T:
            # Checked again here: close() may have run while this job sat in the queue.
            if self._closed:
                raise UnavailableError("sqlite datastore is closed")
            con = self._open()
            try:
                return fn(con)
            except sqlite3.OperationalError as exc:
                if con.in_transaction:
                    con.execute("ROLLBACK")
                # "database is locked" after the busy timeout: another process holds it.
                raise UnavailableError(f"sqlite {self.path}: {exc}") from None
            except sqlite3.Error as exc:
                if con.in_transaction:
                    con.execute("ROLLBACK")
                raise DatastoreError(f"sqlite {self.path}: {exc}") from None
            except BaseException:
                if con.in_transaction:
                    con.execute("ROLLBACK")
                raise

        return await asyncio.get_running_loop().run_in_executor(self._executor, job)

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()

    async def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def txn(con: sqlite3.Connection) -> T:
            con.execute("BEGIN IMMEDIATE")
            self._expire(con, time.time())
            result = fn(con)
            con.execute("COMMIT")
            return result

        try:
            return await self._run(txn)
        finally:
            self._notify()

    @staticmethod
    def _revision(con: sqlite3.Connection) -> int:
        return con.execute("SELECT value FROM meta WHERE name = 'revision'").fetchone()[0]

    def _bump(self, con: sqlite3.Connection, kind: str, key: str, value: bytes | None) -> int:
        rev = self._revision(con) + 1
        con.execute("UPDATE meta SET value = ? WHERE name = 'revision'", (rev,))
        con.execute("INSERT INTO history VALUES (?, ?, ?, ?)", (rev, kind, key, value))
        if rev % 1000 == 0:
            self._compact(con, rev - self._history)
        return rev

    @staticmethod
    def _compact(con: sqlite3.Connection, revision: int) -> None:
        compacted = con.execute("SELECT value FROM meta WHERE name = 'compacted'").fetchone()[0]
        if revision > compacted:
            con.execute("DELETE FROM history WHERE revision <= ?", (revision,))
            con.execute("UPDATE meta SET value = ? WHERE name = 'compacted'", (revision,))

    @staticmethod
    def _row(con: sqlite3.Connection, key: str) -> KeyValue | None:
        row = con.execute(
            "SELECT key, value, mod_revision, create_revision, lease FROM kv WHERE key = ?", (key,)
        ).fetchone()
        return KeyValue(row[0], bytes(row[1]), row[2], row[3], row[4]) if row else None

    def _set(self, con: sqlite3.Connection, key: str, value: bytes, lease: int) -> int:
        if lease and not con.execute("SELECT 1 FROM leases WHERE id = ?", (lease,)).fetchone():
            raise LeaseNotFoundError(f"lease {lease:#x} not found")
        old = self._row(con, key)
        rev = self._bump(con, "put", key, value)
        create = old.create_revision if old else rev
        con.execute(
            "INSERT OR REPLACE INTO kv VALUES (?, ?, ?, ?, ?)", (key, value, rev, create, lease)
        )
        return rev

    def _remove(self, con: sqlite3.Connection, key: str) -> int:
        rev = self._bump(con, "delete", key, None)
        con.execute("DELETE FROM kv WHERE key = ?", (key,))
        return rev

    def _expire(self, con: sqlite3.Connection, now: float) -> None:
        """Inside a write transaction: drop expired leases and delete their keys."""
        expired = [r[0] for r in con.execute("SELECT id FROM leases WHERE expires <= ?", (now,))]
        for lease in expired:
            self._drop_lease(con, lease)

    def _drop_lease(self, con: sqlite3.Connection, lease: int) -> None:
        keys = [
            r[0] for r in con.execute("SELECT key FROM kv WHERE lease = ? ORDER BY key", (lease,))
        ]
        for key in keys:
            self._remove(con, key)
        con.execute("DELETE FROM leases WHERE id = ?", (lease,))

    async def _expire_if_due(self) -> None:
        """Reads must not show keys of expired leases; only take the write lock when needed."""

        def due(con: sqlite3.Connection) -> bool:
            q = "SELECT 1 FROM leases WHERE expires <= ? LIMIT 1"
            return con.execute(q, (time.time(),)).fetchone() is not None

        if await self._run(due):
            await self._write(lambda con: None)

    # --- key-value ------------------------------------------------------------------------------

    async def get(self, key: str) -> KeyValue | None:
        await self._expire_if_due()
        return await self._run(lambda con: self._row(con, key))

    async def list(self, prefix: str) -> tuple[list[KeyValue], int]:
        await self._expire_if_due()
        end = _prefix_end(prefix)

        def read(con: sqlite3.Connection) -> tuple[list[KeyValue], int]:
            # One read transaction: the rows and the revision come from the same snapshot.
            con.execute("BEGIN")
            rev = self._revision(con)
            q = "SELECT key, value, mod_revision, create_revision, lease FROM kv WHERE key >= ?"
            args: tuple[str, ...] = (prefix,)
            if end is not None:
                q += " AND key < ?"
                args += (end,)
            rows = con.execute(q + " ORDER BY key", args).fetchall()
            con.execute("COMMIT")
            return [KeyValue(r[0], bytes(r[1]), r[2], r[3], r[4]) for r in rows], rev

        return await self._run(read)

    async def create(self, key: str, value: bytes, *, lease: int = 0) -> int:
        def txn(con: sqlite3.Connection) -> int:
            if self._row(con, key) is not None:
                raise KeyExistsError(key)
            return self._set(con, key, bytes(value), lease)

        return await self._write(txn)

    async def update(self, key: str, value: bytes, *, revision: int, lease: int = 0) -> int:
        def txn(con: sqlite3.Connection) -> int:
            old = self._row(con, key)
            if old is None:
                raise KeyNotFoundError(key)
            if old.mod_revision != revision:
                raise RevisionConflictError(key, revision, old.mod_revision)
            return self._set(con, key, bytes(value), lease)

        return await self._write(txn)

    async def put(self, key: str, value: bytes, *, lease: int = 0) -> int:
        return await self._write(lambda con: self._set(con, key, bytes(value), lease))

    async def delete(self, key: str, *, revision: int | None = None) -> int:
        def txn(con: sqlite3.Connection) -> int:
            old = self._row(con, key)
            if old is None:
                raise KeyNotFoundError(key)
            if revision is not None and old.mod_revision != revision:
                raise RevisionConflictError(key, revision, old.mod_revision)
            return self._remove(con, key)

        return await self._write(txn)

    async def compact(self, revision: int) -> None:
        """Forget history up to and including ``revision``."""
        await self._write(lambda con: self._compact(con, revision))

    # --- watch ----------------------------------------------------------------------------------

    async def watch(self, prefix: str, *, start_revision: int) -> AsyncIterator[WatchEvent]:
        end = _prefix_end(prefix)
        next_revision = start_revision
        if self._changed is None:
            self._changed = asyncio.Event()

        def poll(con: sqlite3.Connection) -> tuple[int, list[tuple[int, str, str, bytes | None]]]:
            con.execute("BEGIN")
            compacted = con.execute("SELECT value FROM meta WHERE name = 'compacted'").fetchone()[0]
            q = "SELECT revision, kind, key, value FROM history WHERE revision >= ? AND key >= ?"
            args: tuple[object, ...] = (next_revision, prefix)
            if end is not None:
                q += " AND key < ?"
                args += (end,)
            rows = con.execute(q + " ORDER BY revision LIMIT 1000", args).fetchall()
            con.execute("COMMIT")
            return compacted, rows

        while True:
            await self._expire_if_due()
            changed = self._changed
            changed.clear()
            compacted, rows = await self._run(poll)
            if next_revision <= compacted:
                raise CompactedError(next_revision, compacted + 1)
            for rev, kind, key, value in rows:
                next_revision = rev + 1
                yield WatchEvent(kind, key, bytes(value) if value is not None else None, rev)
            if len(rows) < 1000:
                try:
                    await asyncio.wait_for(changed.wait(), self._poll)
                except TimeoutError:
                    pass

    # --- leases ---------------------------------------------------------------------------------

    async def grant_lease(self, ttl: int) -> int:
        def txn(con: sqlite3.Connection) -> int:
            while True:
                # Random ids, like etcd's: two processes granting at once never collide on
                # a counter, and an old id is never handed out again in practice.
                lease = random.randrange(1, 2**62)
                if not con.execute("SELECT 1 FROM leases WHERE id = ?", (lease,)).fetchone():
                    con.execute(
                        "INSERT INTO leases VALUES (?, ?, ?)", (lease, ttl, time.time() + ttl)
                    )
                    return lease

        return await self._write(txn)

    async def refresh_lease(self, lease: int) -> None:
        def txn(con: sqlite3.Connection) -> None:
            row = con.execute("SELECT ttl FROM leases WHERE id = ?", (lease,)).fetchone()
            if row is None:
                raise LeaseNotFoundError(f"lease {lease:#x} not found")
            con.execute("UPDATE leases SET expires = ? WHERE id = ?", (time.time() + row[0], lease))

        await self._write(txn)

    async def revoke_lease(self, lease: int) -> None:
        def txn(con: sqlite3.Connection) -> None:
            if not con.execute("SELECT 1 FROM leases WHERE id = ?", (lease,)).fetchone():
                raise LeaseNotFoundError(f"lease {lease:#x} not found")
            self._drop_lease(con, lease)

        await self._write(txn)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        con, self._con = self._con, None
        if con is not None:
            await asyncio.get_running_loop().run_in_executor(self._executor, con.close)
        self._executor.shutdown(wait=False)
        self._notify()
