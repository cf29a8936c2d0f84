"""The embedded SQLite store shared by several real processes on one host."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from pathlib import Path

from bgpd.datastore.sqlite import SqliteDatastore
from tests.integration.test_datastore_contract import Collector, eventually

ROOT = Path(__file__).resolve().parents[2]

INCREMENT = textwrap.dedent(
    """
    import asyncio, sys
    from bgpd.datastore.base import RevisionConflictError
    from bgpd.datastore.sqlite import SqliteDatastore

    async def main(path, count):
        ds = SqliteDatastore(path)
        conflicts = 0
        for _ in range(count):
            while True:
                kv = await ds.get("/n/counter")
                try:
                    await ds.update("/n/counter", str(int(kv.value) + 1).encode(),
                                    revision=kv.mod_revision)
                    break
                except RevisionConflictError:
                    conflicts += 1
        await ds.close()
        print(conflicts)

    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
    """
)

LEASE_AND_EXIT = textwrap.dedent(
    """
    import asyncio, sys
    from bgpd.datastore.sqlite import SqliteDatastore

    async def main(path):
        ds = SqliteDatastore(path)
        lease = await ds.grant_lease(1)
        await ds.put("/live/node-a", b"up", lease=lease)
        await ds.close()

    asyncio.run(main(sys.argv[1]))
    """
)


def _spawn(script: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", script, *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


async def test_processes_cas_incrementing_one_counter_end_exactly_right(tmp_path):
    db = str(tmp_path / "store.db")
    ds = SqliteDatastore(db)
    await ds.create("/n/counter", b"0")
    procs, per_proc = 6, 40
    children = [_spawn(INCREMENT, db, str(per_proc)) for _ in range(procs)]
    outputs = await asyncio.gather(*(asyncio.to_thread(p.communicate) for p in children))
    for child, (_out, err) in zip(children, outputs):
        assert child.returncode == 0, err
    assert int((await ds.get("/n/counter")).value) == procs * per_proc
    print(f"sqlite cross-process conflicts: {sum(int(o) for o, _ in outputs)}")
    await ds.close()


async def test_a_lease_left_by_a_dead_process_expires_for_the_others(tmp_path):
    db = str(tmp_path / "store.db")
    ds = SqliteDatastore(db)
    _, rev = await ds.list("/live/")
    watcher = Collector(ds, "/live/", rev + 1)
    try:
        child = _spawn(LEASE_AND_EXIT, db)
        _, err = await asyncio.to_thread(child.communicate)
        assert child.returncode == 0, err
        events = await watcher.wait_len(2)
        assert [(e.kind, e.key) for e in events] == [
            ("put", "/live/node-a"),
            ("delete", "/live/node-a"),
        ]
        assert await ds.get("/live/node-a") is None
    finally:
        await watcher.stop()
        await ds.close()


async def test_a_watch_sees_writes_from_another_process(tmp_path):
    db = str(tmp_path / "store.db")
    reader, writer = SqliteDatastore(db, poll_interval=0.02), SqliteDatastore(db)
    try:
        start = await writer.put("/x/a", b"1")
        watcher = Collector(reader, "/x/", start)
        child = _spawn(
            "import asyncio,sys\nfrom bgpd.datastore.sqlite import SqliteDatastore\n"
            "async def m():\n ds=SqliteDatastore(sys.argv[1])\n"
            " [await ds.put(f'/x/{i}', b'c') for i in range(20)]\n await ds.close()\n"
            "asyncio.run(m())",
            db,
        )
        _, err = await asyncio.to_thread(child.communicate)
        assert child.returncode == 0, err
        events = await watcher.wait_len(21)
        revs = [e.revision for e in events]
        assert revs == list(range(start, start + 21))

        async def listed() -> bool:
            items, _ = await reader.list("/x/")
            return len(items) == 21

        await eventually(listed, "21 keys")
        await watcher.stop()
    finally:
        await reader.close()
        await writer.close()
