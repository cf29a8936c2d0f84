"""What only the etcd backend has: surviving an etcd restart, several endpoints, and TLS with
client certificates, all against a real etcd-server."""

from __future__ import annotations

import asyncio

import pytest

from bgpd.datastore.base import CompactedError, DatastoreError, UnavailableError, WatchEvent
from bgpd.datastore.etcd import EtcdDatastore, EtcdTls
from tests.integration.test_datastore_contract import Collector
from tests.lab.etcd import free_port


async def test_watch_survives_an_etcd_restart_without_missing_an_event(etcd_server):
    ds = EtcdDatastore([etcd_server.endpoint], retry_for=60)
    other = EtcdDatastore([etcd_server.endpoint], retry_for=60)
    try:
        r1 = await ds.put("/r/before", b"1")
        watcher = Collector(ds, "/r/", r1)
        await watcher.wait_len(1)
        await asyncio.to_thread(etcd_server.stop)
        # Issued while etcd is down: the client waits with back-off and sends it once it's back.
        pending = asyncio.create_task(ds.put("/r/while-down", b"2"))
        await asyncio.sleep(1.0)
        assert not pending.done()
        await asyncio.to_thread(etcd_server.start)
        # A second client writes as soon as etcd is up, possibly before the watch resumed.
        r_other = await other.put("/r/right-after", b"3")
        r_down = await pending
        r_last = await ds.put("/r/after", b"4")
        events = await watcher.wait_len(4)
        assert sorted(e.revision for e in events) == [e.revision for e in events]
        assert {e.revision for e in events} == {r1, r_other, r_down, r_last}
        assert WatchEvent("put", "/r/while-down", b"2", r_down) in events
        assert WatchEvent("put", "/r/right-after", b"3", r_other) in events
        assert len(events) == 4
        await watcher.stop()
    finally:
        await ds.close()
        await other.close()


async def test_a_dead_first_endpoint_is_skipped(etcd_server):
    dead = f"127.0.0.1:{free_port()}"
    ds = EtcdDatastore([dead, etcd_server.endpoint], connect_timeout=0.5)
    try:
        rev = await ds.put("/m/a", b"1")
        assert (await ds.get("/m/a")).mod_revision == rev
    finally:
        await ds.close()


async def test_no_reachable_endpoint_is_unavailable_and_names_the_endpoints():
    dead = f"127.0.0.1:{free_port()}"
    ds = EtcdDatastore([dead], connect_timeout=0.2, retry_for=1.0)
    try:
        with pytest.raises(UnavailableError, match=dead):
            await ds.get("/x")
    finally:
        await ds.close()


def _tls(server, **override: str | None) -> EtcdTls:
    t = server.tls
    files = {"ca": str(t.ca), "cert": str(t.client_cert), "key": str(t.client_key)}
    files.update(override)
    return EtcdTls(**files)


async def test_tls_with_client_certificate(etcd_tls_server):
    ds = EtcdDatastore([etcd_tls_server.endpoint], tls=_tls(etcd_tls_server))
    try:
        rev = await ds.create("/tls/a", b"1")
        watcher = Collector(ds, "/tls/", rev)
        events = await watcher.wait_len(1)
        assert events[0].revision == rev
        await watcher.stop()
    finally:
        await ds.close()


async def test_tls_without_a_client_certificate_or_plaintext_is_refused(etcd_tls_server):
    for tls in (_tls(etcd_tls_server, cert=None, key=None), None):
        ds = EtcdDatastore([etcd_tls_server.endpoint], tls=tls, connect_timeout=0.3, retry_for=1.0)
        try:
            with pytest.raises(DatastoreError):
                await ds.put("/tls/b", b"1")
        finally:
            await ds.close()
    good = EtcdDatastore([etcd_tls_server.endpoint], tls=_tls(etcd_tls_server))
    try:
        assert await good.get("/tls/b") is None
    finally:
        await good.close()


async def test_tls_errors_never_show_the_key_file(etcd_tls_server, tmp_path):
    with pytest.raises(DatastoreError) as err:
        EtcdTls(cert=str(etcd_tls_server.tls.client_cert), key=None).credentials()
    assert "together" in str(err.value)
    missing = tmp_path / "nope.key"
    with pytest.raises(DatastoreError) as err:
        EtcdTls(ca=str(missing)).credentials()
    assert str(missing) in str(err.value)
    secret = etcd_tls_server.tls.client_key.read_text()
    ds = EtcdDatastore(
        [etcd_tls_server.endpoint],
        tls=_tls(etcd_tls_server, ca=str(etcd_tls_server.tls.client_cert)),
        connect_timeout=0.3,
        retry_for=1.0,
    )
    try:
        with pytest.raises(DatastoreError) as err:
            await ds.get("/x")
        assert "PRIVATE KEY" not in str(err.value) and secret not in str(err.value)
    finally:
        await ds.close()


async def test_a_rewatch_into_compacted_history_raises_compacted(etcd_server):
    ds = EtcdDatastore([etcd_server.endpoint], retry_for=60)
    other = EtcdDatastore([etcd_server.endpoint], retry_for=60)
    try:
        r1 = await ds.put("/k/a", b"1")
        stream = ds.watch("/k/", start_revision=r1)
        assert (await anext(stream)).revision == r1
        # The consumer pauses; meanwhile the connection dies and the history it would resume
        # from is compacted away. Resuming must say so rather than skip events silently.
        await asyncio.to_thread(etcd_server.restart)
        await other.put("/k/a", b"2")
        r3 = await other.put("/k/a", b"3")
        await other.compact(r3)
        with pytest.raises(CompactedError) as err:
            await asyncio.wait_for(anext(stream), 30)
        assert err.value.requested == r1 + 1
        await stream.aclose()
    finally:
        await ds.close()
        await other.close()
