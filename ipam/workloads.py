"""Which allocations a WorkloadEndpoint accounts for: the test behind leak detection and leak GC.

An allocation is a workload's when its attrs name a ``pod`` (the CNI plugin sets namespace, pod
and node); other allocations (tunnel addresses, manual ones) are never called leaks, as in
Calico. A workload allocation is in use when some endpoint lists its address, carries the
container id its handle ends with, or names the same namespace and pod.
"""

from __future__ import annotations

import ipaddress
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from bgpd.datastore.base import Datastore
from bgpd.model import WorkloadEndpoint
from ipam.pools import read_resources

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def is_workload(attrs: Mapping[str, str]) -> bool:
    return bool(attrs.get("pod"))


@dataclass
class EndpointIndex:
    addresses: dict[Address, list[str]] = field(default_factory=lambda: defaultdict(list))
    container_ids: set[str] = field(default_factory=set)
    pods: set[tuple[str, str]] = field(default_factory=set)

    @classmethod
    def build(cls, endpoints: Sequence[WorkloadEndpoint]) -> EndpointIndex:
        index = cls()
        for wep in endpoints:
            name = f"{wep.namespace}/{wep.name}"
            for net in wep.spec.ip_networks or ():
                address = ipaddress.ip_interface(net).ip
                index.addresses[address].append(name)
            if wep.spec.container_id:
                index.container_ids.add(wep.spec.container_id)
            if wep.spec.pod:
                index.pods.add((wep.namespace or "default", wep.spec.pod))
        return index

    @classmethod
    async def read(cls, store: Datastore) -> EndpointIndex:
        weps = await read_resources(store, "WorkloadEndpoint")
        return cls.build([w for w in weps if isinstance(w, WorkloadEndpoint)])

    def accounts_for(self, address: Address, handle: str | None, attrs: Mapping[str, str]) -> bool:
        if address in self.addresses:
            return True
        # Calico handles are "<network>.<containerID>"; accept a bare container id too.
        if handle and (
            handle in self.container_ids or handle.rpartition(".")[2] in self.container_ids
        ):
            return True
        pod = attrs.get("pod")
        return bool(pod) and (attrs.get("namespace", "default"), pod) in self.pods

    def shared_addresses(self) -> dict[Address, list[str]]:
        """Addresses that more than one endpoint claims."""
        return {a: names for a, names in self.addresses.items() if len(names) > 1}
