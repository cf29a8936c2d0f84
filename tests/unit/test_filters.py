"""BGPFilter-like rules: every match kind and operator, first match wins, the operations."""

from __future__ import annotations

import pytest

from bgpd.reflector.filters import Filter, Rule, apply_filter
from bgpd.speaker.attributes import AS_SEQUENCE, PathAttributes
from bgpd.speaker.types import IPV4_UNICAST, IPV6_UNICAST, prefix_from_str

ATTRS = PathAttributes(origin=0, as_path=((AS_SEQUENCE, (65001, 65002)),), communities=(100,))


def cidr(text: str):
    fam, p = prefix_from_str(text)
    return (fam.afi, p)


def verdict(rule: Rule, prefix: str, attrs=ATTRS, ebgp=True) -> bool:
    fam, p = prefix_from_str(prefix)
    return apply_filter(Filter("f", (rule,)), fam, p, attrs, ebgp) is None


@pytest.mark.parametrize(
    "op,prefix,rejected",
    [
        ("Equal", "10.244.0.0/16", True),
        ("Equal", "10.244.1.0/24", False),
        ("NotEqual", "10.244.1.0/24", True),
        ("NotEqual", "10.244.0.0/16", False),
        ("In", "10.244.1.0/24", True),
        ("In", "10.244.0.0/16", True),
        ("In", "10.0.0.0/8", False),
        ("In", "10.245.0.0/24", False),
        ("NotIn", "10.245.0.0/24", True),
        ("NotIn", "10.244.9.0/24", False),
    ],
)
def test_cidr_operators(op, prefix, rejected) -> None:
    rule = Rule("Reject", cidr=cidr("10.244.0.0/16"), match_operator=op)
    assert verdict(rule, prefix) == rejected


def test_cidr_of_another_family_never_matches() -> None:
    rule = Rule("Reject", cidr=cidr("10.244.0.0/16"), match_operator="NotIn")
    assert not verdict(rule, "fd00::/64")


def test_prefix_length_bounds() -> None:
    rule = Rule("Reject", cidr=cidr("10.244.0.0/16"), match_operator="In",
                prefix_length_min=26, prefix_length_max=28)  # fmt: skip
    assert [verdict(rule, p) for p in ("10.244.1.0/25", "10.244.1.0/26", "10.244.1.0/28",
                                        "10.244.1.0/29")] == [False, True, True, False]  # fmt: skip


def test_community_as_path_prefix_and_peer_type() -> None:
    assert verdict(Rule("Reject", community=100), "10.0.0.0/8")
    assert not verdict(Rule("Reject", community=101), "10.0.0.0/8")
    assert verdict(Rule("Reject", as_path_prefix=(65001,)), "10.0.0.0/8")
    assert not verdict(Rule("Reject", as_path_prefix=(65002,)), "10.0.0.0/8")
    assert verdict(Rule("Reject", peer_type="ebgp"), "10.0.0.0/8", ebgp=True)
    assert not verdict(Rule("Reject", peer_type="ebgp"), "10.0.0.0/8", ebgp=False)
    assert verdict(Rule("Reject", peer_type="ibgp"), "10.0.0.0/8", ebgp=False)


def test_first_matching_rule_wins_and_no_match_accepts() -> None:
    flt = Filter("f", (Rule("Accept", community=100), Rule("Reject")))
    fam, p = prefix_from_str("10.0.0.0/8")
    assert apply_filter(flt, fam, p, ATTRS, True) == ATTRS
    assert apply_filter(flt, fam, p, PathAttributes(), True) is None
    only = Filter("g", (Rule("Reject", community=5),))
    assert apply_filter(only, IPV6_UNICAST, prefix_from_str("fd00::/64")[1], ATTRS, True) == ATTRS


def test_operations() -> None:
    rule = Rule("Accept", add_community=(7, 100), prepend_as_path=(64999, 64999),
                set_local_pref=42)  # fmt: skip
    out = apply_filter(Filter("f", (rule,)), IPV4_UNICAST, (0, 0), ATTRS, False)
    assert out.communities == (7, 100)
    assert out.as_path == ((AS_SEQUENCE, (64999, 64999, 65001, 65002)),)
    assert out.local_pref == 42
    empty = apply_filter(Filter("f", (rule,)), IPV4_UNICAST, (0, 0), PathAttributes(), False)
    assert empty.as_path == ((AS_SEQUENCE, (64999, 64999)),)
