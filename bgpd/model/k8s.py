"""Kubernetes `networking.k8s.io/v1` NetworkPolicy, accepted as written, with its label
selectors and the API server's validation rules."""

from __future__ import annotations

import ipaddress
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, PlainValidator, model_validator

from .base import CIDR, Labels, Model, Problems, Resource, port_spec_is_named

K8S_NETWORKING_API = "networking.k8s.io/v1"


class LabelSelectorRequirement(Model):
    key: str = Field(min_length=1)
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    values: list[str] | None = None

    @model_validator(mode="after")
    def _check_values(self) -> LabelSelectorRequirement:
        if self.operator in ("In", "NotIn") and not self.values:
            Problems.single("values", f"operator {self.operator} needs a non-empty values list")
        if self.operator in ("Exists", "DoesNotExist") and self.values:
            Problems.single("values", f"operator {self.operator} takes no values")
        return self


class LabelSelector(Model):
    """An empty selector ({}) selects everything in scope."""

    match_labels: Labels | None = None
    match_expressions: list[LabelSelectorRequirement] | None = None


class IPBlock(Model):
    cidr: CIDR
    # `except` is a Python keyword, hence the explicit alias.
    except_: list[CIDR] | None = Field(default=None, alias="except")

    @model_validator(mode="after")
    def _excepts_inside(self) -> IPBlock:
        problems = Problems()
        outer = ipaddress.ip_network(self.cidr, strict=False)
        for i, cidr in enumerate(self.except_ or ()):
            inner = ipaddress.ip_network(cidr, strict=False)
            if inner.version != outer.version or not inner.subnet_of(outer):  # type: ignore[arg-type]
                problems.add(f"except[{i}]", f"{cidr} is not inside {self.cidr}")
        problems.raise_if_any()
        return self


class NetworkPolicyPeer(Model):
    ip_block: IPBlock | None = None
    namespace_selector: LabelSelector | None = None
    pod_selector: LabelSelector | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> NetworkPolicyPeer:
        if self.ip_block is not None and (
            self.namespace_selector is not None or self.pod_selector is not None
        ):
            Problems.single("ipBlock", "cannot be combined with namespaceSelector or podSelector")
        if self.ip_block is None and self.namespace_selector is None and self.pod_selector is None:
            Problems.single("", "give ipBlock, namespaceSelector or podSelector")
        return self


def _check_k8s_port(value: Any) -> int | str:
    if isinstance(value, int) and not isinstance(value, bool):
        if not 1 <= value <= 65535:
            raise ValueError(f"port {value} is outside 1..65535")
        return value
    if isinstance(value, str) and value and port_spec_is_named(value) and len(value) <= 15:
        return value
    raise ValueError(f"port {value!r} must be a number 1..65535 or a port name")


K8sPort = Annotated[int | str, PlainValidator(_check_k8s_port)]


class NetworkPolicyPort(Model):
    protocol: Literal["TCP", "UDP", "SCTP"] | None = None
    port: K8sPort | None = None
    end_port: int | None = Field(default=None, ge=1, le=65535)

    @model_validator(mode="after")
    def _check_range(self) -> NetworkPolicyPort:
        if self.end_port is not None:
            if not isinstance(self.port, int):
                Problems.single("endPort", "needs a numeric port")
            elif self.end_port < self.port:
                Problems.single("endPort", f"must be at least port ({self.port})")
        return self


class NetworkPolicyIngressRule(Model):
    from_: list[NetworkPolicyPeer] | None = Field(default=None, alias="from")
    ports: list[NetworkPolicyPort] | None = None


class NetworkPolicyEgressRule(Model):
    to: list[NetworkPolicyPeer] | None = None
    ports: list[NetworkPolicyPort] | None = None


class K8sNetworkPolicySpec(Model):
    pod_selector: LabelSelector | None = None
    policy_types: list[Literal["Ingress", "Egress"]] | None = None
    ingress: list[NetworkPolicyIngressRule] | None = None
    egress: list[NetworkPolicyEgressRule] | None = None

    @model_validator(mode="after")
    def _check_types(self) -> K8sNetworkPolicySpec:
        if self.policy_types is not None and len(set(self.policy_types)) != len(self.policy_types):
            Problems.single("policyTypes", "lists a type twice")
        return self

    def effective_policy_types(self) -> list[str]:
        """Kubernetes' default: Ingress always, Egress when egress rules are present."""
        if self.policy_types is not None:
            return list(self.policy_types)
        return ["Ingress", "Egress"] if self.egress else ["Ingress"]


class K8sNetworkPolicy(Resource):
    API_VERSION: ClassVar[str] = K8S_NETWORKING_API
    KIND: ClassVar[str] = "NetworkPolicy"
    NAMESPACED: ClassVar[bool] = True
    spec: K8sNetworkPolicySpec = Field(default_factory=K8sNetworkPolicySpec)
