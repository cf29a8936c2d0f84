"""`policy explain`: which tiers, policies and profiles select an endpoint, in evaluation
order, and which rule decides a given flow, found by walking the compiled chains."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from bgpd.model.policy import protocol_number
from policy.compiler import PolicyCompiler
from policy.endpoint import Endpoint
from policy.layout import chain_name, iface_ident
from policy.ruleset import RETURN
from policy.simulate import Packet, Simulator, Trace


class ExplainError(ValueError):
    """The endpoint or peer named on the command line does not exist."""


def find_endpoint(compiler: PolicyCompiler, ref: str) -> Endpoint:
    """An endpoint by name, namespace/name, interface or IP address."""
    hits = []
    for ep in compiler.endpoints.values():
        names = {ep.name, ep.iface, *ep.ips}
        if ep.namespace:
            names.add(f"{ep.namespace}/{ep.name}")
        if ref in names:
            hits.append(ep)
    if not hits:
        raise ExplainError(f"no endpoint named {ref!r} (give name, namespace/name, iface or IP)")
    if len(hits) > 1:
        keys = ", ".join(sorted(ep.key for ep in hits))
        raise ExplainError(f"{ref!r} is ambiguous: {keys}; use namespace/name")
    return hits[0]


def _peer_ip(compiler: PolicyCompiler, ref: str, version: int) -> str:
    try:
        return str(ipaddress.ip_address(ref))
    except ValueError:
        pass
    ep = find_endpoint(compiler, ref)
    ips = ep.ips_of(version)
    if not ips:
        raise ExplainError(f"endpoint {ep.key} has no IPv{version} address")
    return ips[0]


@dataclass
class Explanation:
    lines: list[str] = field(default_factory=list)
    allowed: bool | None = None
    trace: Trace | None = None

    def __str__(self) -> str:
        return "\n".join(self.lines)


def _direction_lines(compiler: PolicyCompiler, ep: Endpoint, direction: str) -> list[str]:
    problems: dict[str, str] = {}
    included = compiler.included(problems)
    plans = compiler.tier_plans(ep.key, direction, included)
    out = [f"{direction}:"]
    n = 0
    for plan in plans:
        out.append(f"  tier {plan.name} (default action {plan.default_action})")
        for display, chain in plan.policies:
            n += 1
            p = next(p for p in compiler.policies.values() if p.display == display)
            order = "none" if p.order == float("inf") else f"{p.order:g}"
            out.append(f"    {n}. policy {display} (order {order}) -> {chain}")
    if not plans:
        out.append("  no policy selects this endpoint")
    for key in sorted(compiler.policies_of(ep.key)):
        p = compiler.policies[key]
        if key in problems and direction.capitalize() in p.types:
            state = "its last good version is applied" if f"policy:{key}" in included else ""
            out.append(f"  NOT APPLIED: policy {p.display}: {problems[key]} {state}".rstrip())
    kind = "pri" if direction == "ingress" else "pro"
    for name in ep.profiles:
        state = "" if f"profile:{name}" in included else " (missing: matches nothing)"
        out.append(f"  profile {name}{state} -> {chain_name(kind, name)}")
    if not ep.profiles:
        out.append("  no profiles")
    return out


def explain(
    compiler: PolicyCompiler,
    endpoint: str,
    *,
    peer_from: str | None = None,
    peer_to: str | None = None,
    proto: str | int | None = None,
    port: int | None = None,
    icmp_type: int | None = None,
) -> Explanation:
    """Evaluation order for `endpoint`, and the verdict for the flow from/to a peer."""
    ep = find_endpoint(compiler, endpoint)
    exp = Explanation()
    where = f"namespace {ep.namespace}" if ep.namespace else "host endpoint"
    exp.lines.append(f"endpoint {ep.key} ({where}, iface {ep.iface}, ips {', '.join(ep.ips)})")
    labels = compiler._labels.get(ep.key, {})
    exp.lines.append("labels: " + ", ".join(f"{k}={v}" for k, v in sorted(labels.items())))
    for direction in ("ingress", "egress"):
        exp.lines += _direction_lines(compiler, ep, direction)
    if peer_from is None and peer_to is None:
        return exp
    if peer_from is not None and peer_to is not None:
        raise ExplainError("give --from or --to, not both")
    rs = compiler.ruleset()
    mine = ep.ips_of(compiler.version)
    if not mine:
        raise ExplainError(f"endpoint {ep.key} has no IPv{compiler.version} address")
    proto_num = protocol_number(proto) if proto else 6
    ident = iface_ident(ep.iface)
    if peer_from is not None:
        src, dst, direction = _peer_ip(compiler, peer_from, compiler.version), mine[0], "ingress"
        chain = chain_name("fh" if ep.host else "tw", ident)
    else:
        src, dst, direction = mine[0], _peer_ip(compiler, peer_to, compiler.version), "egress"  # type: ignore[arg-type]
        chain = chain_name("th" if ep.host else "fw", ident)
    pkt = Packet(src=src, dst=dst, proto=proto_num, dport=port, icmp_type=icmp_type)
    trace = Simulator(rs).walk(chain, pkt)
    exp.trace = trace
    exp.allowed = trace.allowed
    what = f"{proto or 'tcp'}" + (f"/{port}" if port is not None else "")
    exp.lines.append(f"flow {src} -> {dst} {what} ({direction} of {ep.key}, chain {chain}):")
    decided = trace.deciding
    reason = str(decided[1].origin) if decided and decided[1].origin else "no rule matched"
    verdict = "ALLOW" if trace.allowed else "DENY"
    exp.lines.append(f"  {verdict} by {reason}")
    seen: set[str] = set()
    for chain_name_, rule in trace.matched:
        if rule.origin is None or rule.origin.index is None or rule.action == RETURN:
            continue
        line = f"  matched {rule.origin} in {chain_name_}"
        if line not in seen:
            seen.add(line)
            exp.lines.append(line)
    return exp
