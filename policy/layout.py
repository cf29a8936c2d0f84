"""Calico's chain layout: the top-level chains, the dispatch chains, per-endpoint chains
(tiers, then profiles) and failsafes. Chain names are stable per resource.

We use Calico's own `cali-` prefix (ipsets `cali40`/`cali60`) on purpose: operators read the
same `cali-FORWARD`, `cali-tw-<iface>` and `cali-pi-<policy>` in `iptables-save` as on a
Calico node. The price is that Felix and our agent cannot run on the same host; both would
own every `cali-` chain.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from policy.endpoint import Endpoint
from policy.ruleset import (
    ACCEPT,
    DROP,
    ICMP,
    MARK_ACCEPT,
    MARK_MASK,
    MARK_PASS,
    MARK_UNTRACKED,
    RETURN,
    Conntrack,
    Iface,
    Jump,
    Mark,
    NoTrack,
    Origin,
    Ports,
    Proto,
    Rule,
    SetMark,
)

PREFIX = "cali-"
MAX_CHAIN = 28  # iptables' chain name limit
FORWARD = PREFIX + "FORWARD"
INPUT = PREFIX + "INPUT"
OUTPUT = PREFIX + "OUTPUT"
FROM_WL = PREFIX + "from-wl-dispatch"
TO_WL = PREFIX + "to-wl-dispatch"
WL_TO_HOST = PREFIX + "wl-to-host"
FAILSAFE_IN = PREFIX + "failsafe-in"
FAILSAFE_OUT = PREFIX + "failsafe-out"
FROM_HEP = PREFIX + "from-host-endpoint"
TO_HEP = PREFIX + "to-host-endpoint"
FROM_HEP_FWD = PREFIX + "from-hep-forward"
TO_HEP_FWD = PREFIX + "to-hep-forward"
PREROUTING = PREFIX + "PREROUTING"
# Our chains hook into the built-in ones with one rule each, at the top.
HOOKS = {"FORWARD": FORWARD, "INPUT": INPUT, "OUTPUT": OUTPUT}
TABLE_HOOKS = {
    "filter": HOOKS,
    "raw": {"PREROUTING": PREROUTING, "OUTPUT": OUTPUT},
    "mangle": {"PREROUTING": PREROUTING},
}

_SAFE = re.compile(r"[A-Za-z0-9._/:-]+")


def chain_name(kind: str, ident: str) -> str:
    """`cali-<kind>-<ident>`, or a hash of the ident when that would be too long or odd."""
    name = f"{PREFIX}{kind}-{ident}"
    if len(name) <= MAX_CHAIN and _SAFE.fullmatch(ident):
        return name
    digest = base64.b32encode(hashlib.sha256(ident.encode()).digest()).decode().lower()
    stem = f"{PREFIX}{kind}-_"
    return stem + digest[: MAX_CHAIN - len(stem)]


def iface_ident(iface: str) -> str:
    return "_all" if iface == "*" else iface


@dataclass(frozen=True)
class Failsafes:
    """Calico's default failsafe ports; (protocol, port) pairs."""

    inbound: tuple[tuple[str, int], ...] = (
        ("tcp", 22),
        ("udp", 68),
        ("tcp", 179),
        ("tcp", 2379),
        ("tcp", 2380),
        ("tcp", 5473),
        ("tcp", 6443),
        ("tcp", 6666),
        ("tcp", 6667),
    )
    outbound: tuple[tuple[str, int], ...] = (
        ("udp", 53),
        ("udp", 67),
        ("tcp", 53),
        ("tcp", 67),
        ("tcp", 179),
        ("tcp", 2379),
        ("tcp", 2380),
        ("tcp", 5473),
        ("tcp", 6443),
        ("tcp", 6666),
        ("tcp", 6667),
    )


_PROTO_NUMBERS = {"tcp": 6, "udp": 17, "sctp": 132}


def failsafe_chain(ports: Iterable[tuple[str, int]], inbound: bool) -> tuple[Rule, ...]:
    by_proto: dict[str, list[int]] = {}
    for proto, port in ports:
        by_proto.setdefault(proto.lower(), []).append(port)
    rules = []
    origin = Origin("failsafe", "inbound" if inbound else "outbound")
    for proto in sorted(by_proto):
        ranges = [(p, p) for p in sorted(set(by_proto[proto]))]
        for i in range(0, len(ranges), 15):
            rules.append(
                Rule(
                    (Proto(_PROTO_NUMBERS[proto]), Ports("dst", tuple(ranges[i : i + 15]))),
                    ACCEPT,
                    origin,
                )
            )
    return tuple(rules)


@dataclass(frozen=True)
class TierPlan:
    """The policies of one tier that apply to an endpoint in one direction, in order."""

    name: str
    default_action: str
    policies: tuple[tuple[str, str], ...]  # (display name, chain name)


def endpoint_chain(
    tiers: Sequence[TierPlan],
    profiles: Sequence[tuple[str, str | None]],
    *,
    use_profiles: bool = True,
    end: Rule | None = None,
) -> tuple[Rule, ...]:
    """Tiers in order (each ending in its default action unless a policy passed), then the
    profiles, then drop. `profiles` holds (name, chain or None when the profile is missing)."""
    rules: list[Rule] = [Rule((), SetMark(0, MARK_MASK))]
    for tier in tiers:
        tier_origin = Origin(f"tier {tier.name}")
        rules.append(Rule((), SetMark(0, MARK_PASS), tier_origin))
        for display, chain in tier.policies:
            origin = Origin(f"policy {display}")
            rules.append(Rule((Mark(0, MARK_PASS),), Jump(chain), origin))
            rules.append(Rule((Mark(MARK_ACCEPT, MARK_ACCEPT),), RETURN, origin))
        if tier.default_action == "Deny":
            rules.append(
                Rule(
                    (Mark(0, MARK_PASS),),
                    DROP,
                    Origin(f"tier {tier.name}", note="default deny: no policy matched"),
                )
            )
    if use_profiles:
        for name, chain in profiles:
            if chain is None:
                continue
            origin = Origin(f"profile {name}")
            rules.append(Rule((), Jump(chain), origin))
            rules.append(Rule((Mark(MARK_ACCEPT, MARK_ACCEPT),), RETURN, origin))
    if end is None:
        end = Rule((), DROP, Origin("endpoint", note="default deny: no profile allowed"))
    rules.append(end)
    return tuple(rules)


def dispatch(
    endpoints: Iterable[Endpoint], direction: str, kind: str, *, catch_all: bool
) -> tuple[Rule, ...]:
    """One goto per interface; workload dispatch drops unknown `cali` interfaces."""
    rules: list[Rule] = []
    wildcard: Endpoint | None = None
    for ep in sorted(endpoints, key=lambda e: e.iface):
        if ep.iface == "*":
            wildcard = ep
            continue
        chain = chain_name(kind, iface_ident(ep.iface))
        rules.append(Rule((Iface(direction, ep.iface),), Jump(chain, goto=True)))  # type: ignore[arg-type]
    if wildcard is not None:
        chain = chain_name(kind, iface_ident("*"))
        rules.append(Rule((Iface(direction, "lo", negate=True),), Jump(chain, goto=True)))  # type: ignore[arg-type]
    if catch_all:
        rules.append(Rule((), DROP, Origin("dispatch", note="unknown workload interface")))
    return tuple(rules)


# Neighbour discovery and router solicitation: a workload that cannot do these has no IPv6.
_NDP_TYPES = (130, 131, 132, 133, 135, 136)


def _wl_to_host(version: int) -> tuple[Rule, ...]:
    """Workload-to-host: DHCP/NDP first (Calico never lets policy break them), then the
    workload's egress policy, then accept."""
    origin = Origin("workload to host", note="always allowed")
    if version == 4:
        fixed = [
            Rule((Proto(17), Ports("src", ((68, 68),)), Ports("dst", ((67, 67),))), ACCEPT, origin)
        ]
    else:
        fixed = [Rule((Proto(58), ICMP(True, t)), ACCEPT, origin) for t in _NDP_TYPES]
        fixed.append(
            Rule(
                (Proto(17), Ports("src", ((546, 546),)), Ports("dst", ((547, 547),))),
                ACCEPT,
                origin,
            )
        )
    return (
        *fixed,
        Rule((), Jump(FROM_WL)),
        Rule((), ACCEPT, Origin("workload to host", note="allowed by egress policy")),
    )


def top_chains(
    workload_prefix: str,
    failsafes: Failsafes,
    have_heps: bool,
    have_forward_heps: bool,
    version: int = 4,
    *,
    have_untracked: bool = False,
) -> dict[str, tuple[Rule, ...]]:
    """cali-FORWARD/INPUT/OUTPUT and their fixed helpers."""
    wl = workload_prefix + "+"
    untracked = (
        [
            Rule(
                (Conntrack(("UNTRACKED",)), Mark(MARK_UNTRACKED, MARK_UNTRACKED)),
                ACCEPT,
                Origin("untracked", note="allowed by a doNotTrack policy"),
            )
        ]
        if have_untracked
        else []
    )
    ct = (
        *untracked,
        Rule((Conntrack(("RELATED", "ESTABLISHED")),), ACCEPT),
        Rule((Conntrack(("INVALID",)),), DROP),
        Rule((), SetMark(0, MARK_MASK)),
    )
    fwd = [
        *ct,
        Rule((Iface("in", wl),), Jump(FROM_WL)),
        Rule((Iface("out", wl),), Jump(TO_WL)),
    ]
    if have_forward_heps:
        fwd += [Rule((), Jump(FROM_HEP_FWD)), Rule((), Jump(TO_HEP_FWD))]
    fwd += [Rule((Iface("in", wl),), ACCEPT), Rule((Iface("out", wl),), ACCEPT)]
    accepted = Rule((Mark(MARK_ACCEPT, MARK_ACCEPT),), ACCEPT)
    inp = [*ct, Rule((Iface("in", wl),), Jump(WL_TO_HOST, goto=True))]
    out = [*ct, Rule((Iface("out", wl),), RETURN, Origin("host to local workload"))]
    if have_heps:
        inp += [Rule((), Jump(FAILSAFE_IN)), Rule((), Jump(FROM_HEP)), accepted]
        out += [Rule((), Jump(FAILSAFE_OUT)), Rule((), Jump(TO_HEP)), accepted]
    chains = {
        FORWARD: tuple(fwd),
        INPUT: tuple(inp),
        OUTPUT: tuple(out),
        WL_TO_HOST: _wl_to_host(version),
    }
    if have_heps:
        chains[FAILSAFE_IN] = failsafe_chain(failsafes.inbound, inbound=True)
        chains[FAILSAFE_OUT] = failsafe_chain(failsafes.outbound, inbound=False)
    return chains


def raw_chains(failsafes: Failsafes, heps: Sequence[Endpoint]) -> dict[str, tuple[Rule, ...]]:
    """The raw table for doNotTrack policies: what they allow skips conntrack (and is then
    accepted by the filter table); what they deny is dropped; the rest goes on as usual."""
    clear = Rule((), SetMark(0, MARK_MASK | MARK_UNTRACKED))
    untrack = (
        Rule((Mark(MARK_ACCEPT, MARK_ACCEPT),), SetMark(MARK_UNTRACKED, MARK_UNTRACKED)),
        Rule((Mark(MARK_UNTRACKED, MARK_UNTRACKED),), NoTrack()),
        Rule((Mark(MARK_UNTRACKED, MARK_UNTRACKED),), ACCEPT),
    )
    return {
        PREROUTING: (clear, Rule((), Jump(FAILSAFE_IN)), Rule((), Jump(FROM_HEP)), *untrack),
        OUTPUT: (clear, Rule((), Jump(FAILSAFE_OUT)), Rule((), Jump(TO_HEP)), *untrack),
        FAILSAFE_IN: failsafe_chain(failsafes.inbound, inbound=True),
        FAILSAFE_OUT: failsafe_chain(failsafes.outbound, inbound=False),
        FROM_HEP: dispatch(heps, "in", "fh", catch_all=False),
        TO_HEP: dispatch(heps, "out", "th", catch_all=False),
    }


def mangle_chains(failsafes: Failsafes, heps: Sequence[Endpoint]) -> dict[str, tuple[Rule, ...]]:
    """The mangle table for preDNAT policies, before DNAT: deny drops, allow or no decision
    goes on to the filter table's normal policy."""
    return {
        PREROUTING: (
            Rule((Conntrack(("RELATED", "ESTABLISHED")),), ACCEPT),
            Rule((), SetMark(0, MARK_MASK)),
            Rule((), Jump(FAILSAFE_IN)),
            Rule((), Jump(FROM_HEP)),
        ),
        FAILSAFE_IN: failsafe_chain(failsafes.inbound, inbound=True),
        FROM_HEP: dispatch(heps, "in", "fh", catch_all=False),
    }
