"""IPAM garbage collection on MemoryDatastore with a hand-stepped clock: nothing is collected
before its grace period, everything dead is collected after it, and live state never is."""

from __future__ import annotations

import asyncio
import ipaddress

import pytest

from bgpd.datastore.base import UnavailableError
from bgpd.datastore.memory import MemoryDatastore
from bgpd.model import load_documents
from ipam import Ipam
from ipam.allocator import read_blocks
from ipam.check import check
from ipam.gc import IpamGC
from ipam.keys import affinity_key, handle_key, resource_key
from ipam.pools import put_resource

POOL = """
apiVersion: projectcalico.org/v3
kind: IPPool
metadata: {name: p}
spec: {cidr: 10.244.0.0/24, blockSize: 29}
"""


def node_yaml(name: str) -> str:
    return f"apiVersion: projectcalico.org/v3\nkind: Node\nmetadata: {{name: {name}}}\n"


def wep_yaml(name: str, ip: str, pod: str, cid: str = "") -> str:
    container = f"\n  containerID: {cid}" if cid else ""
    return f"""
apiVersion: projectcalico.org/v3
kind: WorkloadEndpoint
metadata: {{name: {name}, namespace: ns}}
spec:
  node: node-a
  pod: {pod}
  ipNetworks: [{ip}/32]{container}
"""


async def apply(store: MemoryDatastore, text: str) -> None:
    for r in load_documents(text):
        await put_resource(store, r)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def store():
    s = MemoryDatastore()
    await apply(s, POOL + "---\n" + node_yaml("node-a") + "---\n" + node_yaml("node-b"))
    yield s
    await s.close()


async def test_a_deleted_nodes_blocks_come_back_after_the_grace_period(store):
    clock = Clock()
    gc = IpamGC(store, node_grace=60, leak_grace=600, clock=clock)
    a, b = Ipam(store, "node-a"), Ipam(store, "node-b")
    got = await a.assign("a1", ipv4=9)  # fills one /29 and starts a second
    full, emptied = await a.host_blocks()
    if got[-1] not in emptied:
        full, emptied = emptied, full
    await a.release_ip(str(got[-1]))  # the second block is empty again
    await b.assign("b1")
    await store.delete(resource_key("Node", "node-a"))

    result = await gc.run_once()
    assert result.released_affinities == []
    assert await a.host_blocks() == sorted([full, emptied])
    clock.now += 59
    assert (await gc.run_once()).released_affinities == []
    clock.now += 1
    result = await gc.run_once()
    assert sorted(result.released_affinities) == sorted([full, emptied])
    assert result.deleted_blocks == [emptied]
    assert await a.host_blocks() == []
    # The block still holding addresses stays, affine to nobody, until they are released.
    remaining = {blk.cidr: blk for blk, _ in await read_blocks(store)}
    assert emptied not in remaining
    assert remaining[full].host is None and remaining[full].in_use() == 8
    for cidr in (full, emptied):
        assert await store.get(affinity_key("node-a", cidr)) is None
    # node-b is untouched.
    assert len(await b.host_blocks()) == 1
    assert (await check(store)).orphans == []


async def test_a_node_that_comes_back_within_the_grace_period_keeps_its_blocks(store):
    clock = Clock()
    gc = IpamGC(store, node_grace=60, clock=clock)
    a = Ipam(store, "node-a")
    await a.assign("a1")
    blocks = await a.host_blocks()
    await store.delete(resource_key("Node", "node-a"))
    await gc.run_once()
    clock.now += 30
    await apply(store, node_yaml("node-a"))
    await gc.run_once()
    await store.delete(resource_key("Node", "node-a"))
    clock.now += 40  # 70 s since first seen gone, but only 40 s since it went again
    assert (await gc.run_once()).released_affinities == []
    assert await a.host_blocks() == blocks


async def test_an_expired_liveness_lease_counts_as_a_gone_node(store):
    clock = Clock()
    gc = IpamGC(store, node_grace=10, clock=clock)
    a = Ipam(store, "node-a")
    lease = await a.register_liveness(ttl=1)
    await a.assign("a1")
    blocks = await a.host_blocks()
    await gc.run_once()
    clock.now += 100
    assert (await gc.run_once()).released_affinities == []  # lease alive: node-a is alive
    await store.revoke_lease(lease)
    await gc.run_once()
    clock.now += 10
    assert (await gc.run_once()).released_affinities == blocks
    # A real expiry (not a revoke) ends the same way.
    b = Ipam(store, "node-b")
    await b.register_liveness(ttl=1)
    await b.assign("b1")
    blocks_b = await b.host_blocks()
    await asyncio.sleep(1.3)  # MemoryDatastore expires leases on the loop clock
    await gc.run_once()
    clock.now += 10
    assert (await gc.run_once()).released_affinities == blocks_b
    assert await b.host_blocks() == []


async def test_leaked_workload_addresses_are_released_after_the_leak_grace(store):
    clock = Clock()
    gc = IpamGC(store, node_grace=60, leak_grace=900, clock=clock)
    a = Ipam(store, "node-a")
    [kept] = await a.assign("k8s-pod-network.c1", attrs={"namespace": "ns", "pod": "web"})
    [by_cid] = await a.assign("k8s-pod-network.c2", attrs={"namespace": "ns", "pod": "db"})
    [leaked] = await a.assign("k8s-pod-network.c3", attrs={"namespace": "ns", "pod": "gone"})
    [tunnel] = await a.assign("ipip-tunnel-addr-node-a")  # no pod: never a leak
    await apply(store, wep_yaml("node--a-k8s-web-eth0", str(kept), "web"))
    await apply(store, wep_yaml("node--a-k8s-other-eth0", "10.244.9.9", "other", cid="c2"))

    assert [a for a in (await check(store)).leaks if str(leaked) in a]
    assert (await gc.run_once()).released_leaks == []
    clock.now += 899
    assert (await gc.run_once()).released_leaks == []
    clock.now += 1
    assert (await gc.run_once()).released_leaks == [leaked]
    held = {blk.address(o) for blk, _ in await read_blocks(store) for o, _ in blk.allocated()}
    assert held == {kept, by_cid, tunnel}
    assert (await check(store)).leaks == []
    # Its handle record goes too, once it has led nowhere for the leak grace.
    assert await store.get(handle_key("k8s-pod-network.c3")) is None


async def test_a_leak_candidate_whose_address_was_reused_is_not_released(store):
    clock = Clock()
    gc = IpamGC(store, leak_grace=100, clock=clock)
    a = Ipam(store, "node-a")
    [addr] = await a.assign("old", attrs={"namespace": "ns", "pod": "old"})
    await gc.run_once()
    await a.release_handle("old")
    await a.assign_ip("new", str(addr), attrs={"namespace": "ns", "pod": "new"})
    await apply(store, wep_yaml("node--a-k8s-new-eth0", str(addr), "new"))
    clock.now += 1000
    assert (await gc.run_once()).released_leaks == []
    blk = next(b for b, _ in await read_blocks(store) if addr in b.cidr)
    assert blk.attribute_of(blk.ordinal(addr)).handle == "new"


async def test_empty_blocks_are_released_but_a_live_host_keeps_one(store):
    clock = Clock()
    gc = IpamGC(store, node_grace=60, empty_block_grace=30, clock=clock)
    a = Ipam(store, "node-a")
    await a.assign("h", ipv4=20)  # three blocks of 8
    assert len(await a.host_blocks()) == 3
    await a.release_handle("h")
    await gc.run_once()
    clock.now += 30
    result = await gc.run_once()
    assert len(result.deleted_blocks) == 2
    assert len(await a.host_blocks()) == 1
    [(left, _)] = await read_blocks(store)
    assert await store.get(affinity_key("node-a", left.cidr)) is not None
    # Nothing stale remains for check to complain about.
    report = await check(store)
    assert report.orphans == [] and report.problems == 0


async def test_stale_affinity_keys_are_removed(store):
    gc = IpamGC(store, clock=Clock())
    cidr = ipaddress.ip_network("10.244.0.248/29")
    await store.put(affinity_key("node-a", cidr), b"{}")
    assert (await check(store)).orphans
    result = await gc.run_once()
    assert result.removed_affinity_keys == [affinity_key("node-a", cidr)]
    assert (await check(store)).orphans == []


class FlakyStore(MemoryDatastore):
    """A real MemoryDatastore whose first ``failures`` list calls find the store unreachable."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    async def list(self, prefix: str):  # type: ignore[no-untyped-def]
        if self.failures:
            self.failures -= 1
            raise UnavailableError("etcd: no endpoint reachable")
        return await super().list(prefix)


async def test_the_gc_loop_survives_an_unreachable_store_and_stops_when_told():
    flaky = FlakyStore(failures=0)
    await apply(flaky, POOL + "---\n" + node_yaml("node-a"))
    a = Ipam(flaky, "node-a")
    await a.assign("h")
    await flaky.delete(resource_key("Node", "node-a"))
    flaky.failures = 2
    gc = IpamGC(flaky, node_grace=0, clock=Clock())
    stop = asyncio.Event()
    task = asyncio.create_task(gc.run(0.01, stop))
    for _ in range(500):
        if flaky.failures == 0 and await a.host_blocks() == []:
            break
        await asyncio.sleep(0.01)
    assert await a.host_blocks() == []  # a pass after the failed ones did the work
    stop.set()
    await asyncio.wait_for(task, 5)
    assert task.exception() is None
    await flaky.close()
