"""The allocator: ``Ipam`` hands addresses to handles out of blocks affine to its host.

Every change to a block is read-modify-CAS: read the block, change the fresh copy, write it back
only if its revision is unchanged, and on a conflict start again from a new read. Nothing is
cached between requests (CNI runs one process per request), so a block is never written from
stale state. See ``ipam.keys`` for the store layout.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import random
import time
import zlib
from collections.abc import Mapping, Sequence

from bgpd.datastore.base import (
    Datastore,
    KeyExistsError,
    KeyNotFoundError,
    RevisionConflictError,
)
from ipam.block import Address, Block
from ipam.errors import AddressInUseError, IpamError, NotAllocatedError, PoolExhaustedError
from ipam.keys import (
    BLOCKS,
    Network,
    affinity_key,
    affinity_prefix,
    block_key,
    handle_key,
    host_key,
    liveness_key,
    parse_affinity_key,
)
from ipam.pools import ClusterView, Pool
from ipam.stats import IpamStats

log = logging.getLogger(__name__)

# A CAS loop that loses this many times in a row is a livelock or a bug, not contention.
MAX_ATTEMPTS = 200


async def _backoff(attempt: int) -> None:
    # Jittered so that writers who collided once do not collide again in lockstep.
    await asyncio.sleep(random.uniform(0, 0.0005 * (1 << min(attempt, 7))))


async def read_blocks(store: Datastore) -> list[tuple[Block, int]]:
    """Every readable block with its mod_revision; a malformed block is logged and skipped."""
    kvs, _rev = await store.list(BLOCKS)
    out = []
    for kv in kvs:
        try:
            out.append((Block.from_json(kv.value, kv.key), kv.mod_revision))
        except IpamError as exc:
            log.warning("%s", exc)
    return out


def _has_room(raw: bytes, cidr: Network, view: ClusterView) -> bool:
    try:
        block = Block.from_json(raw, block_key(cidr))
    except IpamError:
        return False
    return block.free_count(view.reserved_ordinals(block.cidr)) > 0


class _HandleRecord:
    """The handle's list of blocks, grown with CAS before any block write that allocates."""

    def __init__(self, store: Datastore, handle: str, stats: IpamStats) -> None:
        self.store = store
        self.handle = handle
        self.key = handle_key(handle)
        self.stats = stats
        self.blocks: set[str] = set()
        self.revision: int | None = None
        self.loaded = False
        self.touched = False

    async def load(self) -> None:
        kv = await self.store.get(self.key)
        self.blocks = set(_handle_blocks(kv.value, self.key)) if kv is not None else set()
        self.revision = kv.mod_revision if kv is not None else None
        self.loaded = True

    async def ensure(self, cidr: Network) -> None:
        """Make the record list ``cidr``. The first call of a request always writes, so a
        concurrent tidy of this record that read it earlier loses its CAS."""
        ident = str(cidr)
        for attempt in range(MAX_ATTEMPTS):
            if not self.loaded:
                await self.load()
            if ident in self.blocks and self.touched:
                return
            blocks = sorted(self.blocks | {ident})
            value = json.dumps({"handle": self.handle, "blocks": blocks}).encode()
            try:
                if self.revision is None:
                    self.revision = await self.store.create(self.key, value)
                else:
                    self.revision = await self.store.update(self.key, value, revision=self.revision)
            except (KeyExistsError, KeyNotFoundError, RevisionConflictError):
                self.stats.conflicts += 1
                self.loaded = False
                await _backoff(attempt)
                continue
            self.blocks = set(blocks)
            self.touched = True
            return
        raise IpamError(f"handle {self.handle}: gave up after {MAX_ATTEMPTS} conflicting writes")


def _handle_blocks(raw: bytes, where: str) -> list[str]:
    try:
        doc = json.loads(raw)
        blocks = doc["blocks"]
        if not isinstance(blocks, list) or not all(isinstance(b, str) for b in blocks):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        log.warning("%s: unreadable handle record; treating it as empty", where)
        return []
    return blocks


class Ipam:
    """IP address management for one host over a shared datastore."""

    def __init__(self, store: Datastore, host: str) -> None:
        if not host:
            raise ValueError("host must not be empty")
        self.store = store
        self.host = host
        self.stats = IpamStats()

    # --- assignment -------------------------------------------------------------------------

    async def assign(
        self,
        handle: str,
        *,
        ipv4: int = 1,
        ipv6: int = 0,
        attrs: Mapping[str, str] | None = None,
        pools: Sequence[str] = (),
    ) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
        """Allocate ``ipv4`` IPv4 and ``ipv6`` IPv6 addresses to ``handle``.

        Affine blocks first, then a newly claimed block, then (unless strictAffinity) a free
        address in another host's block. All or nothing: on failure what was taken is released.
        """
        if not handle:
            raise IpamError("handle must not be empty")
        if ipv4 < 0 or ipv6 < 0:
            raise IpamError("address counts must not be negative")
        started = time.perf_counter()
        full_attrs = {"node": self.host, **(attrs or {})}
        view = await ClusterView.read(self.store, self.host)
        record = _HandleRecord(self.store, handle, self.stats)
        got: list[Address] = []
        try:
            for version, count in ((4, ipv4), (6, ipv6)):
                if count:
                    pools_ = view.pools_for(version, pools)
                    await self._assign_family(handle, count, full_attrs, pools_, view, record, got)
        except BaseException:
            if got:
                await self._rollback(handle, got)
            raise
        self.stats.allocations += len(got)
        self.stats.latency.observe(time.perf_counter() - started)
        return got

    async def _assign_family(
        self,
        handle: str,
        count: int,
        attrs: Mapping[str, str],
        pools: list[Pool],
        view: ClusterView,
        record: _HandleRecord,
        taken: list[Address],
    ) -> None:
        """Allocate ``count`` addresses of the pools' family onto ``taken`` as each block write
        lands, so a failure part-way leaves the caller knowing everything to roll back."""
        got: list[Address] = []

        async def take(cidr: Network, borrowing: bool = False) -> None:
            new = await self._allocate_in(
                cidr, count - len(got), handle, attrs, view, record, borrowing=borrowing
            )
            got.extend(new)
            taken.extend(new)

        affine = await self._affine_blocks(pools)
        if affine:
            await take(affine[0])
        if len(got) < count and len(affine) > 1:
            # The newest block is full: read the older ones in one round trip and only go
            # back (with a fresh read and a CAS) to those that had room.
            kvs = await asyncio.gather(*(self.store.get(block_key(c)) for c in affine[1:]))
            for cidr, kv in zip(affine[1:], kvs):
                if len(got) == count:
                    return
                if kv is not None and _has_room(kv.value, cidr, view):
                    await take(cidr)
        if len(got) == count:
            return
        tried = set(affine)
        while len(got) < count:
            claimed = await self._claim(pools, view, tried)
            if claimed is None:
                break
            tried.add(claimed)
            await take(claimed)
        if len(got) < count and not view.config.strict_affinity:
            for cidr in await self._borrowable(pools, view):
                if len(got) == count:
                    break
                await take(cidr, borrowing=True)
        if len(got) < count:
            self.stats.exhausted += 1
            family = f"IPv{pools[0].version}"
            names = ", ".join(f"{p.name} ({p.network})" for p in pools)
            why = ""
            if view.max_blocks is not None:
                why = f"; maxBlocksPerHost is {view.max_blocks}"
            if view.config.strict_affinity:
                why += "; strictAffinity forbids borrowing"
            raise PoolExhaustedError(
                f"no free {family} address for node {self.host} in {names}{why}"
            )

    async def _affine_blocks(self, pools: list[Pool]) -> list[Network]:
        kvs, _rev = await self.store.list(affinity_prefix(self.host))
        out = []
        # Newest claim first: while a host fills up, its older blocks are full, and reading
        # each of them before the one with room made every assign cost O(blocks) reads.
        for kv in sorted(kvs, key=lambda kv: kv.create_revision, reverse=True):
            try:
                _host, cidr = parse_affinity_key(kv.key)
            except ValueError:
                log.warning("%s: not an affinity key", kv.key)
                continue
            if any(p.holds_block(cidr) for p in pools):
                out.append(cidr)
        return out

    async def _allocate_in(
        self,
        cidr: Network,
        count: int,
        handle: str,
        attrs: Mapping[str, str],
        view: ClusterView,
        record: _HandleRecord,
        *,
        borrowing: bool = False,
    ) -> list[Address]:
        """Take up to ``count`` addresses from one block with a CAS loop; [] if it has none.

        Unless ``borrowing``, the block must still be affine to this host: between reading our
        affinity index and the block, GC may have released it and another host claimed it.
        """
        key = block_key(cidr)
        for attempt in range(MAX_ATTEMPTS):
            kv = await self.store.get(key)
            if kv is None:
                return []
            try:
                block = Block.from_json(kv.value, key)
            except IpamError as exc:
                # One corrupt block must not fail every pod on the host: skip it (ipam check
                # names it) and let the caller try the next block or claim a new one.
                log.warning("skipping unreadable block: %s", exc)
                return []
            if not borrowing and block.host != self.host:
                return []
            skip = view.reserved_ordinals(block.cidr)
            if block.free_count(skip) == 0:
                return []
            await record.ensure(block.cidr)
            ordinals = block.allocate(count, handle, attrs, skip)
            try:
                await self.store.update(key, block.to_json(), revision=kv.mod_revision)
            except KeyNotFoundError:
                self.stats.conflicts += 1
                return []
            except RevisionConflictError:
                self.stats.conflicts += 1
                await _backoff(attempt)
                continue
            if borrowing:
                self.stats.borrows += len(ordinals)
            return [block.address(o) for o in ordinals]
        raise IpamError(f"block {cidr}: gave up after {MAX_ATTEMPTS} conflicting writes")

    async def _claim(
        self, pools: list[Pool], view: ClusterView, tried: set[Network]
    ) -> Network | None:
        """Claim one more block for this host (or adopt one it lost the index of); None when
        the pools have no unclaimed block or the host is at maxBlocksPerHost."""
        blocks = await read_blocks(self.store)
        # A malformed block is skipped here; creating over it fails with KeyExistsError below.
        existing = {b.cidr for b, _ in blocks}
        ours = [b for b, _ in blocks if b.host == self.host]
        # A crash between creating a block and writing its affinity index leaves a block that
        # is ours but invisible to _affine_blocks: take it back first.
        for block in ours:
            if block.cidr not in tried and any(p.holds_block(block.cidr) for p in pools):
                await self.store.put(affinity_key(self.host, block.cidr), b'{"state":"confirmed"}')
                return block.cidr
        limit = view.max_blocks
        if limit is not None and len(ours) >= limit:
            return None
        for pool in pools:
            for cidr in pool.candidate_blocks(existing, self.host):
                if len(view.reserved_ordinals(cidr)) == cidr.num_addresses:
                    continue
                try:
                    await self.store.create(block_key(cidr), Block.new(cidr, self.host).to_json())
                except KeyExistsError:
                    # Claimed since our list: try the next one, no need to re-read them all.
                    self.stats.conflicts += 1
                    existing.add(cidr)
                    continue
                await self.store.put(affinity_key(self.host, cidr), b'{"state":"confirmed"}')
                if limit is not None and await self._one_too_many(cidr, limit):
                    return None
                self.stats.block_claims += 1
                log.info("node %s claimed block %s in pool %s", self.host, cidr, pool.name)
                return cidr
        return None

    async def _one_too_many(self, cidr: Network, limit: int) -> bool:
        """Whether the block just claimed takes this host past maxBlocksPerHost; if so it is
        given back (while nothing is allocated from it).

        Two claims of one host at once (CNI calls in parallel) can both pass the count in
        `_claim`. Ranked by creation revision, the later claims are the ones past the limit,
        so exactly they give their blocks back and neither side retries forever.
        """
        kvs, _rev = await self.store.list(BLOCKS)
        mine: list[tuple[int, Network, int]] = []
        for kv in kvs:
            try:
                block = Block.from_json(kv.value, kv.key)
            except IpamError:
                continue
            if block.host == self.host:
                mine.append((kv.create_revision, block.cidr, kv.mod_revision))
        mine.sort(key=lambda m: (m[0], int(m[1].network_address)))
        rank = next((i for i, m in enumerate(mine) if m[1] == cidr), None)
        if rank is None or rank < limit:
            return False
        try:
            # Only if unchanged since its creation: an address taken from it keeps it.
            await self.store.delete(block_key(cidr), revision=mine[rank][2])
        except (KeyNotFoundError, RevisionConflictError):
            return False
        with contextlib.suppress(KeyNotFoundError):
            await self.store.delete(affinity_key(self.host, cidr))
        self.stats.conflicts += 1
        log.info("node %s gave block %s back: maxBlocksPerHost %d (a parallel claim won)",
                 self.host, cidr, limit)  # fmt: skip
        return True

    async def _borrowable(self, pools: list[Pool], view: ClusterView) -> list[Network]:
        """Blocks of the pools with a free address, starting at a host-dependent one so that
        hosts that ran out at the same moment spread over what is left."""
        cidrs = sorted(
            (
                b.cidr
                for b, _ in await read_blocks(self.store)
                if any(p.holds_block(b.cidr) for p in pools)
                and b.free_count(view.reserved_ordinals(b.cidr)) > 0
            ),
            key=lambda c: int(c.network_address),
        )
        if not cidrs:
            return []
        start = zlib.crc32(self.host.encode()) % len(cidrs)
        return cidrs[start:] + cidrs[:start]

    async def assign_ip(
        self, handle: str, ip: str, *, attrs: Mapping[str, str] | None = None
    ) -> None:
        """Allocate exactly ``ip`` to ``handle`` (the ``cni.projectcalico.org/ipAddrs`` case).

        The address must lie in a pool; the pool may be disabled (Calico allows an explicit
        address there). IPReservations only govern automatic assignment, as in Calico, so they
        do not stop an explicit request. AddressInUseError if another handle holds it.
        """
        if not handle:
            raise IpamError("handle must not be empty")
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            raise IpamError(f"{ip!r} is not an IP address") from None
        started = time.perf_counter()
        view = await ClusterView.read(self.store, self.host)
        pool = view.pool_of(address)
        if pool is None:
            raise IpamError(f"{address} is not in any IP pool")
        cidr = pool.block_of(address)
        key = block_key(cidr)
        record = _HandleRecord(self.store, handle, self.stats)
        full_attrs = {"node": self.host, **(attrs or {})}
        for attempt in range(MAX_ATTEMPTS):
            kv = await self.store.get(key)
            if kv is None:
                # Nobody holds the block yet: claim it for us unless we are at our limit, in
                # which case it is created without affinity and the address counts as borrowed.
                ours = sum(1 for b, _ in await read_blocks(self.store) if b.host == self.host)
                limit = view.max_blocks
                owner = self.host if limit is None or ours < limit else None
                block = Block.new(cidr, owner)
                await record.ensure(cidr)
                block.assign(block.ordinal(address), handle, full_attrs)
                try:
                    await self.store.create(key, block.to_json())
                except KeyExistsError:
                    self.stats.conflicts += 1
                    continue
                if owner is not None:
                    await self.store.put(affinity_key(owner, cidr), b'{"state":"confirmed"}')
                    self.stats.block_claims += 1
                break
            block = Block.from_json(kv.value, key)
            holder = block.attribute_of(block.ordinal(address))
            if holder is not None:
                if holder.handle == handle:
                    return
                raise AddressInUseError(f"{address} is already in use by another handle")
            await record.ensure(cidr)
            block.assign(block.ordinal(address), handle, full_attrs)
            try:
                await self.store.update(key, block.to_json(), revision=kv.mod_revision)
            except (KeyNotFoundError, RevisionConflictError):
                self.stats.conflicts += 1
                await _backoff(attempt)
                continue
            break
        else:
            raise IpamError(f"{address}: gave up after {MAX_ATTEMPTS} conflicting writes")
        self.stats.allocations += 1
        self.stats.latency.observe(time.perf_counter() - started)

    # --- release ----------------------------------------------------------------------------

    async def release_handle(
        self, handle: str
    ) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
        """Release every address of ``handle`` and forget the handle; [] if it holds none."""
        key = handle_key(handle)
        released: list[Address] = []
        for attempt in range(MAX_ATTEMPTS):
            kv = await self.store.get(key)
            if kv is None:
                return released
            for ident in _handle_blocks(kv.value, key):
                try:
                    cidr = ipaddress.ip_network(ident)
                except ValueError:
                    continue
                released += await self._release_in(cidr, handle=handle)
            try:
                await self.store.delete(key, revision=kv.mod_revision)
            except KeyNotFoundError:
                return released
            except RevisionConflictError:
                # An assign for this handle ran meanwhile: release what it added as well.
                self.stats.conflicts += 1
                await _backoff(attempt)
                continue
            self.stats.releases += len(released)
            return released
        raise IpamError(f"handle {handle}: gave up after {MAX_ATTEMPTS} conflicting writes")

    async def release_ip(self, ip: str) -> None:
        """Release one address, whoever holds it. NotAllocatedError if it is free."""
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            raise IpamError(f"{ip!r} is not an IP address") from None
        cidr = await self._block_holding(address)
        if cidr is None:
            raise NotAllocatedError(f"{address} is not allocated")
        released = await self._release_in(cidr, address=address)
        if not released:
            raise NotAllocatedError(f"{address} is not allocated")
        self.stats.releases += 1

    async def release_if_held(self, ip: str, handle: str) -> bool:
        """Release ``ip`` only if ``handle`` still holds it; GC's guard against freeing an
        address that was released and handed to another workload since it looked."""
        address = ipaddress.ip_address(ip)
        cidr = await self._block_holding(address)
        if cidr is None:
            return False
        released = await self._release_in(cidr, handle=handle, address=address)
        self.stats.releases += len(released)
        return bool(released)

    async def _block_holding(self, address: Address) -> Network | None:
        view = await ClusterView.read(self.store, self.host)
        pool = view.pool_of(address)
        if pool is not None:
            cidr = pool.block_of(address)
            if await self.store.get(block_key(cidr)) is not None:
                return cidr
        # The pool may be gone or resized while its blocks live on: look at the blocks.
        for block, _rev in await read_blocks(self.store):
            if address in block.cidr:
                return block.cidr
        return None

    async def _release_in(
        self, cidr: Network, *, handle: str | None = None, address: Address | None = None
    ) -> list[Address]:
        """Free the handle's addresses (or one address) in one block, with a CAS loop, then
        drop the block from the handle record if the handle holds nothing more there."""
        key = block_key(cidr)
        for attempt in range(MAX_ATTEMPTS):
            kv = await self.store.get(key)
            if kv is None:
                return []
            block = Block.from_json(kv.value, key)
            if address is not None:
                attr = block.attribute_of(block.ordinal(address))
                # With both given, only free the address if that handle still holds it: GC
                # must not free an address that was released and handed to someone else.
                if attr is None or (handle is not None and attr.handle != handle):
                    return []
                owner = attr.handle
                ordinals = [block.ordinal(address)]
            else:
                owner = handle
                ordinals = block.ordinals_of(handle) if handle is not None else []
            if not ordinals:
                return []
            block.release(ordinals)
            try:
                await self.store.update(key, block.to_json(), revision=kv.mod_revision)
            except KeyNotFoundError:
                return []
            except RevisionConflictError:
                self.stats.conflicts += 1
                await _backoff(attempt)
                continue
            if address is not None and owner is not None and not block.ordinals_of(owner):
                await self._forget_block(owner, cidr)
            return [block.address(o) for o in ordinals]
        raise IpamError(f"block {cidr}: gave up after {MAX_ATTEMPTS} conflicting writes")

    async def _forget_block(self, handle: str, cidr: Network) -> None:
        key = handle_key(handle)
        for _attempt in range(MAX_ATTEMPTS):
            kv = await self.store.get(key)
            if kv is None:
                return
            blocks = [b for b in _handle_blocks(kv.value, key) if b != str(cidr)]
            try:
                if blocks:
                    value = json.dumps({"handle": handle, "blocks": blocks}).encode()
                    await self.store.update(key, value, revision=kv.mod_revision)
                else:
                    await self.store.delete(key, revision=kv.mod_revision)
            except KeyNotFoundError:
                return
            except RevisionConflictError:
                self.stats.conflicts += 1
                continue
            return

    async def _rollback(self, handle: str, addresses: list[Address]) -> None:
        for address in addresses:
            try:
                cidr = await self._block_holding(address)
                if cidr is not None:
                    await self._release_in(cidr, address=address)
            except Exception:  # the original error matters more; GC cleans up what is left
                log.exception("could not roll back %s of handle %s", address, handle)

    # --- queries ----------------------------------------------------------------------------

    async def host_blocks(
        self, host: str | None = None
    ) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        """The blocks affine to ``host`` (default: ours), sorted: what its speaker originates."""
        host = host or self.host
        cidrs = [b.cidr for b, _ in await read_blocks(self.store) if b.host == host]
        return sorted(cidrs, key=lambda c: (c.version, int(c.network_address)))

    async def borrowed(
        self, host: str | None = None
    ) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
        """Addresses of ``host``'s workloads that sit in blocks not affine to it: the /32s and
        /128s its speaker must advertise."""
        host = host or self.host
        out: list[Address] = []
        for block, _ in await read_blocks(self.store):
            if block.host == host:
                continue
            for ordinal, attr in block.allocated():
                if attr.attrs.get("node") == host:
                    out.append(block.address(ordinal))
        return sorted(out, key=lambda a: (a.version, int(a)))

    # --- liveness ---------------------------------------------------------------------------

    async def register_liveness(self, ttl: int) -> int:
        """Mark this host as one that keeps a liveness lease, and take the lease.

        The caller refreshes the returned lease (``store.refresh_lease``) well inside ``ttl``;
        once it expires GC treats the host as gone, as it does a deleted Node.
        """
        lease = await self.store.grant_lease(ttl)
        await self.store.put(host_key(self.host), json.dumps({"liveness": True}).encode())
        await self.store.put(liveness_key(self.host), b"alive", lease=lease)
        return lease
