"""Shared pieces of the resource model: the base classes, object metadata, the error types and the
validated scalar types (names, CIDRs, IPs, selectors, AS numbers, ports, durations)."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, ClassVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PlainValidator, model_validator
from pydantic.alias_generators import to_camel

CALICO_API = "projectcalico.org/v3"


# --- errors -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FieldError:
    """One problem with one field of one resource; the parts that are not known are None."""

    path: str
    reason: str
    source: str | None = None
    document: int | None = None
    kind: str | None = None
    name: str | None = None

    def __str__(self) -> str:
        where = []
        if self.source is not None:
            where.append(self.source)
        doc = f"document {self.document}" if self.document is not None else ""
        what = " ".join(p for p in (self.kind, self.name) if p)
        if doc and what:
            where.append(f"{doc} ({what})")
        elif doc or what:
            where.append(doc or what)
        if self.path:
            where.append(self.path)
        return ": ".join([*where, self.reason])


class ResourceError(ValueError):
    """A resource (or a YAML stream of them) was rejected. `errors` holds every problem found,
    one per line of the message, each naming source, document, kind/name and field path."""

    def __init__(self, errors: Iterable[FieldError]) -> None:
        self.errors: list[FieldError] = list(errors)
        super().__init__("\n".join(str(e) for e in self.errors))


class SpecError(ValueError):
    """Raised inside model validators for cross-field rules. Carries paths relative to the model
    being validated, so the loader can report `spec.blockSize` rather than just `spec`."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{p}: {r}" if p else r for p, r in problems))


class Problems:
    """Collects cross-field problems so a validator reports all of them at once."""

    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []

    def add(self, path: str, reason: str) -> None:
        self.items.append((path, reason))

    def raise_if_any(self) -> None:
        if self.items:
            raise SpecError(self.items)

    @staticmethod
    def single(path: str, reason: str) -> None:
        raise SpecError([(path, reason)])


# --- base models --------------------------------------------------------------------------------


class Model(BaseModel):
    """Base for every spec object: camelCase on the wire, unknown fields rejected, no coercion
    (a YAML `"64512"` is not silently an int, `yes` is not a string).

    Python code may construct models with snake_case names; the YAML loader validates with
    aliases only, so `as_number:` in a manifest is an unknown field like any other typo.
    """

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
    )


# --- validated scalar types ---------------------------------------------------------------------

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_LABEL_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_IANA_SVC = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def _check_subdomain(value: str) -> str:
    if not value:
        raise ValueError("must not be empty")
    if len(value) > 253:
        raise ValueError("must be at most 253 characters")
    for part in value.split("."):
        if not _DNS_LABEL.match(part):
            raise ValueError(
                f"{value!r} is not a valid DNS-1123 subdomain (lower-case letters, digits, "
                "'-' and '.', starting and ending with a letter or digit)"
            )
    return value


def _check_dns_label(value: str) -> str:
    if len(value) > 63 or not _DNS_LABEL.match(value):
        raise ValueError(
            f"{value!r} is not a valid DNS-1123 label (at most 63 lower-case letters, digits "
            "and '-', starting and ending with a letter or digit)"
        )
    return value


def _check_label_key(key: str) -> None:
    prefix, slash, name = key.rpartition("/")
    if slash:
        _check_subdomain(prefix)
    if not name or len(name) > 63 or not _LABEL_NAME.match(name):
        raise ValueError(f"label key {key!r} is not valid")


def _check_labels(labels: dict[str, str]) -> dict[str, str]:
    for key, value in labels.items():
        _check_label_key(key)
        if value and (len(value) > 63 or not _LABEL_NAME.match(value)):
            raise ValueError(f"label {key!r} has an invalid value {value!r}")
    return labels


def _check_cidr(value: str) -> str:
    # Calico accepts host bits in most CIDR fields (they are only masked where it matters).
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise ValueError(f"{value!r} is not a valid CIDR") from None
    if "/" not in value:
        raise ValueError(f"{value!r} is not a valid CIDR (missing /prefix-length)")
    return value


def _parsed_by(parse: Callable[[str], object], what: str) -> Callable[[str], str]:
    """A validator that accepts what `parse` accepts, and names `what` it expected otherwise."""

    def check(value: str) -> str:
        try:
            parse(value)
        except ValueError:
            raise ValueError(f"{value!r} is not a valid {what}") from None
        return value

    return check


# Policy nets and IP reservations take a CIDR or a bare address (meaning /32 or /128).
_check_net = _parsed_by(lambda v: ipaddress.ip_network(v, strict=False), "CIDR or IP address")
_check_ip = _parsed_by(ipaddress.ip_address, "IP address")
_check_ipv4 = _parsed_by(ipaddress.IPv4Address, "IPv4 address")
# Node addresses are written "address/prefix" with host bits (198.18.0.10/24).
_check_interface = _parsed_by(ipaddress.ip_interface, "address/prefix")


def _check_selector(value: str) -> str:
    # Imported here, not at module level: policy/ owns the selector language and itself reads
    # model resources, so a top-level import would tie the two packages into an import cycle.
    from policy.selector import SelectorError, parse

    try:
        parse(value)
    except SelectorError as exc:
        raise ValueError(
            f"invalid selector {value!r}: {exc.reason} at position {exc.position} "
            f"(expected {exc.expected})"
        ) from None
    return value


def _check_mac(value: str) -> str:
    if not re.fullmatch(r"[0-9A-Fa-f]{2}([:-][0-9A-Fa-f]{2}){5}", value):
        raise ValueError(f"{value!r} is not a valid MAC address")
    return value


_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")


def parse_duration(value: str) -> float:
    """Seconds in a Go duration string ("120s", "1m30s", "500ms")."""
    units = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
    if value == "0":
        return 0.0
    pos, total = 0, 0.0
    while pos < len(value):
        m = _DURATION_PART.match(value, pos)
        if not m:
            raise ValueError(f"{value!r} is not a valid duration (e.g. 120s, 1m30s, 500ms)")
        total += float(m.group(1)) * units[m.group(2)]
        pos = m.end()
    if not value:
        raise ValueError("duration must not be empty")
    return total


def _check_duration(value: str) -> str:
    parse_duration(value)
    return value


def _check_asn(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError("must be an integer AS number")
    if not 1 <= value <= 4294967295:
        raise ValueError(f"AS number {value} is outside 1..4294967295")
    return value


def _check_port_number(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 65535:
        raise ValueError(f"port {value!r} is not a number in 0..65535")
    return value


def port_spec_is_named(value: int | str) -> bool:
    """True for a named port ("http"), false for a number or an "N:M" range."""
    return isinstance(value, str) and not re.fullmatch(r"\d+(:\d+)?", value)


def _check_port_spec(value: Any) -> int | str:
    """A Calico port: a number, an "N:M" range, or a named port (IANA service name)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return _check_port_number(value)
    if not isinstance(value, str):
        raise ValueError(f"port {value!r} must be a number, an 'N:M' range or a port name")
    if m := re.fullmatch(r"(\d+):(\d+)", value):
        low, high = int(m.group(1)), int(m.group(2))
        if not (0 <= low <= high <= 65535):
            raise ValueError(f"port range {value!r} must be N:M with 0 <= N <= M <= 65535")
        return value
    if value.isdigit():
        _check_port_number(int(value))
        return value
    if len(value) > 15 or not _IANA_SVC.match(value) or not re.search(r"[a-z]", value):
        raise ValueError(f"{value!r} is not a valid port, port range or port name")
    return value


def _check_timestamp(value: Any) -> str | datetime:
    # YAML turns an unquoted RFC 3339 timestamp into a datetime; keep whichever we were given.
    if not isinstance(value, str | datetime):
        raise ValueError("must be an RFC 3339 timestamp")
    return value


Name = Annotated[str, AfterValidator(_check_subdomain)]
DNSLabel = Annotated[str, AfterValidator(_check_dns_label)]
Labels = Annotated[dict[str, str], AfterValidator(_check_labels)]
CIDR = Annotated[str, AfterValidator(_check_cidr)]
Net = Annotated[str, AfterValidator(_check_net)]
IPAddr = Annotated[str, AfterValidator(_check_ip)]
IPv4Addr = Annotated[str, AfterValidator(_check_ipv4)]
IPInterface = Annotated[str, AfterValidator(_check_interface)]
Selector = Annotated[str, AfterValidator(_check_selector)]
MAC = Annotated[str, AfterValidator(_check_mac)]
Duration = Annotated[str, AfterValidator(_check_duration)]
ASNumber = Annotated[int, PlainValidator(_check_asn)]
PortNumber = Annotated[int, PlainValidator(_check_port_number)]
PortSpec = Annotated[int | str, PlainValidator(_check_port_spec)]
Timestamp = Annotated[str | datetime, PlainValidator(_check_timestamp)]


# --- metadata and resources ---------------------------------------------------------------------


class ObjectMeta(Model):
    """Kubernetes-style object metadata. The store fills resourceVersion, uid and
    creationTimestamp; the rest is what users write."""

    name: Name
    namespace: DNSLabel | None = None
    generate_name: str | None = None
    labels: Labels | None = None
    annotations: dict[str, str] | None = None
    resource_version: str | None = None
    uid: str | None = None
    creation_timestamp: Timestamp | None = None
    deletion_timestamp: Timestamp | None = None
    deletion_grace_period_seconds: int | None = None
    generation: int | None = None
    self_link: str | None = None
    owner_references: list[dict[str, Any]] | None = None
    finalizers: list[str] | None = None
    managed_fields: list[dict[str, Any]] | None = None


class Resource(Model):
    """Base of every kind. Subclasses set API_VERSION, KIND, NAMESPACED and a `spec` field."""

    API_VERSION: ClassVar[str] = CALICO_API
    KIND: ClassVar[str] = ""
    NAMESPACED: ClassVar[bool] = False

    api_version: str = Field(default="", alias="apiVersion")
    kind: str = ""
    metadata: ObjectMeta

    @model_validator(mode="after")
    def _check_identity(self) -> Resource:
        # apiVersion/kind are implied by the class; fill them without marking them as set, and
        # refuse a mismatch (the loader dispatches on them before we ever get here).
        if self.api_version and self.api_version != self.API_VERSION:
            raise SpecError([("apiVersion", f"{self.KIND} is {self.API_VERSION}")])
        if self.kind and self.kind != self.KIND:
            raise SpecError([("kind", f"expected {self.KIND}")])
        self.__dict__["api_version"] = self.API_VERSION
        self.__dict__["kind"] = self.KIND
        if self.NAMESPACED:
            if self.metadata.namespace is None:
                # calicoctl and kubectl default a missing namespace to "default".
                self.metadata.__dict__["namespace"] = "default"
        elif self.metadata.namespace is not None:
            raise SpecError([("metadata.namespace", f"{self.KIND} is not namespaced")])
        return self

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def namespace(self) -> str | None:
        return self.metadata.namespace
