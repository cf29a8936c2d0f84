"""One Calico rule into iptables-shaped rules: protocol, ICMP, nets, selectors (as ipsets),
ports (multiport chunks and named-port ipsets), then the action with Calico's mark protocol."""

from __future__ import annotations

import ipaddress
import itertools
import re
from collections.abc import Callable, Iterator

from bgpd.model.policy import EntityRule, protocol_number
from bgpd.model.policy import Rule as ModelRule
from policy.ruleset import (
    DROP,
    ICMP,
    MARK_ACCEPT,
    MARK_PASS,
    RETURN,
    Addr,
    Direction,
    InSet,
    Log,
    Mark,
    Match,
    Origin,
    Ports,
    Proto,
    Rule,
    SetMark,
)
from policy.sets import ANY, Scope, SetKey

LOG_PREFIX = "calico-packet: "
# iptables multiport takes at most 15 ports, a range counting as two.
MULTIPORT_MAX = 15
_NAMED_PORT_PROTOCOLS = {6: "TCP", 17: "UDP", 132: "SCTP"}


class RenderError(ValueError):
    """A rule that cannot be expressed in iptables; the policy is reported, not applied."""


def _family(net: str) -> int:
    return ipaddress.ip_network(net, strict=False).version


def _port_chunks(ranges: list[tuple[int, int]]) -> Iterator[tuple[tuple[int, int], ...]]:
    chunk: list[tuple[int, int]] = []
    used = 0
    for lo, hi in ranges:
        cost = 1 if lo == hi else 2
        if used + cost > MULTIPORT_MAX:
            yield tuple(chunk)
            chunk, used = [], 0
        chunk.append((lo, hi))
        used += cost
    if chunk:
        yield tuple(chunk)


def _split_ports(specs: list[int | str]) -> tuple[list[tuple[int, int]], list[str]]:
    ranges: list[tuple[int, int]] = []
    names: list[str] = []
    for spec in specs:
        if isinstance(spec, int):
            ranges.append((spec, spec))
        elif m := re.fullmatch(r"(\d+):(\d+)", spec):
            ranges.append((int(m.group(1)), int(m.group(2))))
        elif spec.isdigit():
            ranges.append((int(spec), int(spec)))
        else:
            names.append(spec)
    return ranges, names


class RuleCompiler:
    """Renders the rules of one resource. `scope` is where a bare selector looks (the
    policy's namespace for a NetworkPolicy, everywhere otherwise); `use_set` names an ipset
    and records that the resource uses it."""

    def __init__(self, version: int, scope: Scope, use_set: Callable[[SetKey], str]) -> None:
        self.version = version
        self.scope = scope
        self.use_set = use_set
        self.named_ports: set[tuple[str, str]] = set()

    def _entity_scope(self, entity: EntityRule) -> Scope:
        if entity.namespace_selector is not None:
            return ("nssel", entity.namespace_selector)
        return self.scope

    def _side(
        self, entity: EntityRule | None, d: Direction, proto: int | None
    ) -> tuple[list[Match], list[list[Match]]] | None:
        """Matches every packet must pass, and the alternatives of which one must match (the
        port list). None when nothing in this IP family can match."""
        if entity is None:
            return [], [[]]
        v = self.version
        if entity.services is not None:
            raise RenderError("services matches need Kubernetes Services, which are not supported")
        fixed: list[Match] = []
        if entity.nets is not None:
            nets = [n for n in entity.nets if _family(n) == v]
            if not nets:
                return None
            if len(nets) == 1:
                fixed.append(Addr(d, nets[0]))
            else:
                name = self.use_set(SetKey("nets", v, nets=tuple(sorted(nets))))
                fixed.append(InSet(d, name))
        not_nets = sorted(n for n in entity.not_nets or () if _family(n) == v)
        # iptables takes one -s/-d per rule, so a second address match becomes a set.
        if len(not_nets) == 1 and not fixed:
            fixed.append(Addr(d, not_nets[0], negate=True))
        elif not_nets:
            name = self.use_set(SetKey("nets", v, nets=tuple(not_nets)))
            fixed.append(InSet(d, name, negate=True))
        scope = self._entity_scope(entity)
        sa = entity.service_accounts
        sa_names = tuple(sorted(sa.names)) if sa is not None and sa.names else None
        sa_sel = sa.selector if sa is not None and sa.selector else None
        selector = entity.selector
        if selector is not None or entity.namespace_selector is not None or sa is not None:
            key = SetKey(
                "sel",
                v,
                selector=selector or "all()",
                scope=scope,
                sa_names=sa_names,
                sa_selector=sa_sel,
            )
            fixed.append(InSet(d, self.use_set(key)))
        if entity.not_selector is not None:
            key = SetKey("sel", v, selector=entity.not_selector, scope=scope)
            fixed.append(InSet(d, self.use_set(key), negate=True))

        def named_set(pname: str) -> str:
            proto_name = _NAMED_PORT_PROTOCOLS.get(proto or 0)
            if proto_name is None:
                raise RenderError(f"named port {pname!r} needs protocol TCP, UDP or SCTP")
            self.named_ports.add((proto_name, pname))
            key = SetKey(
                "port",
                v,
                selector=selector or "all()",
                scope=scope if selector is not None else ANY,
                port=(proto_name, pname),
            )
            return self.use_set(key)

        if entity.not_ports:
            ranges, names = _split_ports(list(entity.not_ports))
            for chunk in _port_chunks(ranges):
                fixed.append(Ports(d, chunk, negate=True))
            for pname in names:
                fixed.append(InSet(d, named_set(pname), negate=True, with_port=True))
        alternatives: list[list[Match]] = []
        if entity.ports:
            ranges, names = _split_ports(list(entity.ports))
            alternatives += [[Ports(d, chunk)] for chunk in _port_chunks(ranges)]
            alternatives += [[InSet(d, named_set(p), with_port=True)] for p in names]
        else:
            alternatives.append([])
        return fixed, alternatives

    def compile(self, rule: ModelRule, origin: Origin) -> list[Rule]:
        """The iptables rules for one Calico rule, in order; [] if it cannot match here."""
        v = self.version
        if rule.ip_version is not None and rule.ip_version != v:
            return []
        common: list[Match] = []
        proto = None if rule.protocol is None else protocol_number(rule.protocol)
        if proto is not None:
            if (proto == 1 and v == 6) or (proto == 58 and v == 4):
                return []
            common.append(Proto(proto))
        if rule.not_protocol is not None:
            common.append(Proto(protocol_number(rule.not_protocol), negate=True))
        for icmp, negate in ((rule.icmp, False), (rule.not_icmp, True)):
            if icmp is not None and icmp.type is not None:
                common.append(ICMP(v == 6, icmp.type, icmp.code, negate))
        if rule.http is not None:
            raise RenderError("HTTP matches need an L7 proxy, which is not supported")
        src = self._side(rule.source, "src", proto)
        dst = self._side(rule.destination, "dst", proto)
        if src is None or dst is None:
            return []
        out: list[Rule] = []
        for s_alt, d_alt in itertools.product(src[1], dst[1]):
            matches = tuple(common + src[0] + s_alt + dst[0] + d_alt)
            out += _action(rule.action, matches, origin)
        if rule.action in ("Allow", "Pass"):
            bit = MARK_ACCEPT if rule.action == "Allow" else MARK_PASS
            out.append(Rule((Mark(bit, bit),), RETURN, origin))
        return out


def _action(action: str, matches: tuple[Match, ...], origin: Origin) -> list[Rule]:
    if action == "Allow":
        return [Rule(matches, SetMark(MARK_ACCEPT, MARK_ACCEPT), origin)]
    if action == "Pass":
        return [Rule(matches, SetMark(MARK_PASS, MARK_PASS), origin)]
    if action == "Deny":
        return [Rule(matches, DROP, origin)]
    return [Rule(matches, Log(LOG_PREFIX), origin)]
