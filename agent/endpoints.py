"""Workload endpoints end to end: addresses from IPAM, the veth plumbing, and the
WorkloadEndpoint record. The CNI plugin and `routemesh endpoint` both go through `Workloads`."""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from agent.endpoint import (
    DEFAULT_MTU,
    IPV4_GATEWAY,
    IPV6_GATEWAY,
    EndpointDataplane,
    EndpointError,
    EndpointSpec,
    IPAddress,
    Plumbed,
    veth_name,
    workload_id,
)
from bgpd.datastore.base import Datastore
from bgpd.datastore.resources import (
    ResourceExistsError,
    ResourceNotFoundError,
    ResourceStore,
    kind_prefix,
    resource_key,
)
from bgpd.model import Profile, ResourceError, WorkloadEndpoint, from_dict
from policy.endpoint import NAMESPACE_PROFILE_PREFIX

log = logging.getLogger(__name__)

WEP_KIND = "WorkloadEndpoint"


class WorkloadError(Exception):
    """The workload cannot be attached; ``field`` names the input at fault, when one is."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


def wep_key(namespace: str, name: str) -> str:
    """Where a WorkloadEndpoint lives in the datastore (the ResourceStore's layout)."""
    return resource_key(WorkloadEndpoint, name, namespace)


def wep_name(node: str, orchestrator: str, workload: str, endpoint: str) -> str:
    """Calico's WorkloadEndpoint name: the four parts joined by '-', each '-' doubled."""
    return "-".join(part.replace("-", "--") for part in (node, orchestrator, workload, endpoint))


def cli_container_id(namespace: str, name: str) -> str:
    """A stable stand-in container id for endpoints made by hand (no runtime gave one)."""
    return "cli" + hashlib.sha1(workload_id(namespace, name).encode()).hexdigest()[:29]


@dataclass(frozen=True)
class WorkloadRequest:
    """One workload interface to attach: who it is, where it lives, which addresses it wants."""

    namespace: str
    name: str
    netns: str
    container_id: str
    handle: str
    orchestrator: str = "k8s"
    ifname: str = "eth0"
    labels: Mapping[str, str] = field(default_factory=dict)
    profiles: Sequence[str] = ()
    # Fixed addresses (cni.projectcalico.org/ipAddrs, --ip); empty means "ask IPAM".
    ips: Sequence[str] = ()
    pools: Sequence[str] = ()
    ipv4: int = 1
    ipv6: int = 0
    mtu: int = DEFAULT_MTU


@dataclass(frozen=True)
class Attached:
    plumbed: Plumbed
    endpoint: WorkloadEndpoint | None


class Workloads:
    """Attach, detach, check and list workloads on one node.

    ``ipam`` (an ``ipam.Ipam``) and ``store`` are optional: without IPAM only fixed addresses
    work, without a store nothing is recorded. Both come from the caller (injected), so tests
    and the CLI pick the backend.
    """

    def __init__(
        self,
        node: str,
        dataplane: EndpointDataplane,
        *,
        ipam: Any | None = None,
        store: Datastore | None = None,
    ) -> None:
        self.node = node
        self.dataplane = dataplane
        self.ipam = ipam
        self.store = store
        # Records go through the ResourceStore (validation, uid, resourceVersion).
        self.resources = ResourceStore(store) if store is not None else None

    # -- add --------------------------------------------------------------------------------

    async def add(self, req: WorkloadRequest) -> Attached:
        """Addresses, plumbing, record; on failure undo what this call did, then raise.

        A repeated ADD for the same container (a runtime retry) reuses the addresses its
        record holds instead of taking new ones, so it changes nothing that already works.
        """
        existing = await self._existing(req)
        reuse = (
            existing is not None
            and existing.spec.container_id == req.container_id
            and bool(existing.spec.ip_networks)
        )
        if reuse:
            assert existing is not None and existing.spec.ip_networks is not None
            addresses = tuple(ipaddress.ip_interface(n).ip for n in existing.spec.ip_networks)
        else:
            addresses = await self._addresses(req)
        spec = self.spec(req, addresses)
        try:
            # Before the record: the policy loop must never see the endpoint without it.
            await self._ensure_namespace_profile(req)
            plumbed = await self.dataplane.create(spec)
            endpoint = await self._record(req, plumbed)
        except BaseException:
            await self._undo(req, release=not reuse)
            raise
        return Attached(plumbed, endpoint)

    async def _existing(self, req: WorkloadRequest) -> WorkloadEndpoint | None:
        return await self._read_wep(
            req.namespace, wep_name(self.node, req.orchestrator, req.name, req.ifname)
        )

    async def _read_wep(self, namespace: str, name: str) -> WorkloadEndpoint | None:
        if self.resources is None:
            return None
        try:
            wep = await self.resources.get(WorkloadEndpoint, name, namespace)
        except ResourceNotFoundError:
            return None
        except (ValueError, ResourceError) as exc:
            log.warning("%s/%s: unreadable WorkloadEndpoint, treating as absent: %s",
                        namespace, name, exc)  # fmt: skip
            return None
        return wep if isinstance(wep, WorkloadEndpoint) else None

    async def _ensure_namespace_profile(self, req: WorkloadRequest) -> None:
        """Create `kns.<namespace>` (allow all in and out) when the endpoint uses it and it is
        missing, as Calico's Kubernetes datastore does for every namespace; otherwise a pod with
        no policy would be denied by default. An existing profile is never changed: operators
        put labelsToApply there."""
        if self.resources is None:
            return
        name = NAMESPACE_PROFILE_PREFIX + req.namespace
        # The policy side reads an empty profile list as kns.<namespace> too.
        if req.profiles and name not in req.profiles:
            return
        try:
            await self.resources.get(Profile, name)
            return
        except ResourceNotFoundError:
            pass
        except (ValueError, ResourceError) as exc:
            log.warning("Profile %s is unreadable; leaving it alone: %s", name, exc)
            return
        doc = {
            "apiVersion": "projectcalico.org/v3",
            "kind": "Profile",
            "metadata": {"name": name},
            "spec": {
                # Calico's own label for the namespace name, with its pcns. prefix.
                "labelsToApply": {"pcns.projectcalico.org/name": req.namespace},
                "ingress": [{"action": "Allow"}],
                "egress": [{"action": "Allow"}],
            },
        }
        try:
            profile = from_dict(doc, source="endpoint")
        except ResourceError as exc:
            raise WorkloadError(f"Profile {name}: {exc}", field="namespace") from exc
        try:
            await self.resources.create(profile)
        except ResourceExistsError:
            pass  # another ADD in the same namespace made it first
        else:
            log.info("created namespace profile %s", name)

    async def _addresses(self, req: WorkloadRequest) -> tuple[IPAddress, ...]:
        attrs = {"namespace": req.namespace, "pod": req.name, "node": self.node}
        if req.ips:
            fixed = []
            for i, text in enumerate(req.ips):
                try:
                    fixed.append(ipaddress.ip_address(text.split("/", 1)[0]))
                except ValueError:
                    raise WorkloadError(
                        f"{text!r} is not an IP address", field=f"ipAddrs[{i}]"
                    ) from None
            if self.ipam is not None:
                try:
                    for addr in fixed:
                        await self.ipam.assign_ip(req.handle, str(addr), attrs=attrs)
                except BaseException:
                    await self.ipam.release_handle(req.handle)
                    raise
            return tuple(fixed)
        if self.ipam is None:
            raise WorkloadError("no IPAM configured and no fixed address given", field="ip")
        got = await self.ipam.assign(
            req.handle, ipv4=req.ipv4, ipv6=req.ipv6, attrs=attrs, pools=tuple(req.pools)
        )
        return tuple(got)

    def spec(self, req: WorkloadRequest, addresses: Sequence[IPAddress]) -> EndpointSpec:
        return EndpointSpec(
            namespace=req.namespace,
            name=req.name,
            netns=req.netns,
            addresses=tuple(addresses),
            ifname=req.ifname,
            mtu=req.mtu,
            prefix=self.dataplane.prefix,
        )

    async def _record(self, req: WorkloadRequest, plumbed: Plumbed) -> WorkloadEndpoint | None:
        if self.resources is None:
            return None
        labels = {
            **req.labels,
            "projectcalico.org/namespace": req.namespace,
            "projectcalico.org/orchestrator": req.orchestrator,
        }
        v4 = any(a.version == 4 for a in plumbed.addresses)
        v6 = any(a.version == 6 for a in plumbed.addresses)
        spec: dict[str, Any] = {
            "orchestrator": req.orchestrator,
            "node": self.node,
            "containerID": req.container_id,
            "pod": req.name,
            "endpoint": req.ifname,
            "ipNetworks": [f"{a}/{a.max_prefixlen}" for a in plumbed.addresses],
            "interfaceName": plumbed.host_ifname,
            "mac": plumbed.mac,
        }
        if v4:
            spec["ipv4Gateway"] = IPV4_GATEWAY
        if v6:
            spec["ipv6Gateway"] = IPV6_GATEWAY
        if req.profiles:
            spec["profiles"] = list(req.profiles)
        name = wep_name(self.node, req.orchestrator, req.name, req.ifname)
        doc = {
            "apiVersion": "projectcalico.org/v3",
            "kind": WEP_KIND,
            "metadata": {"name": name, "namespace": req.namespace, "labels": labels},
            "spec": spec,
        }
        try:
            wep = from_dict(doc, source="endpoint")
        except ResourceError as exc:
            raise WorkloadError(f"WorkloadEndpoint {req.namespace}/{name}: {exc}") from exc
        assert isinstance(wep, WorkloadEndpoint)
        stored = await self.resources.apply(wep)
        assert isinstance(stored, WorkloadEndpoint)
        return stored

    async def _undo(self, req: WorkloadRequest, *, release: bool = True) -> None:
        # Best effort: the caller sees the original error, not a cleanup failure.
        try:
            await self.dataplane.delete(req.namespace, req.name)
        except Exception as exc:
            log.warning("undo %s/%s: veth: %s", req.namespace, req.name, exc)
        if self.ipam is not None and release:
            try:
                await self.ipam.release_handle(req.handle)
            except Exception as exc:
                log.warning("undo %s/%s: release: %s", req.namespace, req.name, exc)

    # -- delete -----------------------------------------------------------------------------

    async def delete(
        self,
        namespace: str,
        name: str,
        handle: str,
        *,
        orchestrator: str = "k8s",
        ifname: str = "eth0",
        container_id: str | None = None,
    ) -> list[IPAddress]:
        """Remove veth, addresses and record; each part tolerates being gone already.

        With ``container_id``, a record that belongs to another container (the pod's new
        sandbox, added before the old one's DEL arrived) keeps its veth and record; only
        this container's addresses are released. Returns the addresses IPAM released.
        """
        name_ = wep_name(self.node, orchestrator, name, ifname)
        current = await self._read_wep(namespace, name_)
        superseded = (
            current is not None
            and container_id is not None
            and current.spec.container_id not in (None, container_id)
        )
        if not superseded:
            await self.dataplane.delete(namespace, name)
        released: list[IPAddress] = []
        if self.ipam is not None:
            released = list(await self.ipam.release_handle(handle))
        if self.resources is not None and not superseded:
            try:
                await self.resources.delete(WorkloadEndpoint, name_, namespace)
            except ResourceNotFoundError:
                pass
        return released

    # -- check and list ---------------------------------------------------------------------

    async def check(self, req: WorkloadRequest, addresses: Sequence[IPAddress]) -> list[str]:
        return await self.dataplane.check(self.spec(req, addresses))

    async def recorded(self) -> list[WorkloadEndpoint]:
        """This node's WorkloadEndpoints from the store (empty without a store)."""
        if self.store is None:
            return []
        # Read key by key rather than ResourceStore.list: one broken record must not hide
        # the others from the resync.
        kvs, _rev = await self.store.list(kind_prefix(WorkloadEndpoint))
        out = []
        for kv in kvs:
            try:
                wep = from_dict(json.loads(kv.value), source=kv.key)
            except (ValueError, ResourceError) as exc:
                log.warning("%s: skipping unreadable WorkloadEndpoint: %s", kv.key, exc)
                continue
            if isinstance(wep, WorkloadEndpoint) and wep.spec.node == self.node:
                out.append(wep)
        return out


@dataclass
class ResyncReport:
    repaired: dict[str, list[str]] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)
    stale_routes: list[str] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)


class EndpointResync:
    """The agent's endpoint resync: this node's WorkloadEndpoint records against the host.

    Recorded endpoints get their host side repaired; a recorded endpoint whose veth is gone
    is reported missing (only CNI can rebuild it). A cali link nobody recorded is removed
    only when the previous pass saw it unrecorded too, because the CNI plugin creates the
    veth before it writes the record and an ADD in flight must never be torn down.
    """

    def __init__(self, workloads: Workloads) -> None:
        self.workloads = workloads
        self._suspects: set[str] = set()

    async def run_once(self) -> ResyncReport:
        report = ResyncReport()
        dataplane = self.workloads.dataplane
        recorded: dict[str, tuple[IPAddress, ...]] = {}
        for wep in await self.workloads.recorded():
            if wep.spec.interface_name:
                recorded[wep.spec.interface_name] = tuple(
                    ipaddress.ip_interface(n).ip for n in wep.spec.ip_networks or ()
                )
        present = {ep.host_ifname for ep in await dataplane.list()}
        for iface, addrs in sorted(recorded.items()):
            if iface not in present:
                report.missing.append(iface)
                continue
            try:
                changed = await dataplane.repair_host_side(iface, addrs)
            except (EndpointError, OSError) as exc:
                report.errors[iface] = str(exc)
                continue
            if changed:
                log.info("resync repaired %s: %s", iface, ", ".join(changed))
                report.repaired[iface] = changed
        unrecorded = present - set(recorded)
        for iface in sorted(unrecorded):
            if iface in self._suspects and await dataplane.delete_link(iface):
                log.info("resync removed %s: no WorkloadEndpoint records it", iface)
                report.removed.append(iface)
            else:
                report.pending.append(iface)
        self._suspects = set(report.pending)
        report.stale_routes = await dataplane.prune_routes(present - set(report.removed))
        return report

    async def run(self, interval: float, stop: asyncio.Event) -> None:
        """Resync at start and then every ``interval`` seconds until ``stop`` is set."""
        while not stop.is_set():
            try:
                await self.run_once()
            except Exception:
                log.exception("endpoint resync failed; retrying at the next interval")
            try:
                await asyncio.wait_for(stop.wait(), timeout=interval)
            except TimeoutError:
                pass


__all__ = [
    "Attached",
    "EndpointError",
    "EndpointResync",
    "ResyncReport",
    "WorkloadError",
    "WorkloadRequest",
    "Workloads",
    "cli_container_id",
    "veth_name",
    "wep_key",
    "wep_name",
]
