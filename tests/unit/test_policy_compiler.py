"""Compiler semantics, checked by walking the compiled chains for real packets: order, tiers,
Pass, Log, Deny, named ports, nets/notNets, ICMP type/code, protocols, selectors, namespaces,
service accounts, profiles, network sets, host endpoints and the k8s translation."""

from __future__ import annotations

import textwrap

import pytest

from agent.iptables import render_rule
from bgpd.model import load_documents
from policy.compiler import PolicyCompiler
from policy.endpoint import Endpoint, NamedPort
from policy.layout import chain_name
from policy.ruleset import NoTrack, RuleSet
from policy.simulate import Packet, Simulator, Trace

PROFILES = """
apiVersion: projectcalico.org/v3
kind: Profile
metadata: {name: kns.default}
spec:
  ingress: [{action: Allow}]
  egress: [{action: Allow}]
---
apiVersion: projectcalico.org/v3
kind: Profile
metadata: {name: kns.prod}
spec:
  labelsToApply: {env: prod}
  ingress: [{action: Allow}]
  egress: [{action: Allow}]
"""

WEB = Endpoint.for_pod(
    "web",
    "default",
    "caliweb",
    ["10.244.1.10"],
    {"app": "web", "tier": "frontend"},
    ports=(NamedPort("http", "TCP", 8080), NamedPort("dns", "UDP", 5353)),
    service_account="web-sa",
)
DB = Endpoint.for_pod("db", "default", "calidb", ["10.244.1.20"], {"app": "db"})
PROD = Endpoint.for_pod("api", "prod", "caliapi", ["10.244.2.30"], {"app": "api"})


def build(yaml_text: str, endpoints=(WEB, DB, PROD), version: int = 4) -> PolicyCompiler:
    c = PolicyCompiler(version)
    c.set_resources(load_documents(PROFILES + "---\n" + textwrap.dedent(yaml_text)))
    c.set_endpoints(endpoints)
    return c


def ingress(
    rs: RuleSet, ep: Endpoint, src: str, proto: int = 6, port: int | None = 80, **kw
) -> Trace:
    pkt = Packet(src=src, dst=ep.ips[0], proto=proto, dport=port, **kw)
    return Simulator(rs).walk(chain_name("tw", ep.iface), pkt)


def egress(rs: RuleSet, ep: Endpoint, dst: str, proto: int = 6, port: int | None = 80) -> Trace:
    pkt = Packet(src=ep.ips[0], dst=dst, proto=proto, dport=port)
    return Simulator(rs).walk(chain_name("fw", ep.iface), pkt)


def allowed(trace: Trace) -> bool:
    return trace.allowed


def decided_by(trace: Trace) -> str:
    d = trace.deciding
    return str(d[1].origin) if d and d[1].origin else ""


def gnp(name: str, body: str) -> str:
    return (
        f"apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\n"
        f"metadata: {{name: {name}}}\nspec:\n" + textwrap.indent(textwrap.dedent(body), "  ")
    )


def np(name: str, ns: str, body: str) -> str:
    return (
        f"apiVersion: projectcalico.org/v3\nkind: NetworkPolicy\n"
        f"metadata: {{name: {name}, namespace: {ns}}}\nspec:\n"
        + textwrap.indent(textwrap.dedent(body), "  ")
    )


# --- ordering, tiers, actions -------------------------------------------------------------


def test_no_policy_falls_to_profile_allow() -> None:
    rs = build("").ruleset()
    t = ingress(rs, WEB, "198.18.5.5")
    assert allowed(t) and decided_by(t) == "profile kns.default ingress rule 0"


def test_selected_endpoint_with_no_matching_rule_is_denied_by_the_tier() -> None:
    rs = build(
        gnp(
            "only-db",
            "selector: app == 'web'\ningress:\n- action: Allow\n  source: {nets: [192.0.2.0/24]}\n",
        )
    ).ruleset()
    t = ingress(rs, WEB, "198.18.5.5")
    assert not allowed(t) and "default deny" in decided_by(t)
    assert allowed(ingress(rs, WEB, "192.0.2.9"))
    assert allowed(ingress(rs, DB, "198.18.5.5")), "DB is not selected: profile decides"


@pytest.mark.parametrize(("deny_order", "allow_order", "expect"), [(10, 20, False), (20, 10, True)])
def test_lower_order_is_evaluated_first(deny_order: int, allow_order: int, expect: bool) -> None:
    text = (
        gnp("deny", f"order: {deny_order}\nselector: all()\ningress: [{{action: Deny}}]\n")
        + "---\n"
        + gnp("allow", f"order: {allow_order}\nselector: all()\ningress: [{{action: Allow}}]\n")
    )
    assert allowed(ingress(build(text).ruleset(), WEB, "198.18.5.5")) is expect


def test_equal_order_ties_break_by_name() -> None:
    text = (
        gnp("b-deny", "order: 5\nselector: all()\ningress: [{action: Deny}]\n")
        + "---\n"
        + gnp("a-allow", "order: 5\nselector: all()\ningress: [{action: Allow}]\n")
    )
    t = ingress(build(text).ruleset(), WEB, "198.18.5.5")
    assert allowed(t) and decided_by(t) == "policy a-allow ingress rule 0"


TIERS = """
apiVersion: projectcalico.org/v3
kind: Tier
metadata: {name: security}
spec: {order: 10}
---
"""


def test_pass_skips_the_rest_of_the_tier_to_the_next_tier() -> None:
    text = (
        TIERS
        + gnp(
            "security.pass-web",
            "tier: security\norder: 1\nselector: all()\ningress:\n- action: Pass\n  source: {nets: [198.18.0.0/16]}\n",
        )
        + "---\n"
        + gnp(
            "security.deny",
            "tier: security\norder: 2\nselector: all()\ningress: [{action: Deny}]\n",
        )
        + "---\n"
        + gnp(
            "allow-http",
            "selector: all()\ningress:\n- action: Allow\n  protocol: TCP\n  destination: {ports: [80]}\n",
        )
    )
    rs = build(text).ruleset()
    assert allowed(ingress(rs, WEB, "198.18.5.5", port=80))
    assert not allowed(ingress(rs, WEB, "198.18.5.5", port=81)), "default tier denies"
    t = ingress(rs, WEB, "192.0.2.1", port=80)
    assert not allowed(t) and decided_by(t) == "policy security.deny ingress rule 0"


def test_pass_in_the_last_tier_reaches_the_profiles() -> None:
    text = gnp("pass-all", "selector: all()\ningress: [{action: Pass}]\n")
    t = ingress(build(text).ruleset(), WEB, "198.18.5.5")
    assert allowed(t) and decided_by(t) == "profile kns.default ingress rule 0"


def test_tier_default_action_pass_continues_when_nothing_matched() -> None:
    text = (
        "apiVersion: projectcalico.org/v3\nkind: Tier\nmetadata: {name: soft}\n"
        "spec: {order: 5, defaultAction: Pass}\n---\n"
        + gnp(
            "soft.only-db",
            "tier: soft\nselector: all()\ningress:\n- action: Deny\n  source: {nets: [192.0.2.0/24]}\n",
        )
    )
    rs = build(text).ruleset()
    assert allowed(ingress(rs, WEB, "198.18.5.5"))
    assert not allowed(ingress(rs, WEB, "192.0.2.5"))


def test_log_rule_logs_and_evaluation_continues() -> None:
    text = gnp(
        "log-then-allow",
        "selector: all()\ningress:\n- action: Log\n  protocol: TCP\n- action: Allow\n",
    )
    rs = build(text).ruleset()
    t = ingress(rs, WEB, "198.18.5.5")
    assert allowed(t)
    logs = [r for _, r in t.matched if "LOG" in render_rule(r)[1]]
    assert len(logs) == 1 and '--log-prefix "calico-packet: "' in render_rule(logs[0])[1]


def test_deny_drops_in_the_policy_chain() -> None:
    text = gnp(
        "deny-ssh",
        "selector: all()\ningress:\n- action: Deny\n  protocol: TCP\n  destination: {ports: [22]}\n- action: Allow\n",
    )
    rs = build(text).ruleset()
    t = ingress(rs, WEB, "198.18.5.5", port=22)
    assert t.verdict == "DROP" and decided_by(t) == "policy deny-ssh ingress rule 0"
    assert allowed(ingress(rs, WEB, "198.18.5.5", port=23))


# --- matches ------------------------------------------------------------------------------


def test_named_ports_become_ip_port_sets() -> None:
    text = gnp(
        "http",
        "selector: all()\ningress:\n- action: Allow\n  protocol: TCP\n  destination: {ports: [http]}\n",
    )
    rs = build(text).ruleset()
    port_sets = [s for s in rs.ipsets.values() if s.type == "hash:ip,port"]
    assert [sorted(s.members) for s in port_sets] == [["10.244.1.10,tcp:8080"]]
    assert allowed(ingress(rs, WEB, "198.18.5.5", port=8080))
    assert not allowed(ingress(rs, WEB, "198.18.5.5", port=80))


def test_named_port_no_endpoint_exposes_is_reported_and_not_applied() -> None:
    text = gnp(
        "ghost",
        "selector: all()\ningress:\n- action: Deny\n  protocol: TCP\n  destination: {ports: [ghost]}\n",
    )
    c = build(text)
    rs = c.ruleset()
    assert "named port tcp/ghost" in rs.problems["GlobalNetworkPolicy/ghost"]
    assert not any(name.startswith("cali-pi-ghost") for name in rs.chains)
    # An endpoint exposing the port makes it renderable.
    c.upsert_endpoint(
        Endpoint.for_pod(
            "g", "default", "calig", ["10.244.1.99"], ports=(NamedPort("ghost", "TCP", 7),)
        )
    )
    rs = c.ruleset()
    assert rs.problems == {} and "cali-pi-ghost" in rs.chains


def test_unrenderable_update_keeps_the_last_good_version() -> None:
    good = gnp(
        "p",
        "selector: all()\ningress:\n- action: Deny\n  protocol: TCP\n  destination: {ports: [80]}\n",
    )
    bad = gnp(
        "p",
        "selector: all()\ningress:\n- action: Allow\n  protocol: TCP\n  destination: {ports: [nothere]}\n",
    )
    c = build(good)
    before = c.ruleset().chains["cali-pi-p"]
    c.set_resources(load_documents(PROFILES + "---\n" + bad))
    rs = c.ruleset()
    assert "nothere" in rs.problems["GlobalNetworkPolicy/p"]
    assert rs.chains["cali-pi-p"] == before


def test_not_nets_and_nets_with_except() -> None:
    text = gnp(
        "nets",
        "selector: all()\ningress:\n- action: Allow\n  source:\n    nets: [198.18.0.0/16]\n    notNets: [198.18.1.0/24, 198.18.2.0/24]\n",
    )
    rs = build(text).ruleset()
    assert allowed(ingress(rs, WEB, "198.18.7.1"))
    assert not allowed(ingress(rs, WEB, "198.18.1.1"))
    assert not allowed(ingress(rs, WEB, "198.18.2.1"))
    assert not allowed(ingress(rs, WEB, "192.0.2.1"))


def test_single_not_net() -> None:
    text = gnp(
        "nn", "selector: all()\ningress:\n- action: Allow\n  source: {notNets: [10.0.0.0/8]}\n"
    )
    rs = build(text).ruleset()
    assert allowed(ingress(rs, WEB, "198.18.7.1")) and not allowed(ingress(rs, WEB, "10.1.1.1"))
    assert "! -s 10.0.0.0/8" in render_rule(rs.chains["cali-pi-nn"][0])[1]


@pytest.mark.parametrize(
    ("icmp", "typ", "code", "expect"),
    [
        ("icmp: {type: 8, code: 0}", 8, 0, True),
        ("icmp: {type: 8, code: 0}", 8, 1, False),
        ("icmp: {type: 8}", 8, 3, True),
        ("icmp: {type: 8}", 0, 0, False),
        ("notICMP: {type: 8}", 8, 0, False),
        ("notICMP: {type: 8}", 13, 0, True),
        ("notICMP: {type: 3, code: 1}", 3, 2, True),
    ],
)
def test_icmp_type_and_code(icmp: str, typ: int, code: int, expect: bool) -> None:
    text = gnp("icmp", f"selector: all()\ningress:\n- action: Allow\n  protocol: ICMP\n  {icmp}\n")
    rs = build(text).ruleset()
    t = ingress(rs, WEB, "198.18.5.5", proto=1, port=None, icmp_type=typ, icmp_code=code)
    assert allowed(t) is expect
    assert not allowed(ingress(rs, WEB, "198.18.5.5", proto=6)), "TCP is not ICMP"


def test_icmp_renders_type_slash_code() -> None:
    text = gnp(
        "icmp",
        "selector: all()\ningress:\n- action: Allow\n  protocol: ICMP\n  icmp: {type: 8, code: 0}\n",
    )
    line = render_rule(build(text).ruleset().chains["cali-pi-icmp"][0])[1]
    assert "-p icmp -m icmp --icmp-type 8/0" in line


def test_protocol_and_not_protocol() -> None:
    text = gnp("proto", "selector: all()\ningress:\n- action: Allow\n  notProtocol: UDP\n")
    rs = build(text).ruleset()
    assert allowed(ingress(rs, WEB, "198.18.5.5", proto=6))
    assert not allowed(ingress(rs, WEB, "198.18.5.5", proto=17))


def test_ports_ranges_not_ports_and_source_ports() -> None:
    text = gnp(
        "ports",
        "selector: all()\ningress:\n- action: Allow\n  protocol: TCP\n  source: {notPorts: ['0:1023']}\n  destination: {ports: [80, '8000:8100'], notPorts: [8050]}\n",
    )
    rs = build(text).ruleset()

    def go(sport: int, dport: int) -> bool:
        pkt = Packet(src="198.18.5.5", dst=WEB.ips[0], proto=6, sport=sport, dport=dport)
        return Simulator(rs).walk("cali-tw-caliweb", pkt).allowed

    assert go(40000, 80) and go(40000, 8099)
    assert not go(40000, 8050), "notPorts"
    assert not go(40000, 81)
    assert not go(80, 80), "source notPorts"


def test_more_than_fifteen_ports_split_into_multiport_chunks() -> None:
    ports = ", ".join(str(1000 + i) for i in range(20))
    text = gnp(
        "many",
        f"selector: all()\ningress:\n- action: Allow\n  protocol: TCP\n  destination: {{ports: [{ports}]}}\n",
    )
    rs = build(text).ruleset()
    lines = [render_rule(r)[1] for r in rs.chains["cali-pi-many"]]
    assert sum("--dports" in line for line in lines) == 2
    assert allowed(ingress(rs, WEB, "198.18.5.5", port=1019))


SELECTOR_CASES = [
    ("app == 'web'", {"web"}),
    ("app != 'web'", {"db", "api", "other"}),
    ("app in {'web', 'db'}", {"web", "db"}),
    ("app not in {'web', 'db'}", {"api", "other"}),
    ("has(tier)", {"web"}),
    ("!has(tier)", {"db", "api", "other"}),
    ("all()", {"web", "db", "api", "other"}),
    ("app starts with 'w'", {"web"}),
    ("app ends with 'b'", {"web", "db"}),
    ("app contains 'p'", {"api"}),
    ("app == 'web' && tier == 'frontend'", {"web"}),
    ("app == 'web' || app == 'db'", {"web", "db"}),
    ("!(app == 'web' || app == 'db')", {"api", "other"}),
    ("env == 'prod'", {"api"}),
]


@pytest.mark.parametrize(("selector", "members"), SELECTOR_CASES)
def test_every_selector_operator_in_a_source_selector(selector: str, members: set[str]) -> None:
    other = Endpoint.for_pod("other", "default", "caliother", ["10.244.1.40"], {"app": "other"})
    eps = (WEB, DB, PROD, other)
    text = gnp(
        "sel", f'selector: all()\ningress:\n- action: Allow\n  source: {{selector: "{selector}"}}\n'
    )
    rs = build(text, eps).ruleset()
    for ep in eps:
        t = ingress(rs, DB if ep is not DB else WEB, ep.ips[0])
        assert allowed(t) is (ep.name in members), (selector, ep.name)


def test_namespaced_policy_rule_selector_stays_in_its_namespace() -> None:
    api2 = Endpoint.for_pod("api2", "default", "caliapi2", ["10.244.1.50"], {"app": "api"})
    text = np(
        "from-api",
        "default",
        "selector: app == 'web'\ningress:\n- action: Allow\n  source: {selector: app == 'api'}\n",
    )
    rs = build(text, (WEB, DB, PROD, api2)).ruleset()
    assert allowed(ingress(rs, WEB, api2.ips[0]))
    assert not allowed(ingress(rs, WEB, PROD.ips[0])), "api in prod is another namespace"


def test_rule_namespace_selector_and_global() -> None:
    text = np(
        "from-prod",
        "default",
        "selector: all()\ningress:\n- action: Allow\n  source: {namespaceSelector: env == 'prod'}\n",
    )
    rs = build(text).ruleset()
    assert allowed(ingress(rs, WEB, PROD.ips[0]))
    assert not allowed(ingress(rs, WEB, DB.ips[0]))
    gset = (
        "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkSet\n"
        "metadata: {name: partners, labels: {kind: partner}}\nspec: {nets: [192.0.2.0/24]}\n---\n"
    )
    text = gset + gnp(
        "global",
        "selector: all()\ningress:\n- action: Allow\n  source: {namespaceSelector: global(), selector: kind == 'partner'}\n",
    )
    rs = build(text).ruleset()
    assert allowed(ingress(rs, WEB, "192.0.2.7"))
    assert not allowed(ingress(rs, WEB, PROD.ips[0]))


def test_not_selector_and_network_sets() -> None:
    text = (
        "apiVersion: projectcalico.org/v3\nkind: NetworkSet\n"
        "metadata: {name: office, namespace: default, labels: {src: office}}\n"
        "spec: {nets: [198.51.100.0/24]}\n---\n"
        + np(
            "office",
            "default",
            "selector: all()\ningress:\n- action: Allow\n  source: {selector: has(src)}\n- action: Allow\n  source: {notSelector: app == 'web'}\n",
        )
    )
    rs = build(text).ruleset()
    assert allowed(ingress(rs, WEB, "198.51.100.4")), "network set member"
    assert allowed(ingress(rs, WEB, DB.ips[0])), "notSelector: not web"
    assert not allowed(ingress(rs, DB, WEB.ips[0])), "web is excluded"


def test_service_account_matches() -> None:
    text = gnp(
        "sa",
        "selector: app == 'db'\ningress:\n- action: Allow\n  source: {serviceAccounts: {names: [web-sa]}}\n",
    )
    rs = build(text).ruleset()
    assert allowed(ingress(rs, DB, WEB.ips[0]))
    assert not allowed(ingress(rs, DB, PROD.ips[0]))


def test_policy_namespace_and_service_account_selectors() -> None:
    text = gnp(
        "prod-only",
        "namespaceSelector: env == 'prod'\nselector: all()\ningress: [{action: Deny}]\n",
    )
    rs = build(text).ruleset()
    assert not allowed(ingress(rs, PROD, "198.18.5.5")) and allowed(ingress(rs, WEB, "198.18.5.5"))
    sa_web = Endpoint.for_pod(
        "w2",
        "default",
        "caliw2",
        ["10.244.1.60"],
        service_account="web-sa",
        service_account_labels={"team": "a"},
    )
    text = np("sa", "default", "serviceAccountSelector: team == 'a'\ningress: [{action: Deny}]\n")
    rs = build(text, (WEB, sa_web)).ruleset()
    assert not allowed(ingress(rs, sa_web, "198.18.5.5")) and allowed(
        ingress(rs, WEB, "198.18.5.5")
    )


def test_ip_version_rules_only_in_their_family() -> None:
    text = gnp(
        "v6only",
        "selector: all()\ningress:\n- action: Deny\n  ipVersion: 6\n- action: Allow\n  source: {nets: ['fd00::/8']}\n",
    )
    rs4 = build(text).ruleset()
    assert rs4.chains["cali-pi-v6only"] == (), "v6 rules render nothing in IPv4"
    web6 = Endpoint.for_pod("web6", "default", "caliweb6", ["fd00:10:244::10"])
    rs6 = build(text, (web6,), version=6).ruleset()
    t = Simulator(rs6).walk("cali-tw-caliweb6", Packet(src="fd00::1", dst="fd00:10:244::10"))
    assert t.verdict == "DROP"


def test_egress_policy_uses_the_from_workload_chain() -> None:
    text = np(
        "egress",
        "default",
        "selector: app == 'web'\ntypes: [Egress]\negress:\n- action: Allow\n  protocol: UDP\n  destination: {ports: [53]}\n",
    )
    rs = build(text).ruleset()
    assert allowed(egress(rs, WEB, "198.18.0.53", proto=17, port=53))
    assert not allowed(egress(rs, WEB, "198.18.0.53", proto=6, port=443))
    assert allowed(ingress(rs, WEB, "198.18.0.53")), "ingress untouched: types is Egress"


def test_profile_labels_are_inherited_and_a_missing_profile_denies() -> None:
    orphan = Endpoint.for_pod("o", "nowhere", "calio", ["10.244.1.70"])
    rs = build("", (WEB, orphan)).ruleset()
    t = ingress(rs, orphan, "198.18.5.5")
    assert not allowed(t) and "no profile" in decided_by(t)


# --- host endpoints ------------------------------------------------------------------------

HEP = Endpoint(name="h-eth0", iface="eth0", ips=("198.18.0.1",), host=True, labels={"role": "node"})


def test_host_endpoint_gets_failsafes_and_policy() -> None:
    text = gnp("deny-all", "selector: all()\ntypes: [Ingress, Egress]\n")
    rs = build(text, (WEB, HEP)).ruleset()
    assert "cali-fh-eth0" in rs.chains and "cali-th-eth0" in rs.chains
    t = Simulator(rs).walk(
        "cali-INPUT", Packet(src="198.18.0.9", dst="198.18.0.1", dport=22, iface_in="eth0")
    )
    assert t.verdict == "ACCEPT" and decided_by(t) == "failsafe inbound"
    t = Simulator(rs).walk(
        "cali-INPUT", Packet(src="198.18.0.9", dst="198.18.0.1", dport=80, iface_in="eth0")
    )
    assert t.verdict == "DROP"
    t = Simulator(rs).walk(
        "cali-INPUT", Packet(src="198.18.0.9", dst="198.18.0.1", dport=80, iface_in="lo")
    )
    assert t.verdict == "RETURN", "other interfaces are not ours to judge"


def test_failsafes_are_configurable() -> None:
    from policy.layout import Failsafes

    c = PolicyCompiler(4, failsafes=Failsafes(inbound=(("tcp", 2022),), outbound=()))
    c.set_resources(load_documents(gnp("deny-all", "selector: all()\ntypes: [Ingress]\n")))
    c.set_endpoints([HEP])
    rs = c.ruleset()
    sim = Simulator(rs)
    assert (
        sim.walk(
            "cali-INPUT", Packet("198.18.0.9", "198.18.0.1", dport=2022, iface_in="eth0")
        ).verdict
        == "ACCEPT"
    )
    assert (
        sim.walk(
            "cali-INPUT", Packet("198.18.0.9", "198.18.0.1", dport=22, iface_in="eth0")
        ).verdict
        == "DROP"
    )


def test_apply_on_forward_pre_dnat_and_do_not_track() -> None:
    text = (
        gnp(
            "fwd",
            "selector: role == 'node'\napplyOnForward: true\ningress:\n- action: Deny\n  source: {nets: [192.0.2.0/24]}\n",
        )
        + "---\n"
        + gnp(
            "dnat",
            "selector: role == 'node'\napplyOnForward: true\npreDNAT: true\ningress:\n- action: Deny\n  protocol: TCP\n  destination: {ports: [8443]}\n",
        )
        + "---\n"
        + gnp(
            "dnt",
            "selector: role == 'node'\napplyOnForward: true\ndoNotTrack: true\ningress:\n- action: Allow\n  protocol: UDP\n  destination: {ports: [4789]}\n",
        )
    )
    rs = build(text, (WEB, HEP)).ruleset()
    assert rs.problems == {}
    assert "cali-fhfw-eth0" in rs.chains
    sim = Simulator(rs)
    t = sim.walk(
        "cali-FORWARD",
        Packet("192.0.2.1", WEB.ips[0], dport=80, iface_in="eth0", iface_out="caliweb"),
    )
    assert t.verdict == "DROP"
    # preDNAT lives in mangle: it denies 8443 before DNAT and lets the rest go on.
    mangle = Simulator(RuleSet(4, chains=rs.tables["mangle"], ipsets=rs.ipsets))
    t = mangle.walk(
        "cali-PREROUTING", Packet("198.18.0.9", "198.18.0.1", dport=8443, iface_in="eth0")
    )
    assert t.verdict == "DROP" and decided_by(t) == "policy dnat ingress rule 0"
    t = mangle.walk(
        "cali-PREROUTING", Packet("198.18.0.9", "198.18.0.1", dport=80, iface_in="eth0")
    )
    assert t.verdict == "RETURN"
    assert "cali-pi-dnat" not in rs.chains and "cali-pi-dnat" in rs.tables["mangle"]
    # doNotTrack lives in raw: an allowed packet is marked untracked and skips conntrack.
    raw = Simulator(RuleSet(4, chains=rs.tables["raw"], ipsets=rs.ipsets))
    t = raw.walk(
        "cali-PREROUTING", Packet("198.18.0.9", "198.18.0.1", proto=17, dport=4789, iface_in="eth0")
    )
    assert t.verdict == "ACCEPT" and t.mark & 0x40000
    assert any(isinstance(r.action, NoTrack) for _, r in t.matched)
    t = raw.walk(
        "cali-PREROUTING", Packet("198.18.0.9", "198.18.0.1", proto=17, dport=53, iface_in="eth0")
    )
    assert t.verdict == "RETURN" and not t.mark & 0x40000
    # The filter table then accepts such packets without normal policy.
    assert rs.chains["cali-INPUT"][0].origin.resource == "untracked"


# --- Kubernetes NetworkPolicy ----------------------------------------------------------------

K8S = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: default}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from:
    - podSelector: {matchExpressions: [{key: app, operator: In, values: [db]}]}
    ports:
    - {protocol: TCP, port: http}
    - {protocol: TCP, port: 9000, endPort: 9005}
"""


def test_k8s_policy_default_deny_once_selected_and_exact_peers() -> None:
    rs = build(K8S).ruleset()
    assert allowed(ingress(rs, WEB, DB.ips[0], port=8080)), "named port http"
    assert allowed(ingress(rs, WEB, DB.ips[0], port=9005)), "endPort"
    assert not allowed(ingress(rs, WEB, DB.ips[0], port=9006))
    assert not allowed(ingress(rs, WEB, PROD.ips[0], port=8080)), "not a selected peer"
    t = ingress(rs, WEB, "198.18.5.5", port=8080)
    assert not allowed(t) and "tier default" in decided_by(t)
    assert allowed(egress(rs, WEB, "198.18.5.5")), "no Egress type: egress untouched"
    assert allowed(ingress(rs, DB, "198.18.5.5")), "unselected pods keep the default"
    long_name = chain_name("pi", "default/knp.default.web")
    assert long_name in rs.chains and long_name.startswith("cali-pi-_") and len(long_name) == 28


def test_k8s_empty_ingress_denies_everything_and_egress_only_policy() -> None:
    text = (
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n"
        "metadata: {name: deny, namespace: default}\nspec:\n  podSelector: {}\n"
        "  policyTypes: [Ingress, Egress]\n  egress:\n  - to: [{ipBlock: {cidr: 198.18.0.0/16, except: [198.18.9.0/24]}}]\n"
    )
    rs = build(text).ruleset()
    assert not allowed(ingress(rs, WEB, DB.ips[0]))
    assert allowed(egress(rs, WEB, "198.18.1.1"))
    assert not allowed(egress(rs, WEB, "198.18.9.1"))
    assert allowed(ingress(rs, PROD, WEB.ips[0])), "other namespace"


# --- incremental and deterministic --------------------------------------------------------


def test_label_change_changes_set_members_only() -> None:
    text = gnp(
        "from-db",
        "selector: app == 'web'\ningress:\n- action: Allow\n  source: {selector: app == 'db'}\n",
    )
    c = build(text)
    before = c.ruleset()
    moved = Endpoint.for_pod("api", "prod", "caliapi", ["10.244.2.30"], {"app": "db"})
    c.upsert_endpoint(moved)
    after = c.ruleset()
    assert after.chains == before.chains
    changed = [n for n in after.ipsets if after.ipsets[n] != before.ipsets.get(n)]
    assert len(changed) == 1 and "10.244.2.30" in after.ipsets[changed[0]].members


def test_policy_change_rewrites_only_its_chain() -> None:
    a = gnp("a", "selector: app == 'web'\ningress: [{action: Allow, protocol: TCP}]\n")
    b = gnp("b", "selector: app == 'db'\ningress: [{action: Allow, protocol: TCP}]\n")
    b2 = gnp("b", "selector: app == 'db'\ningress: [{action: Allow, protocol: UDP}]\n")
    c = build(a + "---\n" + b)
    before = c.ruleset()
    c.set_resources(load_documents(PROFILES + "---\n" + a + "---\n" + b2))
    after = c.ruleset()
    changed = {n for n in after.chains if after.chains[n] != before.chains.get(n)}
    assert changed == {"cali-pi-b"}


def test_same_input_in_any_order_gives_equal_rule_sets() -> None:
    text = PROFILES + "---\n" + K8S
    docs = load_documents(text)
    one = PolicyCompiler()
    one.set_resources(docs)
    one.set_endpoints([WEB, DB, PROD])
    two = PolicyCompiler()
    two.set_endpoints([PROD, DB, WEB])
    two.set_resources(list(reversed(docs)))
    r1, r2 = one.ruleset(), two.ruleset()
    assert r1.chains == r2.chains and r1.ipsets == r2.ipsets


def test_deleting_a_policy_removes_its_chain_and_sets() -> None:
    text = gnp(
        "from-db",
        "selector: app == 'web'\ningress:\n- action: Allow\n  source: {selector: app == 'db'}\n",
    )
    c = build(text)
    assert c.ruleset().ipsets
    c.delete("GlobalNetworkPolicy/from-db")
    rs = c.ruleset()
    assert not rs.ipsets and "cali-pi-from-db" not in rs.chains


def test_namespace_selector_global_means_host_endpoints_only() -> None:
    text = gnp("hosts", "namespaceSelector: global()\nselector: all()\ningress: [{action: Deny}]\n")
    rs = build(text, (WEB, HEP)).ruleset()
    assert allowed(ingress(rs, WEB, "198.18.5.5")), "a namespaced pod is not selected"
    t = Simulator(rs).walk("cali-fh-eth0", Packet("198.18.0.9", "198.18.0.1", dport=80))
    assert t.verdict == "DROP" and decided_by(t) == "policy hosts ingress rule 0"


def test_endpoint_without_interface_fills_sets_but_gets_no_chains() -> None:
    pending = Endpoint.for_pod("pending", "default", "", ["10.244.1.77"], {"app": "db"})
    text = gnp(
        "from-db",
        "selector: app == 'web'\ningress:\n- action: Allow\n  source: {selector: app == 'db'}\n",
    )
    rs = build(text, (WEB, DB, pending)).ruleset()
    assert not any(name.endswith("-") for name in rs.chains)
    assert allowed(ingress(rs, WEB, "10.244.1.77"))


def test_everything_in_a_set_is_stored_as_two_halves() -> None:
    text = (
        "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkSet\n"
        "metadata: {name: internet, labels: {net: internet}}\nspec: {nets: [0.0.0.0/0, '::/0']}\n---\n"
        + gnp(
            "deny-internet",
            "selector: all()\ningress:\n- action: Deny\n  source: {selector: net == 'internet'}\n- action: Deny\n  source: {nets: [0.0.0.0/0, 10.0.0.0/8]}\n",
        )
    )
    rs = build(text).ruleset()
    members = {m for s in rs.ipsets.values() for m in s.members}
    assert {"0.0.0.0/1", "128.0.0.0/1", "10.0.0.0/8"} <= members
    assert not any(m.endswith("/0") for m in members) and not any(":" in m for m in members)
    assert not allowed(ingress(rs, WEB, "203.0.113.9"))
