"""Per-peer import/export route filters in the spirit of Calico's BGPFilter: ordered rules, the
first matching rule decides (Accept/Reject) and may rewrite attributes; no match accepts.

Pure functions over plain data: `apply_filter(filter, family, prefix, attrs, ebgp)`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from bgpd.speaker.attributes import AS_SEQUENCE, PathAttributes
from bgpd.speaker.types import AFI_IPV4, Family, Prefix

ACCEPT = "Accept"
REJECT = "Reject"
ACTIONS = (ACCEPT, REJECT)
MATCH_OPERATORS = ("Equal", "NotEqual", "In", "NotIn")
PEER_TYPES = ("ebgp", "ibgp")


@dataclass(frozen=True, slots=True)
class Rule:
    """One filter rule: every given match must hold; then `action`, after the operations."""

    action: str
    cidr: tuple[int, Prefix] | None = None  # (afi, prefix)
    match_operator: str = "Equal"
    prefix_length_min: int | None = None
    prefix_length_max: int | None = None
    community: int | None = None
    as_path_prefix: tuple[int, ...] = ()
    peer_type: str | None = None
    add_community: tuple[int, ...] = ()
    prepend_as_path: tuple[int, ...] = ()
    set_local_pref: int | None = None

    def matches(self, afi: int, prefix: Prefix, attrs: PathAttributes, ebgp: bool) -> bool:
        if self.cidr is not None:
            cafi, (caddr, clen) = self.cidr
            if cafi != afi:
                return False
            addr, plen = prefix
            if self.match_operator in ("Equal", "NotEqual"):
                hit = (addr, plen) == (caddr, clen)
            else:
                width = 32 if afi == AFI_IPV4 else 128
                shift = width - clen
                hit = plen >= clen and (addr >> shift) == (caddr >> shift)
            if self.match_operator in ("NotEqual", "NotIn"):
                hit = not hit
            if not hit:
                return False
        plen = prefix[1]
        if self.prefix_length_min is not None and plen < self.prefix_length_min:
            return False
        if self.prefix_length_max is not None and plen > self.prefix_length_max:
            return False
        if self.community is not None and self.community not in attrs.communities:
            return False
        if self.as_path_prefix:
            asns = attrs.asns()
            if asns[: len(self.as_path_prefix)] != self.as_path_prefix:
                return False
        return not (self.peer_type is not None and (self.peer_type == "ebgp") != ebgp)

    def rewrite(self, attrs: PathAttributes) -> PathAttributes:
        if self.add_community:
            extra = tuple(c for c in self.add_community if c not in attrs.communities)
            if extra:
                attrs = replace(attrs, communities=tuple(sorted(attrs.communities + extra)))
        if self.prepend_as_path:
            path = attrs.as_path
            if path and path[0][0] == AS_SEQUENCE:
                path = ((AS_SEQUENCE, self.prepend_as_path + path[0][1]), *path[1:])
            else:
                path = ((AS_SEQUENCE, self.prepend_as_path), *path)
            attrs = replace(attrs, as_path=path)
        if self.set_local_pref is not None:
            attrs = replace(attrs, local_pref=self.set_local_pref)
        return attrs


@dataclass(frozen=True, slots=True)
class Filter:
    """A named `[[filter]]` table: rules in order."""

    name: str
    rules: tuple[Rule, ...] = ()

    @property
    def prefix_independent(self) -> bool:
        """True when no rule looks at the prefix, so one result serves a whole UPDATE."""
        return all(
            r.cidr is None and r.prefix_length_min is None and r.prefix_length_max is None
            for r in self.rules
        )


def apply_filter(
    flt: Filter | None, family: Family, prefix: Prefix, attrs: PathAttributes, ebgp: bool
) -> PathAttributes | None:
    """The attributes to go on with, or None when the route is rejected."""
    if flt is None:
        return attrs
    for rule in flt.rules:
        if rule.matches(family.afi, prefix, attrs, ebgp):
            if rule.action == REJECT:
                return None
            return rule.rewrite(attrs)
    return attrs
