"""What IPAM reads from the resource store: pools, the IPAM configuration, reservations and the
host's Node, and the rules that pick the pools and free blocks a host may use."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import zlib
from collections.abc import Container, Iterator, Sequence
from dataclasses import dataclass, field

from bgpd.datastore.base import Datastore
from bgpd.datastore.resources import (
    ResourceConflictError,
    ResourceExistsError,
    ResourceNotFoundError,
    ResourceStore,
)
from bgpd.model import (
    CALICO_API,
    IPAMConfiguration,
    IPPool,
    IPReservation,
    Node,
    Resource,
    ResourceError,
    from_dict,
    to_dict,
)
from bgpd.model.ipam import IPAMConfigurationSpec
from ipam.errors import IpamError, PoolExhaustedError
from ipam.keys import Network, resource_key, resource_prefix
from policy.selector import SelectorError, parse

log = logging.getLogger(__name__)


async def read_resources(store: Datastore, kind: str) -> list[Resource]:
    """Every stored resource of ``kind``; a malformed one is logged and skipped, never fatal."""
    kvs, _rev = await store.list(resource_prefix(kind))
    out = []
    for kv in kvs:
        try:
            out.append(from_dict(json.loads(kv.value), source=kv.key))
        except (ValueError, ResourceError) as exc:
            log.warning("%s: skipping unreadable resource: %s", kv.key, exc)
    return out


async def read_resource(store: Datastore, kind: str, name: str) -> Resource | None:
    kv = await store.get(resource_key(kind, name))
    if kv is None:
        return None
    try:
        return from_dict(json.loads(kv.value), source=kv.key)
    except (ValueError, ResourceError) as exc:
        log.warning("%s: skipping unreadable resource: %s", kv.key, exc)
        return None


async def put_resource(store: Datastore, resource: Resource) -> Resource:
    """Validate and store a resource the way ``routemesh apply`` does (tests and tools)."""
    return await ResourceStore(store).apply(resource)


async def read_config(store: Datastore) -> IPAMConfigurationSpec:
    config = await read_resource(store, "IPAMConfiguration", "default")
    if isinstance(config, IPAMConfiguration):
        return config.spec
    return IPAMConfigurationSpec()


async def write_config(
    store: Datastore, *, strict_affinity: bool | None = None, max_blocks_per_host: int | None = None
) -> IPAMConfigurationSpec:
    """Change the cluster IPAM configuration with a compare-and-swap, keeping other fields."""
    resources = ResourceStore(store)
    for _attempt in range(100):
        try:
            current: Resource | None = await resources.get(IPAMConfiguration, "default")
        except ResourceNotFoundError:
            current = None
        spec = dict(to_dict(current).get("spec") or {}) if current is not None else {}
        if strict_affinity is not None:
            spec["strictAffinity"] = strict_affinity
        if max_blocks_per_host is not None:
            spec["maxBlocksPerHost"] = max_blocks_per_host
        metadata: dict[str, str] = {"name": "default"}
        if current is not None and current.metadata.resource_version:
            metadata["resourceVersion"] = current.metadata.resource_version
        wanted = from_dict(
            {"apiVersion": CALICO_API, "kind": "IPAMConfiguration", "metadata": metadata,
             "spec": spec}
        )  # fmt: skip
        try:
            if current is None:
                stored = await resources.create(wanted)
            else:
                stored = await resources.update(wanted)
        except (ResourceExistsError, ResourceConflictError, ResourceNotFoundError):
            continue  # another writer got there first: re-read and apply our change to theirs
        assert isinstance(stored, IPAMConfiguration)
        return stored.spec
    raise IpamError("IPAMConfiguration default: too many concurrent writers")


def _reserved_networks(reservations: Sequence[Resource]) -> list[Network]:
    nets = []
    for res in reservations:
        if isinstance(res, IPReservation):
            nets.extend(ipaddress.ip_network(c, strict=False) for c in res.spec.reserved_cidrs)
    return nets


@dataclass(frozen=True)
class Pool:
    """An IPPool reduced to what allocation needs."""

    name: str
    network: Network
    block_size: int
    disabled: bool
    node_selector: str
    workload: bool
    manual: bool

    @classmethod
    def from_resource(cls, pool: IPPool) -> Pool:
        spec = pool.spec
        return cls(
            name=pool.name,
            network=spec.network,
            block_size=spec.block_size or 26,
            disabled=spec.disabled,
            node_selector=spec.node_selector,
            workload=spec.allowed_uses is None or "Workload" in spec.allowed_uses,
            manual=spec.assignment_mode == "Manual",
        )

    @property
    def version(self) -> int:
        return self.network.version

    def block_of(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> Network:
        return ipaddress.ip_network(f"{address}/{self.block_size}", strict=False)

    def holds_block(self, cidr: Network) -> bool:
        return cidr.version == self.version and cidr.subnet_of(self.network)  # type: ignore[arg-type]

    def block_count(self) -> int:
        return 1 << (self.block_size - self.network.prefixlen)

    def candidate_blocks(self, existing: Container[Network], host: str) -> Iterator[Network]:
        """Blocks of this pool not in ``existing``, starting at a host-dependent offset.

        Starting elsewhere for each host keeps hosts that claim at the same moment off each
        other's blocks; walking the pool by index (not listing it) keeps a /64 pool cheap.
        """
        count = self.block_count()
        step = 1 << (self.network.max_prefixlen - self.block_size)
        base = int(self.network.network_address)
        start = zlib.crc32(host.encode()) % count
        for i in range(count):
            index = (start + i) % count
            cidr = ipaddress.ip_network((base + index * step, self.block_size))
            if cidr not in existing:
                yield cidr

    def matches(self, labels: dict[str, str]) -> bool:
        try:
            return parse(self.node_selector).evaluate(labels)
        except SelectorError:
            # The model refuses bad selectors on write; one that slipped in selects nothing.
            return False


@dataclass
class ClusterView:
    """One consistent-enough read of what allocation depends on, taken once per request."""

    host: str
    pools: list[Pool]
    config: IPAMConfigurationSpec
    reserved: list[Network]
    labels: dict[str, str] = field(default_factory=dict)

    @classmethod
    async def read(cls, store: Datastore, host: str) -> ClusterView:
        # Four independent reads: one round trip instead of four.
        pool_list, node, config, reservations = await asyncio.gather(
            read_resources(store, "IPPool"),
            read_resource(store, "Node", host),
            read_config(store),
            read_resources(store, "IPReservation"),
        )
        labels = dict(node.metadata.labels or {}) if isinstance(node, Node) else {}
        return cls(
            host=host,
            pools=[Pool.from_resource(p) for p in pool_list if isinstance(p, IPPool)],
            config=config,
            reserved=_reserved_networks(reservations),
            labels=labels,
        )

    @property
    def max_blocks(self) -> int | None:
        # Calico treats 0 as "no limit".
        return self.config.max_blocks_per_host or None

    def pool_of(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> Pool | None:
        for pool in self.pools:
            if address in pool.network:
                return pool
        return None

    def pools_for(self, version: int, requested: Sequence[str]) -> list[Pool]:
        """The pools an automatic assignment of this family may use, in preference order.

        ``requested`` names pools or gives their CIDRs (the CNI ``ipv4pools`` argument); a
        requested pool that does not exist, is disabled or does not select this host is an
        error, so a typo in an annotation is not silently ignored.
        """
        if requested:
            chosen = []
            for want in requested:
                pool = self._lookup(want)
                if pool is None:
                    raise IpamError(f"requested pool {want!r} does not exist")
                if pool.version != version:
                    continue
                if pool.disabled:
                    raise IpamError(f"requested pool {pool.name} ({pool.network}) is disabled")
                if not pool.matches(self.labels):
                    raise IpamError(
                        f"requested pool {pool.name} ({pool.network}) does not select node "
                        f"{self.host} (nodeSelector {pool.node_selector!r})"
                    )
                chosen.append(pool)
            if not chosen:
                raise IpamError(f"no IPv{version} pool among the requested pools {list(requested)}")
            return chosen
        chosen = [
            p
            for p in self.pools
            if p.version == version
            and not p.disabled
            and p.workload
            and not p.manual
            and p.matches(self.labels)
        ]
        if not chosen:
            raise PoolExhaustedError(f"no enabled IPv{version} pool selects node {self.host}")
        return sorted(chosen, key=lambda p: (p.network.network_address, p.network.prefixlen))

    def _lookup(self, want: str) -> Pool | None:
        for pool in self.pools:
            if pool.name == want:
                return pool
        try:
            net = ipaddress.ip_network(want, strict=False)
        except ValueError:
            return None
        for pool in self.pools:
            if pool.network == net:
                return pool
        return None

    def reserved_ordinals(self, cidr: Network) -> frozenset[int]:
        """Ordinals of ``cidr`` that an IPReservation keeps out of automatic assignment."""
        out: set[int] = set()
        base = int(cidr.network_address)
        last = int(cidr.broadcast_address)
        for net in self.reserved:
            if net.version != cidr.version:
                continue
            low = max(base, int(net.network_address))
            high = min(last, int(net.broadcast_address))
            if low <= high:
                out.update(range(low - base, high - base + 1))
        return frozenset(out)
