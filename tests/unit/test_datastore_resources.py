"""ResourceStore over the memory and SQLite backends: key layout, Calico metadata, optimistic
concurrency, validation before any write, and the shared examples round-tripping."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from bgpd.datastore.memory import MemoryDatastore
from bgpd.datastore.resources import (
    PREFIX,
    ResourceConflictError,
    ResourceExistsError,
    ResourceNotFoundError,
    ResourceStore,
    parse_key,
    strip_store_metadata,
)
from bgpd.datastore.sqlite import SqliteDatastore
from bgpd.model import (
    IPPool,
    K8sNetworkPolicy,
    NetworkPolicy,
    ResourceError,
    from_dict,
    load_documents,
    to_dict,
)

EXAMPLES = Path("/work/shared/examples")


@pytest.fixture(params=["memory", "sqlite"])
async def rs(request, tmp_path):
    ds = MemoryDatastore() if request.param == "memory" else SqliteDatastore(tmp_path / "s.db")
    yield ResourceStore(ds)
    await ds.close()


def pool(name: str, cidr: str, **spec) -> IPPool:
    return from_dict(
        {
            "apiVersion": "projectcalico.org/v3",
            "kind": "IPPool",
            "metadata": {"name": name},
            "spec": {"cidr": cidr, **spec},
        }
    )


def policy(name: str, namespace: str | None, api: str = "projectcalico.org/v3"):
    meta = {"name": name} | ({"namespace": namespace} if namespace else {})
    spec = {"selector": "all()"} if api.startswith("projectcalico") else {"podSelector": {}}
    return from_dict({"apiVersion": api, "kind": "NetworkPolicy", "metadata": meta, "spec": spec})


async def test_keys_follow_the_fixed_layout_and_hold_to_dict_json(rs):
    await rs.create(pool("p1", "10.244.0.0/16"))
    await rs.create(policy("allow", "tenant-a"))
    await rs.create(policy("allow", None))
    await rs.create(policy("allow", "tenant-a", "networking.k8s.io/v1"))
    kvs, _ = await rs.datastore.list(PREFIX)
    assert [kv.key for kv in kvs] == [
        "/routemesh/v1/resources/IPPool/p1",
        "/routemesh/v1/resources/KubernetesNetworkPolicy/tenant-a/allow",
        "/routemesh/v1/resources/NetworkPolicy/default/allow",
        "/routemesh/v1/resources/NetworkPolicy/tenant-a/allow",
    ]
    body = json.loads(kvs[0].value)
    assert body["spec"] == {"cidr": "10.244.0.0/16"}
    assert "resourceVersion" not in body["metadata"]
    assert parse_key(kvs[3].key) == (NetworkPolicy, "tenant-a", "allow")
    assert parse_key(kvs[1].key) == (K8sNetworkPolicy, "tenant-a", "allow")
    assert parse_key("/routemesh/v1/resources/IPPool/a/b") is None


async def test_create_sets_calico_metadata_and_get_reads_it_back(rs):
    created = await rs.create(pool("p1", "10.244.0.0/16"))
    meta = created.metadata
    assert meta.uid and len(meta.uid) == 36
    assert isinstance(meta.creation_timestamp, str) and meta.creation_timestamp.endswith("Z")
    kv = await rs.datastore.get("/routemesh/v1/resources/IPPool/p1")
    assert meta.resource_version == str(kv.mod_revision)
    assert to_dict(await rs.get("IPPool", "p1")) == to_dict(created)
    with pytest.raises(ResourceExistsError, match=r"resource already exists: IPPool\(p1\)"):
        await rs.create(pool("p1", "10.244.0.0/16"))
    with pytest.raises(ResourceNotFoundError, match=r"resource does not exist: IPPool\(nope\)"):
        await rs.get(IPPool, "nope")


async def test_update_needs_the_current_resource_version(rs):
    created = await rs.create(pool("p1", "10.244.0.0/16"))
    plain = pool("p1", "10.244.0.0/16", natOutgoing=True)
    with pytest.raises(ResourceConflictError, match="resourceVersion must be set"):
        await rs.update(plain)
    body = to_dict(plain)
    body["metadata"]["resourceVersion"] = created.metadata.resource_version
    updated = await rs.update(from_dict(body))
    assert updated.spec.nat_outgoing is True
    assert updated.metadata.uid == created.metadata.uid
    assert updated.metadata.creation_timestamp == created.metadata.creation_timestamp
    assert int(updated.metadata.resource_version) > int(created.metadata.resource_version)
    with pytest.raises(ResourceConflictError, match="is stale"):
        await rs.update(from_dict(body))  # the old version again
    body["metadata"]["name"] = "ghost"
    with pytest.raises(ResourceNotFoundError):
        await rs.update(from_dict(body))
    assert (await rs.get(IPPool, "p1")).spec.nat_outgoing is True


async def test_apply_creates_then_updates_without_a_version(rs):
    first = await rs.apply(pool("p1", "10.244.0.0/16"))
    second = await rs.apply(pool("p1", "10.244.0.0/16", disabled=True))
    assert second.spec.disabled and second.metadata.uid == first.metadata.uid
    stale = to_dict(pool("p1", "10.244.0.0/16"))
    stale["metadata"]["resourceVersion"] = first.metadata.resource_version
    with pytest.raises(ResourceConflictError):
        await rs.apply(from_dict(stale))
    assert (await rs.get(IPPool, "p1")).spec.disabled


async def test_delete_returns_the_resource_and_honours_a_version(rs):
    created = await rs.create(policy("x", "ns1"))
    with pytest.raises(ResourceNotFoundError, match=r"NetworkPolicy\(ns2/x\)"):
        await rs.delete("NetworkPolicy", "x", "ns2")
    with pytest.raises(ResourceConflictError):
        await rs.delete("NetworkPolicy", "x", "ns1", resource_version="1")
    gone = await rs.delete("NetworkPolicy", "x", "ns1")
    assert to_dict(gone) == to_dict(created)
    with pytest.raises(ResourceNotFoundError):
        await rs.get("NetworkPolicy", "x", "ns1")


async def test_list_by_kind_and_namespace(rs):
    for ns, name in (("b", "p2"), ("a", "p3"), ("a", "p1")):
        await rs.create(policy(name, ns))
    await rs.create(pool("pool", "10.244.0.0/16"))
    everywhere = await rs.list("NetworkPolicy")
    assert [(p.namespace, p.name) for p in everywhere] == [("a", "p1"), ("a", "p3"), ("b", "p2")]
    assert [p.name for p in await rs.list("NetworkPolicy", "a")] == ["p1", "p3"]
    assert await rs.list("NetworkPolicy", "c") == []
    assert [p.name for p in await rs.list(IPPool)] == ["pool"]


async def test_overlapping_pools_are_refused_before_any_write(rs):
    await rs.create(pool("a", "10.244.0.0/16"))
    before, _ = await rs.datastore.list(PREFIX)
    for attempt in (rs.create, rs.apply):
        with pytest.raises(ResourceError) as err:
            await attempt(pool("b", "10.244.128.0/17"))
        assert "spec.cidr" in str(err.value) and "overlaps IPPool a" in str(err.value)
    after, _ = await rs.datastore.list(PREFIX)
    assert after == before
    # A pool does not overlap itself, and other families never overlap.
    await rs.apply(pool("a", "10.244.0.0/16", natOutgoing=True))
    await rs.create(pool("v6", "fd00:10:244::/48"))


async def test_concurrent_overlapping_pool_creates_store_exactly_one(rs):
    candidates = [
        pool(f"p{i}", f"10.244.{i}.0/24" if i % 2 else "10.244.0.0/16") for i in range(12)
    ]
    results = await asyncio.gather(*(rs.create(p) for p in candidates), return_exceptions=True)
    stored = await rs.list(IPPool)
    winners = [r for r in results if not isinstance(r, Exception)]
    # Every /24 sits inside the /16, so whichever pool won, any other would overlap it.
    assert len(stored) == len(winners) == 1 or (
        len(winners) == 6 and all(p.spec.cidr != "10.244.0.0/16" for p in stored)
    )
    nets = [p.spec.network for p in stored]
    assert not any(a.overlaps(b) for i, a in enumerate(nets) for b in nets[i + 1 :])
    assert all(isinstance(r, ResourceError) for r in results if isinstance(r, Exception))
    assert await rs.datastore.get("/routemesh/v1/locks/IPPool") is None


async def test_a_resource_mutated_after_validation_is_refused(rs):
    bad = pool("p1", "10.244.0.0/16", blockSize=26)
    bad.spec.__dict__["block_size"] = 40  # bypasses pydantic, as a buggy caller could
    with pytest.raises(ResourceError, match="blockSize"):
        await rs.create(bad)
    assert await rs.datastore.get("/routemesh/v1/resources/IPPool/p1") is None


async def test_watch_yields_typed_resource_events(rs):
    _, rev = await rs.list_with_revision(IPPool)
    seen = []

    async def follow():
        async for ev in rs.watch(IPPool, start_revision=rev + 1):
            seen.append(ev)
            if len(seen) == 2:
                return

    task = asyncio.create_task(follow())
    await rs.create(policy("ignored", "ns"))
    created = await rs.create(pool("p1", "10.244.0.0/16"))
    await rs.delete(IPPool, "p1")
    await asyncio.wait_for(task, 10)
    assert [(e.type, e.kind, e.name) for e in seen] == [
        ("put", IPPool, "p1"),
        ("delete", IPPool, "p1"),
    ]
    assert to_dict(seen[0].resource) == to_dict(created)
    assert seen[1].resource is None


def example_resources():
    for path in sorted(EXAMPLES.glob("*.yaml")):
        for i, res in enumerate(load_documents(path.read_text(), str(path))):
            yield pytest.param(res, id=f"{path.name}#{i}-{res.KIND}-{res.name}")


@pytest.mark.parametrize("resource", list(example_resources()))
async def test_every_example_round_trips(rs, resource):
    stored = await rs.apply(resource)
    back = await rs.get(type(stored), stored.name, stored.namespace)
    assert strip_store_metadata(to_dict(back)) == strip_store_metadata(to_dict(resource))
