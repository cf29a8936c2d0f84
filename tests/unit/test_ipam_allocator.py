"""IPAM allocation rules against MemoryDatastore: one test per rule of issue 5."""

from __future__ import annotations

import asyncio
import ipaddress
import json

import pytest

from bgpd.datastore.base import KeyValue
from bgpd.datastore.memory import MemoryDatastore
from bgpd.model import load_documents
from ipam import AddressInUseError, Ipam, IpamError, NotAllocatedError, PoolExhaustedError
from ipam.allocator import read_blocks
from ipam.block import Block
from ipam.check import check
from ipam.keys import affinity_key, affinity_prefix, block_key, handle_key
from ipam.pools import put_resource, write_config


def ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text)


async def apply(store: MemoryDatastore, text: str) -> None:
    for resource in load_documents(text):
        await put_resource(store, resource)


def pool(name: str, cidr: str, block_size: int, **spec: object) -> str:
    extra = "".join(f"\n  {k}: {json.dumps(v)}" for k, v in spec.items())
    return f"""
apiVersion: projectcalico.org/v3
kind: IPPool
metadata: {{name: {name}}}
spec:
  cidr: {cidr}
  blockSize: {block_size}{extra}
---
"""


def node(name: str, **labels: str) -> str:
    return f"""
apiVersion: projectcalico.org/v3
kind: Node
metadata:
  name: {name}
  labels: {json.dumps(labels)}
---
"""


@pytest.fixture
async def store():
    s = MemoryDatastore()
    yield s
    await s.close()


async def test_first_assign_claims_a_block_of_the_pool_block_size_for_the_host(store):
    await apply(store, pool("p", "10.244.0.0/24", 29))
    ipam = Ipam(store, "node-a")
    [a] = await ipam.assign("h1")
    blocks = await ipam.host_blocks()
    assert len(blocks) == 1
    assert blocks[0].prefixlen == 29
    assert blocks[0].subnet_of(ipaddress.ip_network("10.244.0.0/24"))
    assert a in blocks[0]
    assert await store.get(affinity_key("node-a", blocks[0])) is not None
    # The next address comes from the same block: no second claim.
    [b] = await ipam.assign("h2")
    assert b in blocks[0] and b != a
    assert ipam.stats.block_claims == 1
    assert ipam.stats.allocations == 2
    assert ipam.stats.latency.count == 2


async def test_a_full_block_leads_to_a_new_claim(store):
    await apply(store, pool("p", "10.244.0.0/24", 30))
    ipam = Ipam(store, "node-a")
    got = await ipam.assign("h", ipv4=6)
    assert len(set(got)) == 6
    assert len(await ipam.host_blocks()) == 2


async def test_two_hosts_get_disjoint_blocks(store):
    await apply(store, pool("p", "10.244.0.0/24", 29))
    a, b = Ipam(store, "node-a"), Ipam(store, "node-b")
    await a.assign("ha")
    await b.assign("hb")
    blocks_a, blocks_b = await a.host_blocks(), await b.host_blocks()
    assert blocks_a and blocks_b and not set(blocks_a) & set(blocks_b)


async def test_attrs_are_stored_with_the_node_and_release_by_handle_frees_all(store):
    await apply(store, pool("p", "10.244.0.0/24", 29))
    ipam = Ipam(store, "node-a")
    got = await ipam.assign("pod-1", ipv4=3, attrs={"namespace": "ns", "pod": "web"})
    [block] = await read_blocks(store)
    assert {a.attrs["node"] for _, a in block[0].allocated()} == {"node-a"}
    assert {a.attrs["pod"] for _, a in block[0].allocated()} == {"web"}
    assert sorted(await ipam.release_handle("pod-1")) == sorted(got)
    assert await store.get(handle_key("pod-1")) is None
    assert (await read_blocks(store))[0][0].is_empty()
    assert await ipam.release_handle("pod-1") == []


async def test_release_ip_frees_one_address_and_refuses_a_free_one(store):
    await apply(store, pool("p", "10.244.0.0/24", 29))
    ipam = Ipam(store, "node-a")
    a, b = await ipam.assign("h", ipv4=2)
    await ipam.release_ip(str(a))
    with pytest.raises(NotAllocatedError):
        await ipam.release_ip(str(a))
    with pytest.raises(NotAllocatedError):
        await ipam.release_ip("10.244.200.1")
    with pytest.raises(IpamError):
        await ipam.release_ip("not-an-ip")
    assert await ipam.release_handle("h") == [b]


async def test_requested_address_is_honoured_when_free_and_refused_when_taken(store):
    await apply(store, pool("p", "10.244.0.0/24", 29))
    a, b = Ipam(store, "node-a"), Ipam(store, "node-b")
    await a.assign_ip("h1", "10.244.0.77")
    # The block holding it was free, so it is now node-a's.
    assert ipaddress.ip_network("10.244.0.72/29") in await a.host_blocks()
    await a.assign_ip("h1", "10.244.0.77")  # same handle again: a no-op
    with pytest.raises(AddressInUseError, match=r"10\.244\.0\.77"):
        await b.assign_ip("h2", "10.244.0.77")
    # A free address in node-a's block can still be requested by node-b (borrowed).
    await b.assign_ip("h2", "10.244.0.78")
    assert ip("10.244.0.78") in await b.borrowed()
    with pytest.raises(IpamError, match="not in any IP pool"):
        await a.assign_ip("h3", "10.99.0.1")
    # Automatic assignment never hands out the requested addresses again.
    got = await a.assign("h4", ipv4=6)
    assert ip("10.244.0.77") not in got and ip("10.244.0.78") not in got


async def test_reservations_are_skipped_by_automatic_assignment(store):
    await apply(
        store,
        pool("p", "10.244.0.0/28", 29)
        + """
apiVersion: projectcalico.org/v3
kind: IPReservation
metadata: {name: r}
spec:
  reservedCIDRs: [10.244.0.0/30, 10.244.0.9]
""",
    )
    ipam = Ipam(store, "node-a")
    got = await ipam.assign("h", ipv4=11)
    reserved = {ip("10.244.0.0"), ip("10.244.0.1"), ip("10.244.0.2"), ip("10.244.0.3")}
    reserved.add(ip("10.244.0.9"))
    assert not set(got) & reserved
    assert len(set(got)) == 11
    with pytest.raises(PoolExhaustedError):
        await ipam.assign("h2")
    # An explicit request bypasses reservations, as in Calico.
    await ipam.assign_ip("h3", "10.244.0.9")


async def test_a_fully_reserved_block_is_never_claimed(store):
    await apply(
        store,
        pool("p", "10.244.0.0/28", 29)
        + """
apiVersion: projectcalico.org/v3
kind: IPReservation
metadata: {name: r}
spec:
  reservedCIDRs: [10.244.0.0/29]
""",
    )
    ipam = Ipam(store, "node-a")
    await ipam.assign("h")
    assert await ipam.host_blocks() == [ipaddress.ip_network("10.244.0.8/29")]


async def test_node_selector_and_disabled_decide_which_pools_serve_a_host(store):
    await apply(
        store,
        pool("edge", "10.244.1.0/24", 29, nodeSelector="zone == 'edge'")
        + pool("closed", "10.244.2.0/24", 29, disabled=True)
        + pool("all", "10.244.3.0/24", 29)
        + node("edge-1", zone="edge")
        + node("core-1", zone="core"),
    )
    edge, core = Ipam(store, "edge-1"), Ipam(store, "core-1")
    [a] = await edge.assign("h1")
    [b] = await core.assign("h2")
    # Both pools select edge-1; pools are tried in address order.
    assert a in ipaddress.ip_network("10.244.1.0/24")
    assert b in ipaddress.ip_network("10.244.3.0/24")
    [c] = await edge.assign("h3", pools=["all"])
    assert c in ipaddress.ip_network("10.244.3.0/24")
    [d] = await edge.assign("h4", pools=["10.244.1.0/24"])
    assert d in ipaddress.ip_network("10.244.1.0/24")
    with pytest.raises(IpamError, match="does not select node core-1"):
        await core.assign("h5", pools=["edge"])
    with pytest.raises(IpamError, match="disabled"):
        await core.assign("h6", pools=["closed"])
    with pytest.raises(IpamError, match="does not exist"):
        await core.assign("h7", pools=["nope"])


async def test_no_usable_pool_is_pool_exhausted(store):
    await apply(store, pool("p", "10.244.0.0/24", 29, disabled=True))
    with pytest.raises(PoolExhaustedError, match="no enabled IPv4 pool"):
        await Ipam(store, "n").assign("h")


async def test_borrowing_from_another_host_when_the_pool_has_no_free_block(store):
    await apply(store, pool("p", "10.244.0.0/29", 30))
    a, b = Ipam(store, "node-a"), Ipam(store, "node-b")
    await a.assign("a1")  # node-a takes one /30
    await b.assign("b1")  # node-b the other
    got_a = await a.assign("a2", ipv4=3)  # fills node-a's block
    borrowed = await a.assign("a3")  # must borrow from node-b's block
    assert borrowed[0] in (await b.host_blocks())[0]
    assert await a.borrowed() == borrowed
    assert a.stats.borrows == 1
    assert len(set(got_a + borrowed)) == 4


async def test_strict_affinity_forbids_borrowing(store):
    await apply(store, pool("p", "10.244.0.0/29", 30))
    await write_config(store, strict_affinity=True)
    a, b = Ipam(store, "node-a"), Ipam(store, "node-b")
    await a.assign("a1", ipv4=4)
    await b.assign("b1")
    with pytest.raises(PoolExhaustedError, match="strictAffinity"):
        await a.assign("a2")
    assert await a.borrowed() == []


async def test_max_blocks_per_host_is_enforced_and_then_borrows(store):
    await apply(store, pool("p", "10.244.0.0/28", 30))
    await write_config(store, max_blocks_per_host=1)
    a = Ipam(store, "node-a")
    got = await a.assign("a1", ipv4=4)
    assert len(await a.host_blocks()) == 1
    # The pool has free blocks, but node-a may hold only one: it borrows from another host's.
    b = Ipam(store, "node-b")
    await b.assign("b1")
    more = await a.assign("a2")
    assert more[0] in (await b.host_blocks())[0]
    await write_config(store, strict_affinity=True)
    with pytest.raises(PoolExhaustedError, match="maxBlocksPerHost is 1"):
        await a.assign("a3", ipv4=3)
    assert len(set(got + more)) == 5


class Interleaving(MemoryDatastore):
    """The memory store, yielding to the loop on every call: concurrent allocators then
    interleave between their reads and writes as they do against etcd."""

    async def list(self, prefix: str):  # type: ignore[override]
        await asyncio.sleep(0)
        return await super().list(prefix)

    async def create(self, key: str, value: bytes, *, lease: int = 0) -> int:
        await asyncio.sleep(0)
        return await super().create(key, value, lease=lease)


async def test_parallel_claims_of_one_host_stay_within_max_blocks_per_host():
    store = Interleaving()
    await apply(store, pool("p", "10.244.0.0/26", 29))
    await write_config(store, max_blocks_per_host=2)
    # Four CNI calls on one node at once, each wanting a block's worth: every one of them
    # reads the node's block count (0) before any claim lands, so all four claim.
    calls = [Ipam(store, "node-a") for _ in range(4)]
    got = await asyncio.gather(*(ipam.assign(f"h{i}", ipv4=4) for i, ipam in enumerate(calls)))
    held = await calls[0].host_blocks()
    assert len(held) == 2, held
    addresses = [a for g in got for a in g]
    assert len(set(addresses)) == len(addresses) == 16
    assert all(any(a in b for b in held) for a in addresses)
    assert len(await read_blocks(store)) == 2  # the blocks given back are gone, not orphaned
    report = await check(store)
    assert report.double_allocations == [] and report.inconsistencies == []
    await store.close()


async def test_ipv6_and_dual_stack(store):
    await apply(store, pool("v4", "10.244.0.0/24", 29) + pool("v6", "fd00:10::/120", 125))
    ipam = Ipam(store, "n")
    got = await ipam.assign("h", ipv4=1, ipv6=2)
    assert [a.version for a in got] == [4, 6, 6]
    assert all(a in ipaddress.ip_network("fd00:10::/120") for a in got[1:])
    assert sorted(await ipam.release_handle("h"), key=str) == sorted(got, key=str)


async def test_a_failed_family_rolls_back_what_was_taken(store):
    await apply(store, pool("v4", "10.244.0.0/24", 29))
    ipam = Ipam(store, "n")
    with pytest.raises(PoolExhaustedError, match="IPv6"):
        await ipam.assign("h", ipv4=2, ipv6=1)
    [(block, _)] = await read_blocks(store)
    assert block.is_empty()
    assert await store.get(handle_key("h")) is None
    report = await check(store)
    assert report.allocated == 0


async def test_bad_arguments_are_ipam_errors(store):
    ipam = Ipam(store, "n")
    with pytest.raises(IpamError):
        await ipam.assign("")
    with pytest.raises(IpamError):
        await ipam.assign("h", ipv4=-1)
    with pytest.raises(IpamError, match="not an IP address"):
        await ipam.assign_ip("h", "10.0.0.300")
    with pytest.raises(ValueError):
        Ipam(store, "")


class RacingStore(MemoryDatastore):
    """A real MemoryDatastore in which another host writes each block between our read and our
    CAS, the way a second agent on etcd would: the first ``races`` block updates lose."""

    def __init__(self, races: int) -> None:
        super().__init__()
        self.races = races
        self.rival: Ipam | None = None
        self._inside = False

    async def update(self, key: str, value: bytes, *, revision: int, lease: int = 0) -> int:
        if self.races and key.startswith("/routemesh/v1/ipam/blocks/") and not self._inside:
            self.races -= 1
            self._inside = True
            try:
                kv: KeyValue | None = await self.get(key)
                assert kv is not None and self.rival is not None
                block = Block.from_json(kv.value)
                ordinal = block.unallocated[0]
                # The rival takes exactly the address we are about to take.
                await self.rival.assign_ip(f"rival-{self.races}", str(block.address(ordinal)))
            finally:
                self._inside = False
        return await super().update(key, value, revision=revision, lease=lease)


async def test_a_cas_conflict_retries_from_a_fresh_read_and_never_double_allocates():
    store = RacingStore(races=5)
    await apply(store, pool("p", "10.244.0.0/24", 29))
    ipam = Ipam(store, "node-a")
    store.rival = Ipam(store, "node-b")
    await ipam.assign("first")  # claims the block; the first update races
    got = await ipam.assign("mine", ipv4=3)
    assert ipam.stats.conflicts >= 4
    report = await check(store)
    assert report.double_allocations == []
    assert report.allocated == report.unique == 4 + 5
    holders = {}
    for block, _ in await read_blocks(store):
        for o, attr in block.allocated():
            holders[block.address(o)] = attr.handle
    assert all(holders[a] == "mine" for a in got)
    await store.close()


async def test_an_orphaned_block_of_ours_is_adopted_not_leaked(store):
    await apply(store, pool("p", "10.244.0.0/29", 30))
    ipam = Ipam(store, "node-a")
    await ipam.assign("h1")
    [cidr] = await ipam.host_blocks()
    # A crash between creating the block and writing the affinity index loses the index.
    await store.delete(affinity_key("node-a", cidr))
    [b] = await ipam.assign("h2")
    assert b in cidr
    assert await store.get(affinity_key("node-a", cidr)) is not None


async def test_a_malformed_block_is_skipped_not_fatal(store):
    await apply(store, pool("p", "10.244.0.0/28", 30))
    cidr = ipaddress.ip_network("10.244.0.0/30")
    await store.put(block_key(cidr), b"{garbage")
    await store.put(affinity_key("node-a", cidr), b"{}")
    # node-a's affinity index leads to it: it is skipped and node-a claims another block.
    [a] = await Ipam(store, "node-a").assign("h1")
    assert a not in cidr
    # Another host never writes over it either: the claim skips a key that exists.
    [b] = await Ipam(store, "node-b").assign("h2")
    assert b not in cidr
    assert await store.get(block_key(cidr)) is not None
    assert (await store.get(block_key(cidr))).value == b"{garbage"
    report = await check(store)
    assert any("not JSON" in p for p in report.inconsistencies)


async def test_affinity_index_lists_only_our_blocks(store):
    await apply(store, pool("p", "10.244.0.0/24", 29))
    await Ipam(store, "node-a").assign("h1")
    await Ipam(store, "node-b").assign("h2")
    kvs, _ = await store.list(affinity_prefix("node-a"))
    assert len(kvs) == 1


async def test_exhaustion_part_way_through_one_family_rolls_back_everything(store):
    await apply(store, pool("p", "10.244.0.0/29", 30))
    await Ipam(store, "node-b").assign("b1")
    ipam = Ipam(store, "node-a")
    # 7 addresses are free across both blocks; asking for 8 takes 7 before it fails.
    with pytest.raises(PoolExhaustedError):
        await ipam.assign("a1", ipv4=8)
    report = await check(store)
    assert report.allocated == 1
    assert await store.get(handle_key("a1")) is None
    assert len(await ipam.assign("a2", ipv4=7)) == 7
