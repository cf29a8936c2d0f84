"""Property tests: for random labels and selectors, the compiled chains and ipsets decide
exactly what evaluating the selectors directly decides."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from bgpd.model import GlobalNetworkPolicy, Profile
from policy.compiler import PolicyCompiler
from policy.endpoint import Endpoint
from policy.layout import chain_name
from policy.selector import parse
from policy.simulate import Packet, Simulator
from policy.view import endpoint_labels

KEYS = ["app", "tier", "env"]
VALUES = ["a", "b", "ab"]

label_sets = st.dictionaries(st.sampled_from(KEYS), st.sampled_from(VALUES), max_size=3)


def _atom() -> st.SearchStrategy[str]:
    key, value = st.sampled_from(KEYS), st.sampled_from(VALUES)
    return st.one_of(
        st.builds(lambda k, v: f"{k} == '{v}'", key, value),
        st.builds(lambda k, v: f"{k} != '{v}'", key, value),
        st.builds(lambda k, v: f"{k} in {{'{v}', 'zz'}}", key, value),
        st.builds(lambda k, v: f"{k} not in {{'{v}'}}", key, value),
        st.builds(lambda k: f"has({k})", key),
        st.builds(lambda k: f"!has({k})", key),
        st.builds(lambda k, v: f"{k} starts with '{v[0]}'", key, value),
        st.builds(lambda k, v: f"{k} ends with '{v[-1]}'", key, value),
        st.builds(lambda k, v: f"{k} contains '{v}'", key, value),
        st.just("all()"),
    )


selectors = st.recursive(
    _atom(),
    lambda inner: st.one_of(
        st.builds(lambda a, b: f"({a}) && ({b})", inner, inner),
        st.builds(lambda a, b: f"({a}) || ({b})", inner, inner),
        st.builds(lambda a: f"!({a})", inner),
    ),
    max_leaves=4,
)


def _profile() -> Profile:
    return Profile.model_validate(
        {
            "metadata": {"name": "kns.ns"},
            "spec": {"ingress": [{"action": "Allow"}], "egress": [{"action": "Allow"}]},
        }
    )


@settings(max_examples=150, deadline=None)
@given(
    labels=st.lists(label_sets, min_size=1, max_size=6),
    policy_selector=selectors,
    source_selector=selectors,
)
def test_compiled_policy_decides_as_the_selectors_do(
    labels: list[dict[str, str]], policy_selector: str, source_selector: str
) -> None:
    eps = [
        Endpoint.for_pod(f"e{i}", "ns", f"cali{i}", [f"10.244.0.{i + 1}"], lab)
        for i, lab in enumerate(labels)
    ]
    policy = GlobalNetworkPolicy.model_validate(
        {
            "metadata": {"name": "p"},
            "spec": {
                "selector": policy_selector,
                "ingress": [{"action": "Allow", "source": {"selector": source_selector}}],
            },
        }
    )
    c = PolicyCompiler()
    c.set_resources([_profile(), policy])
    c.set_endpoints(eps)
    rs = c.ruleset()
    sim = Simulator(rs)
    psel, ssel = parse(policy_selector), parse(source_selector)
    for dst in eps:
        selected = psel.evaluate(endpoint_labels(dst, c.profiles))
        for src in eps:
            expect = not selected or ssel.evaluate(endpoint_labels(src, c.profiles))
            pkt = Packet(src=src.ips[0], dst=dst.ips[0])
            got = sim.walk(chain_name("tw", dst.iface), pkt).allowed
            assert got is expect, (dst.labels, src.labels)


@settings(max_examples=60, deadline=None)
@given(
    before=st.lists(label_sets, min_size=2, max_size=5),
    changes=st.lists(st.tuples(st.integers(0, 4), label_sets), max_size=5),
    source_selector=selectors,
)
def test_incremental_updates_equal_a_fresh_compile(
    before: list[dict[str, str]],
    changes: list[tuple[int, dict[str, str]]],
    source_selector: str,
) -> None:
    policy = GlobalNetworkPolicy.model_validate(
        {
            "metadata": {"name": "p"},
            "spec": {
                "selector": "has(app)",
                "ingress": [{"action": "Allow", "source": {"selector": source_selector}}],
            },
        }
    )

    def ep(i: int, lab: dict[str, str]) -> Endpoint:
        return Endpoint.for_pod(f"e{i}", "ns", f"cali{i}", [f"10.244.0.{i + 1}"], lab)

    live = PolicyCompiler()
    live.set_resources([_profile(), policy])
    current = {i: ep(i, lab) for i, lab in enumerate(before)}
    live.set_endpoints(current.values())
    live.ruleset()
    for i, lab in changes:
        i %= len(before)
        current[i] = ep(i, lab)
        live.upsert_endpoint(current[i])
        live.ruleset()
    fresh = PolicyCompiler()
    fresh.set_resources([_profile(), policy])
    fresh.set_endpoints(current.values())
    a, b = live.ruleset(), fresh.ruleset()
    assert a.chains == b.chains and a.ipsets == b.ipsets
