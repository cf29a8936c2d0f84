"""The IPAM consistency report behind ``routemesh ipam check`` and ``routemesh ipam show``.

It reads one snapshot of blocks, affinities, handles, Nodes and WorkloadEndpoints and names every
problem: an address held twice, a block document that could hand one out twice, an allocation
its handle record does not lead to (release by handle would miss it), blocks and affinities of
Nodes that no longer exist, and workload addresses no endpoint uses (leaks).
"""

from __future__ import annotations

import ipaddress
import json
from collections import defaultdict
from dataclasses import dataclass, field

from bgpd.datastore.base import Datastore
from bgpd.model import IPPool, Node
from ipam.block import Address, Attribute, Block
from ipam.errors import IpamError
from ipam.keys import AFFINITY, BLOCKS, HANDLES, Network, parse_affinity_key
from ipam.pools import Pool, read_resources
from ipam.workloads import EndpointIndex, is_workload


@dataclass(frozen=True)
class Allocation:
    address: Address
    block: Network
    handle: str | None
    attrs: dict[str, str]


@dataclass
class Snapshot:
    """Everything IPAM holds, read once."""

    blocks: list[Block]
    malformed: list[str]
    affinities: list[tuple[str, Network]]
    handles: dict[str, set[str]]
    pools: list[Pool]
    nodes: set[str]
    endpoints: EndpointIndex

    @classmethod
    async def read(cls, store: Datastore) -> Snapshot:
        # Affinities before blocks: a claim writes the block first, so every affinity in this
        # read has its block in the next one unless it really is stale.
        aff_kvs, _ = await store.list(AFFINITY)
        block_kvs, _ = await store.list(BLOCKS)
        handle_kvs, _ = await store.list(HANDLES)
        malformed: list[str] = []
        affinities = []
        for kv in aff_kvs:
            try:
                affinities.append(parse_affinity_key(kv.key))
            except ValueError:
                malformed.append(f"{kv.key}: not an affinity key")
        blocks = []
        for kv in block_kvs:
            try:
                blocks.append(Block.from_json(kv.value, kv.key))
            except IpamError as exc:
                malformed.append(str(exc))
        handles: dict[str, set[str]] = {}
        for kv in handle_kvs:
            try:
                doc = json.loads(kv.value)
                handles[str(doc["handle"])] = set(doc["blocks"])
            except (ValueError, KeyError, TypeError):
                malformed.append(f"{kv.key}: unreadable handle record")
        pools = [
            Pool.from_resource(p)
            for p in await read_resources(store, "IPPool")
            if isinstance(p, IPPool)
        ]
        nodes = {n.name for n in await read_resources(store, "Node") if isinstance(n, Node)}
        return cls(
            blocks, malformed, affinities, handles, pools, nodes, await EndpointIndex.read(store)
        )

    def allocations(self) -> list[Allocation]:
        out = []
        for block in self.blocks:
            for ordinal, attr in block.allocated():
                out.append(_allocation(block, ordinal, attr))
        return out

    def pool_of(self, cidr: Network) -> Pool | None:
        for pool in self.pools:
            if pool.holds_block(cidr):
                return pool
        return None


def _allocation(block: Block, ordinal: int, attr: Attribute) -> Allocation:
    return Allocation(block.address(ordinal), block.cidr, attr.handle, dict(attr.attrs))


@dataclass
class CheckReport:
    blocks: int = 0
    allocated: int = 0
    unique: int = 0
    double_allocations: list[str] = field(default_factory=list)
    inconsistencies: list[str] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)
    leaks: list[str] = field(default_factory=list)
    outside_pools: list[str] = field(default_factory=list)

    @property
    def problems(self) -> int:
        return (
            len(self.double_allocations)
            + len(self.inconsistencies)
            + len(self.orphans)
            + len(self.leaks)
            + len(self.outside_pools)
        )

    def to_json(self) -> dict[str, object]:
        return {
            "blocks": self.blocks,
            "allocated": self.allocated,
            "unique": self.unique,
            "doubleAllocations": self.double_allocations,
            "inconsistencies": self.inconsistencies,
            "orphans": self.orphans,
            "leaks": self.leaks,
            "outsidePools": self.outside_pools,
            "problems": self.problems,
        }


def check_snapshot(snap: Snapshot) -> CheckReport:
    report = CheckReport(blocks=len(snap.blocks))
    report.inconsistencies.extend(snap.malformed)
    allocations = snap.allocations()
    report.allocated = len(allocations)
    holders: dict[Address, list[Allocation]] = defaultdict(list)
    for alloc in allocations:
        holders[alloc.address].append(alloc)
    report.unique = len(holders)
    for address, allocs in sorted(holders.items(), key=lambda kv: (kv[0].version, int(kv[0]))):
        if len(allocs) > 1:
            who = ", ".join(f"{a.handle} (block {a.block})" for a in allocs)
            report.double_allocations.append(f"{address} is allocated {len(allocs)} times: {who}")
    for address, names in sorted(snap.endpoints.shared_addresses().items(), key=str):
        report.double_allocations.append(
            f"{address} is used by {len(names)} workload endpoints: {', '.join(sorted(names))}"
        )
    for block in snap.blocks:
        report.inconsistencies.extend(block.problems())
        if snap.pool_of(block.cidr) is None and not block.is_empty():
            report.outside_pools.append(
                f"block {block.cidr} holds {block.in_use()} addresses but is in no IP pool"
            )
        if block.host is not None and block.host not in snap.nodes:
            report.orphans.append(
                f"block {block.cidr} is affine to node {block.host}, which does not exist"
            )
    by_cidr = {b.cidr: b for b in snap.blocks}
    for host, cidr in snap.affinities:
        block = by_cidr.get(cidr)
        if block is None:
            report.orphans.append(
                f"affinity of node {host} names block {cidr}, which does not exist"
            )
        elif block.host != host:
            report.orphans.append(
                f"affinity of node {host} names block {cidr}, which is affine to "
                f"{block.host or 'no node'}"
            )
    for alloc in allocations:
        if alloc.handle is not None and str(alloc.block) not in snap.handles.get(alloc.handle, ()):
            report.orphans.append(
                f"{alloc.address} (handle {alloc.handle}) cannot be released by handle: the "
                f"handle record does not name block {alloc.block}"
            )
        if is_workload(alloc.attrs) and not snap.endpoints.accounts_for(
            alloc.address, alloc.handle, alloc.attrs
        ):
            pod = f"{alloc.attrs.get('namespace', 'default')}/{alloc.attrs['pod']}"
            report.leaks.append(
                f"{alloc.address} (handle {alloc.handle}, pod {pod}) is allocated but no "
                "workload endpoint uses it"
            )
    return report


async def check(store: Datastore) -> CheckReport:
    """Read the store once and report every IPAM problem found."""
    return check_snapshot(await Snapshot.read(store))


def lookup(snap: Snapshot, address: Address) -> tuple[Block | None, Attribute | None]:
    """The block holding ``address`` and its allocation, if any."""
    for block in snap.blocks:
        if address in block.cidr:
            return block, block.attribute_of(block.ordinal(address))
    return None, None


def parse_address(text: str) -> Address:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise IpamError(f"{text!r} is not an IP address") from None
