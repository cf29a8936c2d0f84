"""Property test: random operation sequences give the SQLite store exactly the memory store's
results (revisions, errors, listings, watch history). The memory store is the reference model
of the contract; the suite in tests/integration/test_datastore_contract.py pins both to etcd."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bgpd.datastore.base import Datastore, DatastoreError, WatchEvent
from bgpd.datastore.memory import MemoryDatastore
from bgpd.datastore.sqlite import SqliteDatastore

KEYS = st.sampled_from(["/a", "/a/b", "/a/c", "/ab", "/b"])
VALUES = st.binary(max_size=8)
# Which revision an update/delete presents: the key's current one, a stale one, or none.
REVS = st.sampled_from(["current", "stale", "none"])

OPS = st.one_of(
    st.tuples(st.just("create"), KEYS, VALUES, REVS),
    st.tuples(st.just("update"), KEYS, VALUES, REVS),
    st.tuples(st.just("put"), KEYS, VALUES, REVS),
    st.tuples(st.just("delete"), KEYS, VALUES, REVS),
    st.tuples(st.just("list"), st.sampled_from(["", "/a", "/a/", "/b"]), VALUES, REVS),
)


async def run(ds: Datastore, ops: list[tuple[str, str, bytes, str]]) -> list[object]:
    outcomes: list[object] = []
    for op, key, value, rev_choice in ops:
        kv = await ds.get(key)
        revision = kv.mod_revision if kv else 1
        if rev_choice == "stale":
            revision -= 1
        try:
            if op == "create":
                outcomes.append(await ds.create(key, value))
            elif op == "update":
                outcomes.append(await ds.update(key, value, revision=revision))
            elif op == "put":
                outcomes.append(await ds.put(key, value))
            elif op == "delete":
                rev = None if rev_choice == "none" else revision
                outcomes.append(await ds.delete(key, revision=rev))
            else:
                outcomes.append(await ds.list(key))
        except DatastoreError as exc:
            outcomes.append((type(exc).__name__, str(exc)))
    items, last = await ds.list("")
    outcomes.append((items, last))
    history: list[WatchEvent] = []
    if last > 1:

        async def collect() -> None:
            async for ev in ds.watch("", start_revision=2):
                history.append(ev)
                if ev.revision == last:
                    return

        await asyncio.wait_for(collect(), 10)
    outcomes.append(history)
    return outcomes


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(OPS, max_size=25))
def test_sqlite_behaves_exactly_like_the_memory_model(ops):
    async def both() -> tuple[list[object], list[object]]:
        memory = MemoryDatastore()
        with tempfile.TemporaryDirectory() as tmp:
            sqlite = SqliteDatastore(Path(tmp) / "s.db", poll_interval=0.01)
            try:
                return await run(memory, ops), await run(sqlite, ops)
            finally:
                await sqlite.close()
                await memory.close()

    expected, got = asyncio.run(both())
    assert got == expected
