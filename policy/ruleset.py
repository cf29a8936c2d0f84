"""The compiler's output: chains of match/action rules and ipsets, as plain frozen data.

Nothing here knows iptables syntax (agent/iptables.py renders it) so the same rule set can be
rendered, diffed, or walked by `policy.simulate` to explain a verdict.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

# Mark bits shared by every chain: "a policy accepted" and "a policy passed to the next tier".
MARK_ACCEPT = 0x10000
MARK_PASS = 0x20000
MARK_MASK = MARK_ACCEPT | MARK_PASS
# Set in the raw table on packets an untracked (doNotTrack) policy allowed; the filter table
# accepts them without policy, as their conntrack entry never exists.
MARK_UNTRACKED = 0x40000

Direction = Literal["src", "dst"]


@dataclass(frozen=True, slots=True)
class Proto:
    number: int
    negate: bool = False


@dataclass(frozen=True, slots=True)
class Addr:
    direction: Direction
    cidr: str
    negate: bool = False


@dataclass(frozen=True, slots=True)
class InSet:
    """Membership of the packet's address (or address+port for hash:ip,port) in an ipset."""

    direction: Direction
    name: str
    negate: bool = False
    with_port: bool = False


@dataclass(frozen=True, slots=True)
class Ports:
    direction: Direction
    ranges: tuple[tuple[int, int], ...]
    negate: bool = False


@dataclass(frozen=True, slots=True)
class ICMP:
    v6: bool
    type: int
    code: int | None = None
    negate: bool = False


@dataclass(frozen=True, slots=True)
class Mark:
    value: int
    mask: int


@dataclass(frozen=True, slots=True)
class Iface:
    direction: Literal["in", "out"]
    name: str  # a trailing "+" is a prefix match, as in iptables
    negate: bool = False


@dataclass(frozen=True, slots=True)
class Conntrack:
    states: tuple[str, ...]


Match = Proto | Addr | InSet | Ports | ICMP | Mark | Iface | Conntrack


@dataclass(frozen=True, slots=True)
class Verdict:
    what: Literal["ACCEPT", "DROP", "RETURN"]


@dataclass(frozen=True, slots=True)
class Jump:
    chain: str
    goto: bool = False


@dataclass(frozen=True, slots=True)
class SetMark:
    value: int
    mask: int


@dataclass(frozen=True, slots=True)
class Log:
    prefix: str


@dataclass(frozen=True, slots=True)
class NoTrack:
    """Raw table only: keep the packet out of conntrack."""


Action = Verdict | Jump | SetMark | Log | NoTrack

ACCEPT = Verdict("ACCEPT")
DROP = Verdict("DROP")
RETURN = Verdict("RETURN")


@dataclass(frozen=True, slots=True)
class Origin:
    """Which resource rule a rendered rule comes from; shown by `policy explain`."""

    resource: str  # "policy default.allow-web", "profile kns.ami-a", "tier default"
    direction: str = ""  # "ingress" / "egress" / ""
    index: int | None = None  # rule number within the resource, from 0
    note: str = ""

    def __str__(self) -> str:
        parts = [self.resource]
        if self.direction:
            parts.append(self.direction)
        if self.index is not None:
            parts.append(f"rule {self.index}")
        if self.note:
            parts.append(self.note)
        return " ".join(parts)


@dataclass(frozen=True, slots=True)
class Rule:
    matches: tuple[Match, ...]
    action: Action
    origin: Origin | None = None


Chain = tuple[Rule, ...]

SetType = Literal["hash:net", "hash:ip,port"]


@dataclass(frozen=True, slots=True)
class IPSet:
    name: str
    type: SetType
    family: int  # 4 or 6
    members: frozenset[str]


@dataclass
class RuleSet:
    """Everything one IP family needs: filter chain name -> rules, the raw and mangle
    chains (host endpoint doNotTrack and preDNAT policy), ipset name -> set, and the
    resources that could not be rendered (key -> reason)."""

    version: int
    chains: dict[str, Chain] = field(default_factory=dict)
    tables: dict[str, dict[str, Chain]] = field(default_factory=dict)
    ipsets: dict[str, IPSet] = field(default_factory=dict)
    problems: dict[str, str] = field(default_factory=dict)
