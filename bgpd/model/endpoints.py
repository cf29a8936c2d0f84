"""Endpoint kinds: WorkloadEndpoint (one pod interface) and HostEndpoint (a host interface or
set of host IPs), with their named ports."""

from __future__ import annotations

import ipaddress
import re
from typing import ClassVar, Literal

from pydantic import Field, model_validator

from .base import CIDR, MAC, IPAddr, Model, Name, PortNumber, Problems, Resource

EndpointProtocol = Literal["TCP", "UDP", "SCTP"]


class EndpointPort(Model):
    name: str = Field(min_length=1, max_length=15, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    protocol: EndpointProtocol
    port: PortNumber
    host_port: PortNumber | None = None
    host_ip: IPAddr | None = Field(default=None, alias="hostIP")

    @model_validator(mode="after")
    def _check_port(self) -> EndpointPort:
        problems = Problems()
        if self.port == 0:
            problems.add("port", "must be 1..65535")
        if self.host_ip is not None and self.host_port is None:
            problems.add("hostIP", "needs hostPort")
        problems.raise_if_any()
        return self


class IPNAT(Model):
    internal_ip: IPAddr = Field(alias="internalIP")
    external_ip: IPAddr = Field(alias="externalIP")


def _interface_name(value: str) -> str:
    # Linux IFNAMSIZ is 16 including the NUL.
    if not re.fullmatch(r"[^\s/:]{1,15}", value):
        raise ValueError(f"{value!r} is not a valid interface name (1-15 chars, no '/', ':')")
    return value


class WorkloadEndpointSpec(Model):
    orchestrator: str | None = None
    workload: str | None = None
    node: Name | None = None
    container_id: str | None = Field(default=None, alias="containerID")
    pod: str | None = None
    endpoint: str | None = None
    service_account_name: str | None = None
    ip_networks: list[CIDR] | None = None
    ip_nats: list[IPNAT] | None = Field(default=None, alias="ipNATs")
    ipv4_gateway: IPAddr | None = None
    ipv6_gateway: IPAddr | None = None
    profiles: list[Name] | None = None
    interface_name: str | None = None
    mac: MAC | None = None
    ports: list[EndpointPort] | None = None
    allow_spoofed_source_prefixes: list[CIDR] | None = None

    @model_validator(mode="after")
    def _check_endpoint(self) -> WorkloadEndpointSpec:
        problems = Problems()
        if self.interface_name is not None:
            try:
                _interface_name(self.interface_name)
            except ValueError as exc:
                problems.add("interfaceName", str(exc))
        for alias, gateway, version in (
            ("ipv4Gateway", self.ipv4_gateway, 4),
            ("ipv6Gateway", self.ipv6_gateway, 6),
        ):
            if gateway is not None and ipaddress.ip_address(gateway).version != version:
                problems.add(alias, f"must be an IPv{version} address")
        _check_unique_port_names(self.ports, problems)
        problems.raise_if_any()
        return self


def _check_unique_port_names(ports: list[EndpointPort] | None, problems: Problems) -> None:
    seen: set[tuple[str, str]] = set()
    for i, port in enumerate(ports or ()):
        key = (port.name, port.protocol)
        if key in seen:
            problems.add(f"ports[{i}].name", f"port {port.name}/{port.protocol} is listed twice")
        seen.add(key)


class WorkloadEndpoint(Resource):
    KIND: ClassVar[str] = "WorkloadEndpoint"
    NAMESPACED: ClassVar[bool] = True
    spec: WorkloadEndpointSpec = Field(default_factory=WorkloadEndpointSpec)


class HostEndpointSpec(Model):
    node: Name | None = None
    interface_name: str | None = None
    expected_ips: list[IPAddr] | None = Field(default=None, alias="expectedIPs")
    profiles: list[Name] | None = None
    ports: list[EndpointPort] | None = None

    @model_validator(mode="after")
    def _check_endpoint(self) -> HostEndpointSpec:
        problems = Problems()
        if self.interface_name is None and not self.expected_ips:
            problems.add("interfaceName", "give interfaceName or expectedIPs (or both)")
        elif self.interface_name is not None and self.interface_name != "*":
            # "*" is Calico's all-interfaces host endpoint.
            try:
                _interface_name(self.interface_name)
            except ValueError as exc:
                problems.add("interfaceName", str(exc))
        if self.node is None:
            problems.add("node", "a host endpoint must name its node")
        _check_unique_port_names(self.ports, problems)
        problems.raise_if_any()
        return self


class HostEndpoint(Resource):
    KIND: ClassVar[str] = "HostEndpoint"
    spec: HostEndpointSpec
