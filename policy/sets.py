"""IP sets that stand for selectors, net lists and named ports: their keys, their stable
content-hashed names, and which members an endpoint or network set contributes."""

from __future__ import annotations

import base64
import hashlib
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from policy.endpoint import Endpoint
from policy.ruleset import SetType
from policy.selector import Global, Selector, parse
from policy.view import NetworkSetEntry

# ("ns", name): one namespace; ("nssel", text): namespaces matching a selector; ("any", ""): all.
Scope = tuple[Literal["ns", "nssel", "any"], str]
ANY: Scope = ("any", "")

_LETTER = {"sel": "s", "nets": "t", "port": "n"}


@dataclass(frozen=True, slots=True)
class SetKey:
    """Everything that decides a set's members; equal keys share one ipset."""

    kind: Literal["sel", "nets", "port"]
    version: int
    selector: str = ""
    scope: Scope = ANY
    sa_names: tuple[str, ...] | None = None
    sa_selector: str | None = None
    nets: tuple[str, ...] = ()
    port: tuple[str, str] | None = None  # (protocol, port name)

    @property
    def set_type(self) -> SetType:
        return "hash:ip,port" if self.kind == "port" else "hash:net"

    def name(self) -> str:
        """`cali40s:<22 chars>`: fits ipset's 31 characters and never changes for a key."""
        digest = hashlib.sha256(repr(self).encode()).digest()
        tail = base64.b32encode(digest).decode().lower()[:22]
        return f"cali{self.version}0{_LETTER[self.kind]}:{tail}"


def normal_net(net: str) -> tuple[str, ...]:
    """How `ipset list` prints a member: the network address, no /32 or /128. hash:net
    cannot hold a /0, so "everything" becomes its two halves."""
    n = ipaddress.ip_network(net, strict=False)
    if n.prefixlen == 0:
        return tuple(str(half) for half in n.subnets(prefixlen_diff=1))
    return (str(n.network_address) if n.prefixlen == n.max_prefixlen else str(n),)


class SetMatcher:
    """Evaluates one SetKey against endpoints and network sets."""

    __slots__ = ("key", "nssel", "sa_selector", "selector")

    def __init__(self, key: SetKey) -> None:
        self.key = key
        self.selector: Selector = parse(key.selector or "")
        self.nssel: Selector | None = parse(key.scope[1]) if key.scope[0] == "nssel" else None
        self.sa_selector = parse(key.sa_selector) if key.sa_selector is not None else None

    def _in_scope(self, namespace: str | None, ns_labels: Mapping[str, Mapping[str, str]]) -> bool:
        kind, value = self.key.scope
        if kind == "any":
            return True
        if kind == "ns":
            return namespace == value
        if isinstance(self.nssel, Global):
            # namespaceSelector: global() means "only things outside any namespace".
            return namespace is None
        if namespace is None or self.nssel is None:
            return False
        return self.nssel.evaluate(ns_labels.get(namespace, {}))

    def endpoint_members(
        self,
        ep: Endpoint,
        labels: Mapping[str, str],
        ns_labels: Mapping[str, Mapping[str, str]],
    ) -> tuple[str, ...]:
        key = self.key
        if key.kind == "nets":
            return ()
        if not self._in_scope(ep.namespace, ns_labels) or not self.selector.evaluate(labels):
            return ()
        if key.sa_names is not None or self.sa_selector is not None:
            if ep.service_account is None:
                return ()
            if key.sa_names is not None and ep.service_account not in key.sa_names:
                return ()
            if self.sa_selector is not None and not self.sa_selector.evaluate(
                ep.service_account_labels
            ):
                return ()
        ips = ep.ips_of(key.version)
        if key.kind == "sel":
            return tuple(ips)
        assert key.port is not None
        proto, pname = key.port
        return tuple(
            f"{ip},{p.protocol.lower()}:{p.port}"
            for p in ep.ports
            if p.name == pname and p.protocol == proto
            for ip in ips
        )

    def netset_members(
        self, ns: NetworkSetEntry, ns_labels: Mapping[str, Mapping[str, str]]
    ) -> tuple[str, ...]:
        key = self.key
        if key.kind != "sel" or key.sa_names is not None or key.sa_selector is not None:
            return ()
        if not self._in_scope(ns.namespace, ns_labels) or not self.selector.evaluate(ns.labels):
            return ()
        return tuple(
            member
            for n in ns.nets
            if ipaddress.ip_network(n, strict=False).version == key.version
            for member in normal_net(n)
        )

    def static_members(self) -> tuple[str, ...]:
        if self.key.kind != "nets":
            return ()
        return tuple(member for n in self.key.nets for member in normal_net(n))
