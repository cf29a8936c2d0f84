"""IPAM on a real etcd: many allocator processes at once never hand an address out twice.

Issue 5's acceptance 2 asks for "8 processes x 500 allocations against a /24 pool with
blockSize 29 ... exactly 4,000 unique addresses". A /24 holds only 256 addresses, so that is
impossible as written. It is run here in the two forms that keep its intent:

- a /20 pool with blockSize 29 (4,096 addresses in 512 blocks of 8): 8 processes x 500 nearly
  exhaust it, forcing block claims, borrowing and CAS conflicts; `routemesh ipam check` then
  finds exactly 4,000 unique addresses, no double allocation and no orphan;
- the /24 pool with blockSize 29 filled exactly: 8 processes x 32 = 256 addresses, after which
  one more allocation must fail with PoolExhaustedError.

Equal demands that are multiples of the block size never need to borrow (every host fills its
own blocks), so borrowing is forced separately: uneven demands that fill the /24 exactly but
would need 36 blocks of 8 without it.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import subprocess
import sys
from typing import Any

import pytest

from bgpd.datastore.etcd import EtcdDatastore
from bgpd.model import load_documents
from ipam import Ipam, PoolExhaustedError
from ipam.check import check
from ipam.gc import IpamGC
from ipam.keys import resource_key
from ipam.pools import put_resource, write_config

HOSTS = [f"node-{i}" for i in range(8)]


def resources(cidr: str, block_size: int) -> str:
    docs = [
        "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: load}\n"
        f"spec: {{cidr: {cidr}, blockSize: {block_size}}}\n"
    ]
    docs += [
        f"apiVersion: projectcalico.org/v3\nkind: Node\nmetadata: {{name: {h}}}\n" for h in HOSTS
    ]
    return "---\n".join(docs)


async def seed(endpoint: str, text: str) -> None:
    store = EtcdDatastore([endpoint])
    try:
        for r in load_documents(text):
            await put_resource(store, r)
    finally:
        await store.close()


async def _allocate_many(endpoint: str, host: str, count: int) -> dict[str, Any]:
    store = EtcdDatastore([endpoint], retry_for=60)
    ipam = Ipam(store, host)
    got: list[str] = []
    try:
        for i in range(count):
            [address] = await ipam.assign(
                f"{host}-{i}", attrs={"namespace": "load", "pod": f"{host}-pod-{i}"}
            )
            got.append(str(address))
    finally:
        await store.close()
    s = ipam.stats
    return {
        "host": host,
        "addresses": got,
        "conflicts": s.conflicts,
        "claims": s.block_claims,
        "borrows": s.borrows,
    }


def allocator_process(endpoint: str, host: str, count: int, go: Any, out: Any) -> None:
    """One agent: waits for the common start signal, then allocates ``count`` addresses."""
    go.wait()
    try:
        out.put(asyncio.run(_allocate_many(endpoint, host, count)))
    except BaseException as exc:  # reported to the parent, which fails the test with it
        out.put({"host": host, "error": f"{type(exc).__name__}: {exc}"})


def run_allocators(endpoint: str, counts: int | list[int]) -> list[dict[str, Any]]:
    """One process per host in HOSTS, ``counts`` allocations each (or per host), all at once."""
    ctx = multiprocessing.get_context("spawn")
    go, out = ctx.Event(), ctx.Queue()
    per_host = counts if isinstance(counts, list) else [counts] * len(HOSTS)
    procs = [
        ctx.Process(target=allocator_process, args=(endpoint, h, n, go, out))
        for h, n in zip(HOSTS, per_host)
    ]
    for p in procs:
        p.start()
    go.set()  # all at once
    try:
        results = [out.get(timeout=600) for _ in procs]
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    errors = [r for r in results if "error" in r]
    assert not errors, errors
    return results


def cli_check(endpoint: str) -> tuple[int, dict[str, Any]]:
    env = {**os.environ, "ROUTEMESH_DATASTORE": f"etcd://{endpoint}"}
    res = subprocess.run(
        [sys.executable, "-m", "bgpd.cli.main", "ipam", "check", "-o", "json"],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert res.stderr == "", res.stderr
    return res.returncode, json.loads(res.stdout)


async def add_endpoints(endpoint: str, results: list[dict[str, Any]]) -> None:
    """Record a WorkloadEndpoint per allocation, as the agent would: without them every
    address would be a leak."""
    store = EtcdDatastore([endpoint])
    try:
        for r in results:
            for i, address in enumerate(r["addresses"]):
                pod = f"{r['host']}-pod-{i}"
                for wep in load_documents(
                    "apiVersion: projectcalico.org/v3\nkind: WorkloadEndpoint\n"
                    f"metadata: {{name: {r['host']}-k8s-{pod}-eth0, namespace: load}}\n"
                    f"spec: {{node: {r['host']}, pod: {pod}, ipNetworks: ['{address}/32']}}\n"
                ):
                    await put_resource(store, wep)
    finally:
        await store.close()


def summary(results: list[dict[str, Any]]) -> dict[str, int]:
    return {k: sum(r[k] for r in results) for k in ("conflicts", "claims", "borrows")}


async def test_eight_processes_times_500_on_a_slash_20_never_double_allocate(etcd_server):
    endpoint = etcd_server.endpoint
    await seed(endpoint, resources("10.244.0.0/20", 29))
    results = await asyncio.to_thread(run_allocators, endpoint, 500)
    addresses = [a for r in results for a in r["addresses"]]
    assert len(addresses) == 4000
    assert len(set(addresses)) == 4000
    totals = summary(results)
    print("ipam /20 x8x500:", totals)
    assert totals["claims"] <= 512
    # 4,000 of 4,096 addresses: the claims race for the last blocks, and hosts that lose
    # borrow, so CAS conflicts are certain with eight processes.
    assert totals["conflicts"] > 0

    await add_endpoints(endpoint, results)
    code, report = await asyncio.to_thread(cli_check, endpoint)
    assert report["allocated"] == report["unique"] == 4000
    assert report["doubleAllocations"] == []
    assert report["orphans"] == []
    assert report["leaks"] == []
    assert report["problems"] == 0 and code == 0


async def test_eight_processes_fill_a_slash_24_exactly_then_it_is_exhausted(etcd_server):
    endpoint = etcd_server.endpoint
    await seed(endpoint, resources("10.244.0.0/24", 29))
    results = await asyncio.to_thread(run_allocators, endpoint, 32)
    addresses = [a for r in results for a in r["addresses"]]
    assert len(set(addresses)) == len(addresses) == 256
    print("ipam /24 x8x32:", summary(results))

    store = EtcdDatastore([endpoint])
    try:
        with pytest.raises(PoolExhaustedError):
            await Ipam(store, HOSTS[0]).assign("one-too-many")
        report = await check(store)
        assert report.allocated == report.unique == 256
        assert report.double_allocations == [] and report.orphans == []
        assert report.inconsistencies == []
    finally:
        await store.close()


async def test_parallel_cni_calls_of_one_node_respect_max_blocks_per_host(etcd_server):
    """Four allocations for the same node at once (CNI calls in parallel), with
    maxBlocksPerHost 2, interleaved on etcd's round trips: all of them see no block of the
    node and claim one, and the node still ends with two blocks holding all 16 addresses."""
    endpoint = etcd_server.endpoint
    await seed(endpoint, resources("10.244.0.0/24", 29))
    store = EtcdDatastore([endpoint])
    try:
        await write_config(store, max_blocks_per_host=2)
        calls = [Ipam(store, HOSTS[0]) for _ in range(4)]
        got = await asyncio.gather(*(c.assign(f"cni-{i}", ipv4=4) for i, c in enumerate(calls)))
        addresses = [a for g in got for a in g]
        assert len(set(addresses)) == len(addresses) == 16
        held = await calls[0].host_blocks()
        assert len(held) == 2, held
        assert all(any(a in b for b in held) for a in addresses)
        report = await check(store)
        assert report.double_allocations == [] and report.inconsistencies == []
    finally:
        await store.close()


async def test_uneven_demand_on_a_slash_24_forces_borrowing(etcd_server):
    """Demands that are not multiples of the block size: without borrowing they would need
    36 blocks of 8, and the /24 has 32, so some host must borrow from another host's block."""
    demand = [61, 50, 37, 33, 29, 22, 15, 9]
    assert sum(demand) == 256 and sum(-(-d // 8) for d in demand) == 36
    endpoint = etcd_server.endpoint
    await seed(endpoint, resources("10.244.0.0/24", 29))
    results = await asyncio.to_thread(run_allocators, endpoint, demand)
    addresses = [a for r in results for a in r["addresses"]]
    assert len(set(addresses)) == len(addresses) == 256
    totals = summary(results)
    print("ipam /24 uneven:", totals)
    assert totals["borrows"] > 0

    store = EtcdDatastore([endpoint])
    try:
        with pytest.raises(PoolExhaustedError):
            await Ipam(store, HOSTS[7]).assign("one-too-many")
        for r in results:
            ipam = Ipam(store, r["host"])
            # What the speaker must advertise as /32s is exactly what this host borrowed.
            assert len(await ipam.borrowed()) == r["borrows"]
            mine = {str(a) for a in await ipam.borrowed()}
            assert mine <= set(r["addresses"])
        report = await check(store)
        assert report.allocated == report.unique == 256
        assert report.double_allocations == [] and report.orphans == []
    finally:
        await store.close()


async def test_gc_on_etcd_returns_a_deleted_nodes_blocks_and_releases_leaks(etcd_server):
    endpoint = etcd_server.endpoint
    await seed(endpoint, resources("10.244.0.0/24", 29))
    store = EtcdDatastore([endpoint])
    now = [0.0]
    try:
        gone, stays = Ipam(store, "node-0"), Ipam(store, "node-1")
        leaked = await gone.assign(
            "k8s-pod-network.c1", ipv4=3, attrs={"namespace": "a", "pod": "x"}
        )
        leaked += await stays.assign("k8s-pod-network.c2", attrs={"namespace": "a", "pod": "y"})
        blocks = await gone.host_blocks()
        gc = IpamGC(store, node_grace=30, leak_grace=60, clock=lambda: now[0])
        await store.delete(resource_key("Node", "node-0"))
        await gc.run_once()
        now[0] = 30
        result = await gc.run_once()
        assert result.released_affinities == blocks
        assert await gone.host_blocks() == []
        now[0] = 61
        result = await gc.run_once()
        assert sorted(result.released_leaks) == sorted(leaked)
        # No endpoint exists for any of them: node-1's address is as much a leak as node-0's.
        report = await check(store)
        assert report.problems == 0
        # The gone node's block, empty now and affine to nobody, goes after the empty-block
        # grace; node-1 keeps its (empty) block because it is its only one.
        now[0] = 100
        await gc.run_once()
        now[0] = 130
        result = await gc.run_once()
        assert result.deleted_blocks == blocks
        assert len(await stays.host_blocks()) == 1
        kvs, _ = await store.list("/routemesh/v1/ipam/blocks/")
        assert len(kvs) == 1
    finally:
        await store.close()


def routemesh(endpoint: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bgpd.cli.main", "ipam", *argv, "--datastore", f"etcd://{endpoint}"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


async def test_cli_configure_show_release_on_etcd(etcd_server):
    endpoint = etcd_server.endpoint
    await seed(endpoint, resources("10.244.0.0/29", 30))
    res = await asyncio.to_thread(routemesh, endpoint, "configure", "--strictaffinity=true")
    assert (res.returncode, res.stdout.strip()) == (0, "Successfully set StrictAffinity to: true")
    store = EtcdDatastore([endpoint])
    try:
        a, b = Ipam(store, "node-0"), Ipam(store, "node-1")
        got = await a.assign("k8s-pod-network.c1", ipv4=4, attrs={"pod": "web"})
        await b.assign("k8s-pod-network.c2")
        # Strict affinity, set through the CLI, stops node-0 from borrowing node-1's addresses.
        with pytest.raises(PoolExhaustedError, match="strictAffinity"):
            await a.assign("k8s-pod-network.c3")
        res = await asyncio.to_thread(routemesh, endpoint, "show", "--ip", str(got[0]))
        assert res.returncode == 0
        assert f"IP {got[0]} is in use" in res.stdout and "pod: web" in res.stdout
        res = await asyncio.to_thread(routemesh, endpoint, "release", "--ip", str(got[0]))
        assert res.stdout.strip() == f"Successfully released IP address {got[0]}"
        [again] = await a.assign("k8s-pod-network.c3")
        assert again == got[0]
        res = await asyncio.to_thread(routemesh, endpoint, "show", "--show-blocks")
        assert res.returncode == 0
        assert "| IP Pool  | 10.244.0.0/29 | 8         | 5 (62%)    | 3 (38%)  |" in res.stdout
    finally:
        await store.close()
