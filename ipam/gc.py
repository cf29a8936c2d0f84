"""IPAM garbage collection: affinities of gone nodes, leaked workload addresses, empty blocks,
and stale index keys, each released only after it has looked dead for a grace period.

One ``IpamGC`` runs in one place (the controller role). It remembers when it first saw each
thing dead, so a node that restarts, or an endpoint written a moment after its address, is not
collected. Every write is a compare-and-swap on the revision it just read, so an allocation
that lands in a block while GC looks at it wins and the block survives.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from bgpd.datastore.base import (
    Datastore,
    DatastoreError,
    KeyNotFoundError,
    KeyValue,
    RevisionConflictError,
)
from bgpd.model import Node
from ipam.allocator import Ipam
from ipam.block import Address, Block
from ipam.errors import IpamError
from ipam.keys import (
    AFFINITY,
    BLOCKS,
    HANDLES,
    HOSTS,
    LIVENESS,
    Network,
    affinity_key,
    block_key,
    parse_affinity_key,
)
from ipam.pools import read_resources
from ipam.workloads import EndpointIndex, is_workload

log = logging.getLogger(__name__)

# Calico kube-controllers' defaults: nodes get a short grace, leaks 15 minutes.
DEFAULT_NODE_GRACE = 300.0
DEFAULT_LEAK_GRACE = 900.0


@dataclass
class GCResult:
    released_affinities: list[Network] = field(default_factory=list)
    deleted_blocks: list[Network] = field(default_factory=list)
    released_leaks: list[Address] = field(default_factory=list)
    removed_affinity_keys: list[str] = field(default_factory=list)
    removed_handles: list[str] = field(default_factory=list)


class IpamGC:
    def __init__(
        self,
        store: Datastore,
        *,
        node_grace: float = DEFAULT_NODE_GRACE,
        leak_grace: float = DEFAULT_LEAK_GRACE,
        empty_block_grace: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.node_grace = node_grace
        self.leak_grace = leak_grace
        self.empty_block_grace = node_grace if empty_block_grace is None else empty_block_grace
        self.clock = clock
        # Releases go through the allocator's CAS paths; GC never owns a block.
        self._ipam = Ipam(store, "ipam-gc")
        self._gone_since: dict[str, float] = {}
        self._leaked_since: dict[tuple[Address, str | None], float] = {}
        self._empty_since: dict[Network, float] = {}
        self._stale_handle_since: dict[tuple[str, int], float] = {}

    @staticmethod
    def _due(seen: dict[Any, float], key: object, now: float, grace: float) -> bool:
        first = seen.setdefault(key, now)
        return now - first >= grace

    async def run(self, interval: float, stop: asyncio.Event) -> None:
        """Collect every ``interval`` seconds until ``stop`` is set. A failed pass (etcd away,
        a malformed key) is logged and retried at the next tick; it never ends the loop."""
        while not stop.is_set():
            try:
                result = await self.run_once()
                if any(vars(result).values()):
                    log.info("ipam gc: %s", result)
            except (DatastoreError, IpamError) as exc:
                log.warning("ipam gc pass failed, retrying in %.0fs: %s", interval, exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)

    async def run_once(self) -> GCResult:
        """One full pass; call it periodically."""
        now = self.clock()
        result = GCResult()
        aff_kvs, _ = await self.store.list(AFFINITY)
        block_kvs, _ = await self.store.list(BLOCKS)
        blocks: dict[Network, tuple[Block, int]] = {}
        for kv in block_kvs:
            try:
                block = Block.from_json(kv.value, kv.key)
            except IpamError as exc:
                log.warning("ipam gc: %s", exc)
                continue
            blocks[block.cidr] = (block, kv.mod_revision)
        nodes = {n.name for n in await read_resources(self.store, "Node") if isinstance(n, Node)}
        leased = {unquote(kv.key[len(HOSTS) :]) for kv in (await self.store.list(HOSTS))[0]}
        alive = {unquote(kv.key[len(LIVENESS) :]) for kv in (await self.store.list(LIVENESS))[0]}
        hosts = {b.host for b, _ in blocks.values() if b.host is not None}
        affinities = []
        for kv in aff_kvs:
            try:
                host, cidr = parse_affinity_key(kv.key)
            except ValueError:
                continue
            affinities.append((kv, host, cidr))
            hosts.add(host)

        gone = set()
        for host in hosts:
            dead = host not in nodes or (host in leased and host not in alive)
            if not dead:
                self._gone_since.pop(host, None)
            elif self._due(self._gone_since, host, now, self.node_grace):
                gone.add(host)

        for block, revision in list(blocks.values()):
            if block.host in gone and await self._release_affinity(block, revision, result):
                blocks.pop(block.cidr)
        await self._collect_empty(blocks, gone, now, result)
        await self._collect_affinity_keys(affinities, result)
        await self._collect_leaks(blocks, now, result)
        await self._collect_handles(now, result)
        for host in gone:
            self._gone_since.pop(host, None)
        return result

    async def _release_affinity(self, block: Block, revision: int, result: GCResult) -> bool:
        """Take a gone host's block away from it: delete it if empty, else make it affine to
        nobody (its addresses stay until their workloads go). True if the block was deleted."""
        host = block.host
        assert host is not None
        key = block_key(block.cidr)
        try:
            if block.is_empty():
                await self.store.delete(key, revision=revision)
                result.deleted_blocks.append(block.cidr)
                deleted = True
            else:
                block.affinity = None
                await self.store.update(key, block.to_json(), revision=revision)
                deleted = False
        except (KeyNotFoundError, RevisionConflictError):
            # It changed under us; the next pass looks again from a fresh read.
            return False
        result.released_affinities.append(block.cidr)
        await self._delete_quietly(affinity_key(host, block.cidr))
        log.info("ipam gc: released block %s of gone node %s", block.cidr, host)
        return deleted

    async def _collect_empty(
        self,
        blocks: dict[Network, tuple[Block, int]],
        gone: set[str],
        now: float,
        result: GCResult,
    ) -> None:
        # A live host keeps one block (a used one, else its lowest empty one): giving back its
        # last block only to claim one again at the next pod is churn, not hygiene.
        kept: dict[str, Network] = {}
        for cidr, (block, _rev) in sorted(
            blocks.items(), key=lambda kv: int(kv[0].network_address)
        ):
            if block.host is not None and not block.is_empty() and block.host not in kept:
                kept[block.host] = cidr
        for cidr, (block, revision) in sorted(
            blocks.items(), key=lambda kv: int(kv[0].network_address)
        ):
            if not block.is_empty():
                self._empty_since.pop(cidr, None)
                continue
            if block.host is not None and block.host not in kept:
                kept[block.host] = cidr
                continue
            if block.host is not None and kept.get(block.host) == cidr:
                continue
            if not self._due(self._empty_since, cidr, now, self.empty_block_grace):
                continue
            try:
                await self.store.delete(block_key(cidr), revision=revision)
            except (KeyNotFoundError, RevisionConflictError):
                continue
            self._empty_since.pop(cidr, None)
            result.deleted_blocks.append(cidr)
            if block.host is not None:
                await self._delete_quietly(affinity_key(block.host, cidr))
            log.info("ipam gc: released empty block %s", cidr)

    async def _collect_affinity_keys(
        self, affinities: list[tuple[KeyValue, str, Network]], result: GCResult
    ) -> None:
        # Read the blocks again: a block claimed after our first list has its affinity key
        # written after the block, so it is visible here.
        block_kvs, _ = await self.store.list(BLOCKS)
        owners: dict[Network, str | None] = {}
        for kv in block_kvs:
            try:
                block = Block.from_json(kv.value, kv.key)
            except IpamError:
                continue
            owners[block.cidr] = block.host
        for kv, host, cidr in affinities:
            if cidr in owners and owners[cidr] == host:
                continue
            try:
                await self.store.delete(kv.key, revision=kv.mod_revision)
            except (KeyNotFoundError, RevisionConflictError):
                continue
            result.removed_affinity_keys.append(kv.key)

    async def _collect_leaks(
        self, blocks: dict[Network, tuple[Block, int]], now: float, result: GCResult
    ) -> None:
        endpoints = await EndpointIndex.read(self.store)
        leaking: set[tuple[Address, str | None]] = set()
        for block, _rev in blocks.values():
            for ordinal, attr in block.allocated():
                address = block.address(ordinal)
                if not is_workload(attr.attrs) or endpoints.accounts_for(
                    address, attr.handle, attr.attrs
                ):
                    continue
                key = (address, attr.handle)
                leaking.add(key)
                if not self._due(self._leaked_since, key, now, self.leak_grace):
                    continue
                if attr.handle is not None and await self._ipam.release_if_held(
                    str(address), attr.handle
                ):
                    result.released_leaks.append(address)
                    log.info("ipam gc: released leaked %s of handle %s", address, attr.handle)
        for key in list(self._leaked_since):
            if key not in leaking:
                del self._leaked_since[key]

    async def _collect_handles(self, now: float, result: GCResult) -> None:
        """Delete handle records that lead to no address, once unchanged for the leak grace."""
        handle_kvs, _ = await self.store.list(HANDLES)
        block_kvs, _ = await self.store.list(BLOCKS)
        held: set[str] = set()
        for kv in block_kvs:
            try:
                block = Block.from_json(kv.value, kv.key)
            except IpamError:
                continue
            held.update(a.handle for _, a in block.allocated() if a.handle is not None)
        seen = set()
        for kv in handle_kvs:
            try:
                handle = str(json.loads(kv.value)["handle"])
            except (ValueError, KeyError, TypeError):
                continue
            if handle in held:
                continue
            key = (handle, kv.mod_revision)
            seen.add(key)
            if not self._due(self._stale_handle_since, key, now, self.leak_grace):
                continue
            try:
                await self.store.delete(kv.key, revision=kv.mod_revision)
            except (KeyNotFoundError, RevisionConflictError):
                continue
            result.removed_handles.append(handle)
        for key in list(self._stale_handle_since):
            if key not in seen:
                del self._stale_handle_since[key]

    async def _delete_quietly(self, key: str) -> None:
        try:
            await self.store.delete(key)
        except KeyNotFoundError:
            pass
