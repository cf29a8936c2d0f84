"""The endpoint as the policy compiler sees it: interface, addresses, labels, profiles, named
ports and service account, built by hand or from a WorkloadEndpoint/HostEndpoint resource."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bgpd.model import HostEndpoint, WorkloadEndpoint

NAMESPACE_LABEL = "projectcalico.org/namespace"
SERVICE_ACCOUNT_LABEL = "projectcalico.org/serviceaccount"
NAMESPACE_PROFILE_PREFIX = "kns."


@dataclass(frozen=True, slots=True)
class NamedPort:
    name: str
    protocol: str  # "TCP", "UDP" or "SCTP"
    port: int


@dataclass(frozen=True)
class Endpoint:
    """One workload interface (namespace set) or host endpoint (`host=True`, no namespace)."""

    name: str
    iface: str
    ips: tuple[str, ...] = ()
    namespace: str | None = None
    labels: dict[str, str] = field(default_factory=dict, compare=True, hash=False)
    profiles: tuple[str, ...] = ()
    ports: tuple[NamedPort, ...] = ()
    service_account: str | None = None
    service_account_labels: dict[str, str] = field(default_factory=dict, hash=False)
    host: bool = False
    node: str | None = None  # None: local to every compiler

    def __post_init__(self) -> None:
        # Normalise once so ipset members and explain lookups compare as strings.
        ips = tuple(str(ipaddress.ip_interface(ip).ip) for ip in self.ips)
        object.__setattr__(self, "ips", ips)
        object.__setattr__(self, "profiles", tuple(self.profiles))
        object.__setattr__(self, "ports", tuple(self.ports))

    @property
    def key(self) -> str:
        kind = "hep" if self.host else "wep"
        return f"{kind}/{self.namespace}/{self.name}" if self.namespace else f"{kind}/{self.name}"

    def ips_of(self, version: int) -> list[str]:
        return [ip for ip in self.ips if ipaddress.ip_address(ip).version == version]

    @classmethod
    def for_pod(
        cls,
        name: str,
        namespace: str,
        iface: str,
        ips: tuple[str, ...] | list[str],
        labels: dict[str, str] | None = None,
        **kw: object,
    ) -> Endpoint:
        """A pod endpoint with Calico's default profile, the namespace profile `kns.<ns>`."""
        kw.setdefault("profiles", (NAMESPACE_PROFILE_PREFIX + namespace,))
        return cls(
            name=name,
            namespace=namespace,
            iface=iface,
            ips=tuple(ips),
            labels=dict(labels or {}),
            **kw,  # type: ignore[arg-type]
        )

    @classmethod
    def from_workload(cls, wep: WorkloadEndpoint) -> Endpoint:
        spec = wep.spec
        ns = wep.namespace or "default"
        profiles = tuple(spec.profiles) if spec.profiles else (NAMESPACE_PROFILE_PREFIX + ns,)
        return cls(
            name=wep.name,
            namespace=ns,
            iface=spec.interface_name or "",
            ips=tuple(spec.ip_networks or ()),
            labels=dict(wep.metadata.labels or {}),
            profiles=profiles,
            ports=tuple(NamedPort(p.name, p.protocol, p.port) for p in spec.ports or ()),
            service_account=spec.service_account_name,
            node=spec.node,
        )

    @classmethod
    def from_host(cls, hep: HostEndpoint) -> Endpoint:
        spec = hep.spec
        return cls(
            name=hep.name,
            iface=spec.interface_name or "*",
            ips=tuple(spec.expected_ips or ()),
            labels=dict(hep.metadata.labels or {}),
            profiles=tuple(spec.profiles or ()),
            ports=tuple(NamedPort(p.name, p.protocol, p.port) for p in spec.ports or ()),
            host=True,
            node=spec.node,
        )
