"""IPAM kinds: IPPool, IPAMConfiguration and IPReservation, with Calico's pool rules and the
cross-resource pool-overlap check the datastore layer runs before a write."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import ClassVar, Literal

from pydantic import Field, model_validator

from .base import CIDR, FieldError, Model, Net, Problems, Resource, ResourceError, Selector

EncapMode = Literal["Never", "Always", "CrossSubnet"]
AllowedUse = Literal["Workload", "Tunnel", "LoadBalancer"]

BLOCK_SIZE_RANGE = {4: (20, 32), 6: (116, 128)}
DEFAULT_BLOCK_SIZE = {4: 26, 6: 122}
_LINK_LOCAL = {
    4: ipaddress.ip_network("169.254.0.0/16"),
    6: ipaddress.ip_network("fe80::/10"),
}


class IPPoolSpec(Model):
    cidr: CIDR
    # None until validated; the pool validator fills the family default (26 / 122) without
    # marking it as written, so to_dict gives back what the user wrote.
    block_size: int | None = None
    ipip_mode: EncapMode = Field(default="Never", alias="ipipMode")
    vxlan_mode: EncapMode = Field(default="Never", alias="vxlanMode")
    nat_outgoing: bool = False
    disabled: bool = False
    disable_bgp_export: bool = Field(default=False, alias="disableBGPExport")
    node_selector: Selector = "all()"
    allowed_uses: list[AllowedUse] | None = None
    assignment_mode: Literal["Automatic", "Manual"] | None = None

    @property
    def network(self) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
        return ipaddress.ip_network(self.cidr, strict=False)

    @model_validator(mode="after")
    def _check_pool(self) -> IPPoolSpec:
        problems = Problems()
        net = ipaddress.ip_network(self.cidr, strict=False)
        family = net.version
        if str(net) != self.cidr:
            # Calico stores the pool as its network address; do the same so `get` matches.
            self.__dict__["cidr"] = str(net)
        if self.block_size is None:
            self.__dict__["block_size"] = DEFAULT_BLOCK_SIZE[family]
        else:
            low, high = BLOCK_SIZE_RANGE[family]
            if not low <= self.block_size <= high:
                problems.add(
                    "blockSize", f"must be between {low} and {high} for an IPv{family} pool"
                )
            elif self.block_size < net.prefixlen:
                problems.add(
                    "blockSize",
                    f"block size /{self.block_size} is larger than the pool {self.cidr}; "
                    f"the pool prefix length must be at most the block size",
                )
        if family == 6 and self.ipip_mode != "Never":
            problems.add("ipipMode", "IPIP is IPv4 only: must be Never on an IPv6 pool")
        elif self.ipip_mode != "Never" and self.vxlan_mode != "Never":
            problems.add(
                "vxlanMode",
                "ipipMode and vxlanMode cannot both be enabled (one of them must be Never)",
            )
        if net.overlaps(_LINK_LOCAL[family]):
            problems.add("cidr", f"{self.cidr} overlaps the link-local range {_LINK_LOCAL[family]}")
        if self.allowed_uses is not None:
            if not self.allowed_uses:
                problems.add("allowedUses", "must list at least one use")
            if len(set(self.allowed_uses)) != len(self.allowed_uses):
                problems.add("allowedUses", "lists a use twice")
        problems.raise_if_any()
        return self


class IPPool(Resource):
    KIND: ClassVar[str] = "IPPool"
    spec: IPPoolSpec


def check_pool_overlap(new: IPPool, existing: Iterable[IPPool]) -> None:
    """Raise ResourceError if `new` overlaps any pool in `existing` (a pool of the same name is
    the one being updated and is skipped). Calico refuses overlapping pools on create."""
    net = new.spec.network
    errors = []
    for other in existing:
        if other.name == new.name:
            continue
        other_net = other.spec.network
        if net.version == other_net.version and net.overlaps(other_net):
            errors.append(
                FieldError(
                    kind=new.KIND,
                    name=new.name,
                    path="spec.cidr",
                    reason=f"{new.spec.cidr} overlaps IPPool {other.name} ({other.spec.cidr})",
                )
            )
    if errors:
        raise ResourceError(errors)


class IPAMConfigurationSpec(Model):
    strict_affinity: bool = False
    max_blocks_per_host: int | None = Field(default=None, ge=0)
    auto_allocate_blocks: bool = True


class IPAMConfiguration(Resource):
    KIND: ClassVar[str] = "IPAMConfiguration"
    spec: IPAMConfigurationSpec = Field(default_factory=IPAMConfigurationSpec)

    @model_validator(mode="after")
    def _only_default(self) -> IPAMConfiguration:
        # Calico keeps one cluster-wide IPAM configuration and refuses any other name.
        if self.metadata.name != "default":
            Problems.single("metadata.name", "IPAMConfiguration must be named 'default'")
        return self


class IPReservationSpec(Model):
    reserved_cidrs: list[Net] = Field(alias="reservedCIDRs")


class IPReservation(Resource):
    KIND: ClassVar[str] = "IPReservation"
    spec: IPReservationSpec
