"""The issue-3 keys of bgpd.toml: reflector, multipath, GR, per-neighbor RIB options, [[filter]]
tables and [fib]; every key parsed, and one-line errors naming file, key and reason."""

from __future__ import annotations

import pytest

from bgpd.config import ConfigError, FibSection, parse_config
from bgpd.reflector.filters import Rule

RR = """\
[global]
asn = 64512
router-id = "198.18.0.1"
cluster-id = "244.0.0.1"
multipath = 4
always-compare-med = true
client-to-client-reflection = false
graceful-restart-time = 90
select-defer-time = 20

[[filter]]
name = "pods-only"
[[filter.rule]]
cidr = "10.244.0.0/16"
match-operator = "NotIn"
action = "Reject"
[[filter.rule]]
cidr = "10.244.0.0/16"
prefix-length-min = 26
prefix-length-max = 32
community = "65000:7"
as-path-prefix = [65001]
peer-type = "ibgp"
action = "Accept"
add-community = ["65000:1", "no-export"]
prepend-as-path = [64512, 64512]
set-local-pref = 200

[[neighbor]]
address = "198.18.0.2"
remote-asn = 64512
route-reflector-client = true
next-hop = "keep"
max-prefix = 100
max-prefix-action = "warn"
max-prefix-restart = 5
graceful-restart = true
import-filter = "pods-only"
export-filter = "pods-only"

[[neighbor]]
address = "198.18.0.3"
remote-asn = 65001
remove-private-as = true

[fib]
table = 100
protocol = 201
persist = false
scan-time = 10
"""


def test_every_rib_key_parses() -> None:
    cfg = parse_config(RR, "rr.toml")
    gl = cfg.global_
    assert (gl.cluster_id, gl.multipath, gl.always_compare_med) == ("244.0.0.1", 4, True)
    assert (gl.client_to_client, gl.graceful_restart_time, gl.select_defer_time) == (
        False,
        90,
        20,
    )
    (flt,) = cfg.filters
    assert flt.name == "pods-only"
    assert flt.rules[0] == Rule("Reject", cidr=(1, (0x0AF40000, 16)), match_operator="NotIn")
    r = flt.rules[1]
    assert (r.match_operator, r.prefix_length_min, r.prefix_length_max) == ("In", 26, 32)
    assert r.community == (65000 << 16) | 7 and r.as_path_prefix == (65001,)
    assert r.add_community == ((65000 << 16) | 1, 0xFFFFFF01)
    assert (r.prepend_as_path, r.set_local_pref, r.peer_type) == ((64512, 64512), 200, "ibgp")
    a, b = cfg.neighbors
    assert a.route_reflector_client and a.next_hop == "keep" and a.graceful_restart
    assert (a.max_prefix, a.max_prefix_action, a.max_prefix_restart) == (100, "warn", 5)
    assert a.import_filter is flt and a.export_filter is flt
    assert b.remove_private_as and b.next_hop == "auto" and b.max_prefix is None
    # [fib] enabled defaults to false on a reflector; everything else as written.
    assert cfg.fib == FibSection(
        enabled=False, table=100, protocol=201, persist=False, scan_time=10
    )


def test_fib_defaults_on_a_plain_speaker() -> None:
    cfg = parse_config('[global]\nasn = 1\nrouter-id = "198.18.0.1"\n')
    assert cfg.fib == FibSection(enabled=True, table=254, protocol=80, persist=True, scan_time=30)
    assert cfg.global_.cluster_id is None and cfg.global_.multipath == 0
    rr = parse_config('[global]\nasn = 1\nrouter-id = "198.18.0.1"\ncluster-id = "1.1.1.1"\n'
                      "[fib]\nenabled = true\n")  # fmt: skip
    assert rr.fib.enabled


BAD = [
    ('cluster-id = "244.0.0.1"', 'cluster-id = "fd00::1"', "global.cluster-id", "IPv4"),
    ("multipath = 4", "multipath = -1", "global.multipath", "between 0 and 256"),
    ("graceful-restart-time = 90", "graceful-restart-time = 5000", "global.graceful-restart-time",
     "between 1 and 4095"),
    ('next-hop = "keep"', 'next-hop = "next-hop-self"', "neighbor[0].next-hop", "auto, self, keep"),
    ("max-prefix = 100", "max-prefix = 0", "neighbor[0].max-prefix", "between 1"),
    ('max-prefix-action = "warn"', 'max-prefix-action = "drop"', "neighbor[0].max-prefix-action",
     "teardown, warn"),
    ('import-filter = "pods-only"', 'import-filter = "nope"', "neighbor[0].import-filter",
     "no [[filter]] named 'nope'"),
    ("graceful-restart = true", "graceful-restart = 1", "neighbor[0].graceful-restart", "boolean"),
    ('action = "Reject"', 'action = "Drop"', "filter[0].rule[0].action", "Accept, Reject"),
    ('match-operator = "NotIn"', 'match-operator = "Within"', "filter[0].rule[0].match-operator",
     "Equal, NotEqual, In, NotIn"),
    ('cidr = "10.244.0.0/16"\nmatch', 'cidr = "10.244.0.1/16"\nmatch', "filter[0].rule[0].cidr",
     "not a network"),
    ("prefix-length-min = 26", "prefix-length-min = 33", "filter[0].rule[1].prefix-length-min",
     "above prefix-length-max"),
    ('community = "65000:7"', 'community = "65000:70000"', "filter[0].rule[1].community",
     "not a community"),
    ('peer-type = "ibgp"', 'peer-type = "internal"', "filter[0].rule[1].peer-type", "ebgp, ibgp"),
    ("set-local-pref = 200", "set-local-pref = true", "filter[0].rule[1].set-local-pref",
     "boolean"),
    ('action = "Accept"', 'action = "Accept"\nweight = 3', "filter[0].rule[1].weight",
     "unknown key"),
    ("protocol = 201", "protocol = 256", "fib.protocol", "between 1 and 255"),
    ("scan-time = 10", "scan-tme = 10", "fib.scan-tme", "unknown key"),
    ('remote-asn = 64512\nroute', 'remote-asn = 64513\nroute', "neighbor[0].route-reflector-client",
     "iBGP"),
    ('cluster-id = "244.0.0.1"\n', "", "neighbor[0].route-reflector-client", "cluster-id"),
]  # fmt: skip


@pytest.mark.parametrize("old,new,key,reason", BAD, ids=[b[2] + ":" + b[1][:20] for b in BAD])
def test_bad_rib_keys_name_file_key_and_reason(old, new, key, reason) -> None:
    assert old in RR
    with pytest.raises(ConfigError) as err:
        parse_config(RR.replace(old, new, 1), "rr.toml")
    msg = str(err.value)
    assert msg.startswith(f"rr.toml: {key}: "), msg
    assert reason in msg and "\n" not in msg


def test_filter_defined_twice_is_an_error() -> None:
    text = RR + '\n[[filter]]\nname = "pods-only"\n'
    with pytest.raises(ConfigError, match=r"filter\[1\]\.name: 'pods-only' is defined twice"):
        parse_config(text, "rr.toml")
