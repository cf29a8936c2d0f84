"""One contract suite for every datastore backend: memory, the SQLite file and a real etcd.

Each test runs three times; the etcd run starts its own etcd-server (tests/lab/etcd.py) and
fails under CI=true if the binary is missing.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

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
from bgpd.datastore.etcd import EtcdDatastore
from bgpd.datastore.memory import MemoryDatastore
from bgpd.datastore.sqlite import SqliteDatastore

BACKENDS = ["memory", "sqlite", "etcd"]


@pytest.fixture(params=BACKENDS)
async def store(request, tmp_path) -> AsyncIterator[Datastore]:
    if request.param == "memory":
        ds: Datastore = MemoryDatastore()
    elif request.param == "sqlite":
        ds = SqliteDatastore(tmp_path / "store.db")
    else:
        server = request.getfixturevalue("etcd_server")
        ds = EtcdDatastore([server.endpoint])
    try:
        yield ds
    finally:
        await ds.close()


async def eventually(probe: Callable[[], Awaitable[object]], what: str, timeout: float = 15.0):
    """Poll an async probe until it returns something truthy; fail naming ``what``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = await probe()
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


class Collector:
    """Runs a watch in a task and keeps what it saw (or the error it ended with)."""

    def __init__(self, store: Datastore, prefix: str, start: int) -> None:
        self.events: list[WatchEvent] = []
        self.error: BaseException | None = None
        self.task = asyncio.create_task(self._run(store, prefix, start))

    async def _run(self, store: Datastore, prefix: str, start: int) -> None:
        try:
            async for ev in store.watch(prefix, start_revision=start):
                self.events.append(ev)
        except Exception as exc:
            self.error = exc

    async def wait_len(self, n: int, timeout: float = 15.0) -> list[WatchEvent]:
        async def enough() -> bool:
            if self.error is not None:
                raise AssertionError(f"watch ended with {self.error!r}")
            return len(self.events) >= n

        await eventually(enough, f"{n} watch events (have {len(self.events)})", timeout)
        return self.events

    async def stop(self) -> None:
        self.task.cancel()
        try:
            await self.task
        except asyncio.CancelledError:
            pass


async def compact(store: Datastore, revision: int) -> None:
    result = store.compact(revision)  # memory's is sync, the others async
    if inspect.isawaitable(result):
        await result


# --- get / create / update / put / delete ------------------------------------------------------


async def test_create_then_get_returns_the_value_and_its_revisions(store):
    assert await store.get("/t/a") is None
    rev = await store.create("/t/a", b"one")
    kv = await store.get("/t/a")
    assert kv == KeyValue("/t/a", b"one", rev, rev, 0)
    rev2 = await store.create("/t/b", b"two")
    assert rev2 > rev


async def test_create_refuses_an_existing_key_and_keeps_its_value(store):
    rev = await store.create("/t/a", b"one")
    with pytest.raises(KeyExistsError) as err:
        await store.create("/t/a", b"secret-two")
    assert err.value.key == "/t/a"
    assert "secret-two" not in str(err.value)
    assert (await store.get("/t/a")).value == b"one"
    assert (await store.get("/t/a")).mod_revision == rev


async def test_update_is_a_compare_and_swap_on_mod_revision(store):
    created = await store.create("/t/a", b"v1")
    rev = await store.update("/t/a", b"v2", revision=created)
    kv = await store.get("/t/a")
    assert (kv.value, kv.mod_revision, kv.create_revision) == (b"v2", rev, created)
    with pytest.raises(RevisionConflictError) as err:
        await store.update("/t/a", b"secret-v3", revision=created)
    assert (err.value.key, err.value.expected, err.value.actual) == ("/t/a", created, rev)
    assert "secret-v3" not in str(err.value)
    assert (await store.get("/t/a")).value == b"v2"
    with pytest.raises(KeyNotFoundError):
        await store.update("/t/missing", b"x", revision=rev)
    assert await store.get("/t/missing") is None


async def test_put_creates_and_overwrites_unconditionally(store):
    r1 = await store.put("/t/a", b"1")
    r2 = await store.put("/t/a", b"2")
    kv = await store.get("/t/a")
    assert r2 > r1
    assert (kv.value, kv.mod_revision, kv.create_revision) == (b"2", r2, r1)


async def test_delete_with_and_without_a_revision(store):
    with pytest.raises(KeyNotFoundError):
        await store.delete("/t/a")
    r1 = await store.create("/t/a", b"1")
    r2 = await store.put("/t/a", b"2")
    with pytest.raises(RevisionConflictError) as err:
        await store.delete("/t/a", revision=r1)
    assert err.value.actual == r2
    assert await store.get("/t/a") is not None
    r3 = await store.delete("/t/a", revision=r2)
    assert r3 > r2
    assert await store.get("/t/a") is None
    await store.put("/t/b", b"x")
    await store.delete("/t/b")
    assert await store.get("/t/b") is None
    with pytest.raises(KeyNotFoundError):
        await store.delete("/t/b", revision=r3)


async def test_list_is_by_prefix_sorted_with_the_read_revision(store):
    for key in ("/p/b", "/p/a", "/p/c/d", "/pq", "/o"):
        last = await store.put(key, key.encode())
    items, rev = await store.list("/p/")
    assert [kv.key for kv in items] == ["/p/a", "/p/b", "/p/c/d"]
    assert [kv.value for kv in items] == [b"/p/a", b"/p/b", b"/p/c/d"]
    assert rev == last
    everything, _ = await store.list("")
    assert [kv.key for kv in everything] == ["/o", "/p/a", "/p/b", "/p/c/d", "/pq"]
    assert (await store.list("/nothing/")) == ([], rev)


# --- watch -------------------------------------------------------------------------------------


async def test_watch_replays_from_a_revision_then_follows(store):
    r1 = await store.put("/w/a", b"1")
    r2 = await store.put("/w/b", b"2")
    await store.put("/other", b"x")
    r4 = await store.delete("/w/a")
    watcher = Collector(store, "/w/", r2)
    try:
        events = await watcher.wait_len(2)
        assert events[:2] == [
            WatchEvent("put", "/w/b", b"2", r2),
            WatchEvent("delete", "/w/a", None, r4),
        ]
        r5 = await store.put("/w/c", b"3")
        events = await watcher.wait_len(3)
        assert events[2] == WatchEvent("put", "/w/c", b"3", r5)
        assert len(events) == 3
        assert r1 < r2
    finally:
        await watcher.stop()


async def test_list_then_watch_from_the_next_revision_misses_and_repeats_nothing(store):
    for i in range(5):
        await store.put(f"/lw/{i}", b"old")
    items, rev = await store.list("/lw/")
    watcher = Collector(store, "/lw/", rev + 1)
    try:
        writes = [await store.put(f"/lw/{i}", b"new") for i in range(3)]
        events = await watcher.wait_len(3)
        assert [e.revision for e in events] == writes
        assert all(e.value == b"new" for e in events)
        assert len(items) == 5
    finally:
        await watcher.stop()


async def test_watch_from_a_compacted_revision_raises(store):
    revs = [await store.put("/c/k", str(i).encode()) for i in range(5)]
    await compact(store, revs[3])
    with pytest.raises(CompactedError) as err:
        async for _ in store.watch("/c/", start_revision=revs[0]):
            break
    assert err.value.requested == revs[0]
    watcher = Collector(store, "/c/", revs[4])
    try:
        events = await watcher.wait_len(1)
        assert events[0].revision == revs[4]
    finally:
        await watcher.stop()


# --- leases ------------------------------------------------------------------------------------


async def test_revoking_a_lease_deletes_its_keys_with_delete_events(store):
    lease = await store.grant_lease(30)
    start = await store.put("/l/keep", b"k")
    await store.put("/l/a", b"1", lease=lease)
    await store.create("/l/b", b"2", lease=lease)
    assert (await store.get("/l/a")).lease == lease
    await store.refresh_lease(lease)
    watcher = Collector(store, "/l/", start + 1)
    try:
        await store.revoke_lease(lease)
        events = await watcher.wait_len(4)
        deletes = sorted(e.key for e in events if e.kind == "delete")
        assert deletes == ["/l/a", "/l/b"]
        assert await store.get("/l/a") is None
        assert await store.get("/l/keep") is not None
    finally:
        await watcher.stop()
    with pytest.raises(LeaseNotFoundError):
        await store.refresh_lease(lease)
    with pytest.raises(LeaseNotFoundError):
        await store.revoke_lease(lease)


async def test_an_expired_lease_deletes_its_keys_and_emits_deletes(store):
    lease = await store.grant_lease(1)
    rev = await store.put("/e/a", b"1", lease=lease)
    watcher = Collector(store, "/e/", rev + 1)
    try:

        async def gone() -> bool:
            return await store.get("/e/a") is None

        await eventually(gone, "the leased key to expire")
        events = await watcher.wait_len(1)
        assert events[0].kind == "delete" and events[0].key == "/e/a"
    finally:
        await watcher.stop()
    with pytest.raises(LeaseNotFoundError):
        await store.refresh_lease(lease)


async def test_writes_with_an_unknown_lease_are_refused(store):
    with pytest.raises(LeaseNotFoundError):
        await store.put("/u/a", b"1", lease=0x7FFF1234)
    assert await store.get("/u/a") is None


# --- concurrency and lifecycle -----------------------------------------------------------------


async def cas_increment(store: Datastore, key: str) -> int:
    """Read-modify-CAS until it sticks; returns how many conflicts it hit."""
    conflicts = 0
    while True:
        kv = await store.get(key)
        try:
            await store.update(key, str(int(kv.value) + 1).encode(), revision=kv.mod_revision)
            return conflicts
        except RevisionConflictError:
            conflicts += 1


async def test_concurrent_cas_increments_end_exactly_right(store):
    await store.create("/n/counter", b"0")
    tasks, per_task = 16, 12

    async def worker() -> int:
        return sum([await cas_increment(store, "/n/counter") for _ in range(per_task)])

    conflicts = await asyncio.gather(*(worker() for _ in range(tasks)))
    assert int((await store.get("/n/counter")).value) == tasks * per_task
    print(f"cas conflicts ({type(store).__name__}): {sum(conflicts)}")


async def test_a_closed_store_refuses_calls(store):
    await store.put("/z", b"1")
    await store.close()
    with pytest.raises(UnavailableError):
        await store.get("/z")


async def test_closing_the_store_ends_a_running_watch_with_unavailable(store):
    rev = await store.put("/cw/a", b"1")
    watcher = Collector(store, "/cw/", rev)
    await watcher.wait_len(1)
    await store.close()
    await asyncio.wait_for(watcher.task, 15)
    assert isinstance(watcher.error, UnavailableError)
