"""Walks a compiled RuleSet for one packet, as the kernel would, and records which rules
matched; `policy explain` and the compiler's unit tests use it to name the deciding rule."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from policy.ruleset import (
    ICMP,
    MARK_ACCEPT,
    MARK_PASS,
    Addr,
    Conntrack,
    Iface,
    InSet,
    Jump,
    Log,
    Mark,
    Match,
    NoTrack,
    Ports,
    Proto,
    Rule,
    RuleSet,
    SetMark,
    Verdict,
)

_PROTO_NAMES = {6: "tcp", 17: "udp", 132: "sctp", 136: "udplite"}


@dataclass(frozen=True)
class Packet:
    src: str
    dst: str
    proto: int = 6
    sport: int | None = None
    dport: int | None = None
    icmp_type: int | None = None
    icmp_code: int | None = None
    iface_in: str | None = None
    iface_out: str | None = None
    ctstate: str = "NEW"


@dataclass
class Trace:
    verdict: str  # "ACCEPT", "DROP", or "RETURN" (fell off the start chain)
    mark: int
    matched: list[tuple[str, Rule]] = field(default_factory=list)

    @property
    def allowed(self) -> bool:
        return self.verdict == "ACCEPT" or (
            self.verdict == "RETURN" and bool(self.mark & MARK_ACCEPT)
        )

    @property
    def deciding(self) -> tuple[str, Rule] | None:
        """The last matched rule from a resource that accepted, passed or dropped."""
        for chain, rule in reversed(self.matched):
            a = rule.action
            if rule.origin is None:
                continue
            if isinstance(a, SetMark) and a.value & (MARK_ACCEPT | MARK_PASS):
                return chain, rule
            if isinstance(a, Verdict) and a.what in ("DROP", "ACCEPT"):
                return chain, rule
        return None


def _iface(name: str | None, pattern: str) -> bool:
    if name is None:
        return False
    if pattern.endswith("+"):
        return name.startswith(pattern[:-1])
    return name == pattern


class Simulator:
    def __init__(self, rs: RuleSet) -> None:
        self.rs = rs
        self._nets: dict[str, list[ipaddress.IPv4Network | ipaddress.IPv6Network]] = {}

    def _in_set(self, m: InSet, pkt: Packet) -> bool:
        s = self.rs.ipsets.get(m.name)
        if s is None:
            return False
        ip = pkt.src if m.direction == "src" else pkt.dst
        if m.with_port:
            port = pkt.sport if m.direction == "src" else pkt.dport
            proto = _PROTO_NAMES.get(pkt.proto)
            return port is not None and proto is not None and f"{ip},{proto}:{port}" in s.members
        nets = self._nets.get(m.name)
        if nets is None:
            nets = [ipaddress.ip_network(x, strict=False) for x in s.members]
            self._nets[m.name] = nets
        addr = ipaddress.ip_address(ip)
        return any(addr.version == n.version and addr in n for n in nets)

    def _match(self, m: Match, pkt: Packet, mark: int) -> bool:
        if isinstance(m, Proto):
            return (pkt.proto == m.number) != m.negate
        if isinstance(m, Addr):
            ip = ipaddress.ip_address(pkt.src if m.direction == "src" else pkt.dst)
            net = ipaddress.ip_network(m.cidr, strict=False)
            return (ip.version == net.version and ip in net) != m.negate
        if isinstance(m, InSet):
            return self._in_set(m, pkt) != m.negate
        if isinstance(m, Ports):
            port = pkt.sport if m.direction == "src" else pkt.dport
            hit = port is not None and any(lo <= port <= hi for lo, hi in m.ranges)
            return hit != m.negate
        if isinstance(m, ICMP):
            hit = pkt.icmp_type == m.type and (m.code is None or pkt.icmp_code == m.code)
            return hit != m.negate
        if isinstance(m, Mark):
            return mark & m.mask == m.value
        if isinstance(m, Iface):
            name = pkt.iface_in if m.direction == "in" else pkt.iface_out
            return _iface(name, m.name) != m.negate
        if isinstance(m, Conntrack):
            return pkt.ctstate in m.states
        raise TypeError(f"unknown match {m!r}")

    def walk(self, chain: str, pkt: Packet, mark: int = 0) -> Trace:
        trace = Trace("RETURN", mark)
        self._walk(chain, pkt, trace, 0)
        return trace

    def _walk(self, chain: str, pkt: Packet, trace: Trace, depth: int) -> str | None:
        """Runs one chain; returns a final verdict, or None when the chain returned."""
        if depth > 50:
            raise RecursionError(f"chain loop at {chain}")
        for rule in self.rs.chains.get(chain, ()):
            if not all(self._match(m, pkt, trace.mark) for m in rule.matches):
                continue
            trace.matched.append((chain, rule))
            a = rule.action
            if isinstance(a, Verdict):
                if a.what == "RETURN":
                    return None
                trace.verdict = a.what
                return a.what
            if isinstance(a, SetMark):
                trace.mark = (trace.mark & ~a.mask) | a.value
            elif isinstance(a, Jump):
                final = self._walk(a.chain, pkt, trace, depth + 1)
                if final is not None:
                    return final
                if a.goto:
                    return None
            elif isinstance(a, Log | NoTrack):
                continue
        return None
