"""Calico policy kinds: NetworkPolicy, GlobalNetworkPolicy, Profile, NetworkSet,
GlobalNetworkSet and Tier, with the Rule/EntityRule model and Calico's rule consistency checks."""

from __future__ import annotations

import ipaddress
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, PlainValidator, field_serializer, model_validator

from .base import (
    Labels,
    Model,
    Name,
    Net,
    PortSpec,
    Problems,
    Resource,
    Selector,
)

# Protocols that carry ports, by name and number (Calico allows ports only on these).
PORT_PROTOCOLS = {"TCP": 6, "UDP": 17, "SCTP": 132, "UDPLite": 136}
PROTOCOL_NAMES = {**PORT_PROTOCOLS, "ICMP": 1, "ICMPv6": 58}
# Calico still accepts the lower-case spellings of its v1 API ("tcp", "icmpv6").
PROTOCOL_NAMES |= {name.lower(): number for name, number in PROTOCOL_NAMES.items()}
_PORT_PROTOCOL_NUMBERS = set(PORT_PROTOCOLS.values())


def _check_protocol(value: Any) -> int | str:
    if isinstance(value, int) and not isinstance(value, bool):
        if not 1 <= value <= 255:
            raise ValueError(f"protocol number {value} is outside 1..255")
        return value
    if isinstance(value, str):
        if value in PROTOCOL_NAMES:
            return value
        if value.isdigit() and 1 <= int(value) <= 255:
            return value
    names = ", ".join(n for n in PROTOCOL_NAMES if not n.islower())
    raise ValueError(f"protocol {value!r} must be one of {names} or a number 1..255")


Protocol = Annotated[int | str, PlainValidator(_check_protocol)]


def protocol_number(value: int | str) -> int:
    """IANA number of a rule protocol given by name or number."""
    if isinstance(value, int):
        return value
    return PROTOCOL_NAMES[value] if value in PROTOCOL_NAMES else int(value)


class ICMPFields(Model):
    type: int | None = Field(default=None, ge=0, le=254)
    code: int | None = Field(default=None, ge=0, le=255)

    @model_validator(mode="after")
    def _code_needs_type(self) -> ICMPFields:
        if self.code is not None and self.type is None:
            Problems.single("code", "an ICMP code needs an ICMP type")
        return self


class ServiceAccountMatch(Model):
    names: list[str] | None = None
    selector: Selector | None = None


class ServiceMatch(Model):
    name: str = Field(min_length=1)
    namespace: str | None = None


class EntityRule(Model):
    nets: list[Net] | None = None
    not_nets: list[Net] | None = None
    selector: Selector | None = None
    not_selector: Selector | None = None
    namespace_selector: Selector | None = None
    ports: list[PortSpec] | None = None
    not_ports: list[PortSpec] | None = None
    service_accounts: ServiceAccountMatch | None = None
    services: ServiceMatch | None = None

    @model_validator(mode="after")
    def _services_alone(self) -> EntityRule:
        # A service match stands for the service's endpoints; Calico refuses mixing it with
        # other address matches.
        if self.services is not None:
            mixed = [
                alias
                for alias, value in (
                    ("nets", self.nets),
                    ("notNets", self.not_nets),
                    ("selector", self.selector),
                    ("notSelector", self.not_selector),
                    ("serviceAccounts", self.service_accounts),
                    ("notPorts", self.not_ports),
                )
                if value is not None
            ]
            if mixed:
                Problems.single("services", f"cannot be combined with {', '.join(mixed)}")
        return self


class HTTPPath(Model):
    exact: str | None = None
    prefix: str | None = None

    @model_validator(mode="after")
    def _one_of(self) -> HTTPPath:
        if (self.exact is None) == (self.prefix is None):
            Problems.single("", "give exactly one of exact or prefix")
        return self


class HTTPMatch(Model):
    methods: list[str] | None = None
    paths: list[HTTPPath] | None = None


class RuleMetadata(Model):
    annotations: dict[str, str] | None = None


class Rule(Model):
    action: Literal["Allow", "Deny", "Log", "Pass"]
    ip_version: Literal[4, 6] | None = None
    protocol: Protocol | None = None
    not_protocol: Protocol | None = None
    icmp: ICMPFields | None = None
    not_icmp: ICMPFields | None = Field(default=None, alias="notICMP")
    source: EntityRule | None = None
    destination: EntityRule | None = None
    http: HTTPMatch | None = None
    metadata: RuleMetadata | None = None

    @model_validator(mode="after")
    def _check_rule(self) -> Rule:
        problems = Problems()
        proto = None if self.protocol is None else protocol_number(self.protocol)
        for side, entity in (("source", self.source), ("destination", self.destination)):
            if entity is None:
                continue
            for alias, ports in (("ports", entity.ports), ("notPorts", entity.not_ports)):
                if ports and proto not in _PORT_PROTOCOL_NUMBERS:
                    problems.add(
                        f"{side}.{alias}",
                        "ports are only allowed with protocol TCP, UDP, SCTP or UDPLite",
                    )
            if side == "source" and entity.services is not None and entity.ports:
                problems.add("source.services", "a source service match cannot have ports")
            # A rule limited to one IP version cannot match nets of the other.
            for alias, nets in (("nets", entity.nets), ("notNets", entity.not_nets)):
                for i, net in enumerate(nets or ()):
                    version = ipaddress.ip_network(net, strict=False).version
                    if self.ip_version is not None and version != self.ip_version:
                        problems.add(
                            f"{side}.{alias}[{i}]",
                            f"{net} is IPv{version} but the rule has ipVersion {self.ip_version}",
                        )
        for alias, icmp in (("icmp", self.icmp), ("notICMP", self.not_icmp)):
            if icmp is not None and proto not in (1, 58):
                problems.add(alias, "needs protocol ICMP or ICMPv6")
        if proto == 1 and self.ip_version == 6:
            problems.add("protocol", "ICMP is IPv4; use ICMPv6 with ipVersion 6")
        if proto == 58 and self.ip_version == 4:
            problems.add("protocol", "ICMPv6 needs ipVersion 6 (or no ipVersion)")
        if (
            self.protocol is not None
            and self.not_protocol is not None
            and protocol_number(self.protocol) == protocol_number(self.not_protocol)
        ):
            problems.add("notProtocol", "is the same as protocol; the rule matches nothing")
        problems.raise_if_any()
        return self


PolicyType = Literal["Ingress", "Egress"]


class _PolicySpecBase(Model):
    tier: Name | None = None
    order: float | None = None
    selector: Selector | None = None
    service_account_selector: Selector | None = None
    types: list[PolicyType] | None = None
    ingress: list[Rule] | None = None
    egress: list[Rule] | None = None
    performance_hints: list[Literal["AssumeNeededOnEveryNode"]] | None = None

    @field_serializer("order")
    def _order_as_written(self, order: float | None) -> float | int | None:
        # YAML users write `order: 100`; give back an int when the value is integral.
        if order is not None and order.is_integer():
            return int(order)
        return order

    def _check_types(self, problems: Problems) -> None:
        if self.types is None:
            return
        if len(set(self.types)) != len(self.types):
            problems.add("types", "lists a type twice")
        if self.ingress and "Ingress" not in self.types:
            problems.add("ingress", "ingress rules need Ingress in types")
        if self.egress and "Egress" not in self.types:
            problems.add("egress", "egress rules need Egress in types")


class NetworkPolicySpec(_PolicySpecBase):
    @model_validator(mode="after")
    def _check_spec(self) -> NetworkPolicySpec:
        problems = Problems()
        self._check_types(problems)
        problems.raise_if_any()
        return self


class GlobalNetworkPolicySpec(_PolicySpecBase):
    namespace_selector: Selector | None = None
    apply_on_forward: bool | None = None
    pre_dnat: bool | None = Field(default=None, alias="preDNAT")
    do_not_track: bool | None = None

    @model_validator(mode="after")
    def _check_spec(self) -> GlobalNetworkPolicySpec:
        problems = Problems()
        self._check_types(problems)
        # Calico's rules for host-endpoint policies that run outside normal conntrack/filter.
        if self.pre_dnat and self.do_not_track:
            problems.add("preDNAT", "preDNAT and doNotTrack cannot both be true")
        if (self.pre_dnat or self.do_not_track) and not self.apply_on_forward:
            which = "preDNAT" if self.pre_dnat else "doNotTrack"
            problems.add("applyOnForward", f"must be true when {which} is true")
        if self.pre_dnat:
            if self.egress:
                problems.add("egress", "a preDNAT policy cannot have egress rules")
            if self.types and "Egress" in self.types:
                problems.add("types", "a preDNAT policy cannot have the Egress type")
        problems.raise_if_any()
        return self


class NetworkPolicy(Resource):
    KIND: ClassVar[str] = "NetworkPolicy"
    NAMESPACED: ClassVar[bool] = True
    spec: NetworkPolicySpec = Field(default_factory=NetworkPolicySpec)


class GlobalNetworkPolicy(Resource):
    KIND: ClassVar[str] = "GlobalNetworkPolicy"
    spec: GlobalNetworkPolicySpec = Field(default_factory=GlobalNetworkPolicySpec)


class ProfileSpec(Model):
    labels_to_apply: Labels | None = None
    ingress: list[Rule] | None = None
    egress: list[Rule] | None = None


class Profile(Resource):
    KIND: ClassVar[str] = "Profile"
    spec: ProfileSpec = Field(default_factory=ProfileSpec)


class NetworkSetSpec(Model):
    nets: list[Net] | None = None


class NetworkSet(Resource):
    KIND: ClassVar[str] = "NetworkSet"
    NAMESPACED: ClassVar[bool] = True
    spec: NetworkSetSpec = Field(default_factory=NetworkSetSpec)


class GlobalNetworkSet(Resource):
    KIND: ClassVar[str] = "GlobalNetworkSet"
    spec: NetworkSetSpec = Field(default_factory=NetworkSetSpec)


class TierSpec(Model):
    order: float | None = None
    default_action: Literal["Deny", "Pass"] | None = None

    @field_serializer("order")
    def _order_as_written(self, order: float | None) -> float | int | None:
        if order is not None and order.is_integer():
            return int(order)
        return order


class Tier(Resource):
    KIND: ClassVar[str] = "Tier"
    spec: TierSpec = Field(default_factory=TierSpec)
