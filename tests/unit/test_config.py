"""bgpd.config.parse_config: what a valid bgpd.toml yields, and the one-line error of each bad one."""

from __future__ import annotations

import pytest

from bgpd.config import ConfigError, parse_config
from bgpd.speaker.types import IPV4_UNICAST, IPV6_UNICAST

GOOD = """\
[global]
asn = 64512
router-id = "198.18.0.1"
listen-address = "198.18.0.1"
listen-port = 1790
control-socket = "/tmp/rm-test.sock"
hold-time = 9
connect-retry = 1
connect-retry-max = 7

[[neighbor]]
address = "198.18.0.2"
remote-asn = 64513

[[neighbor]]
address = "fd00::2"
remote-asn = 64514
families = ["ipv4-unicast", "ipv6-unicast"]
passive = true
password = "secret"
ttl-security = 1
hold-time = 3
source-address = "fd00::1"
add-path = "both"
port = 1791

[[originate]]
prefix = "10.244.1.0/24"

[[originate]]
prefix = "fd00:10:244::/64"
"""

# (name, text replaced in GOOD -> replacement, key the error must name, words of the reason)
BAD: list[tuple[str, str, str, str, str]] = [
    ("unknown-global-key", "hold-time = 9", "hold-tme = 9", "global.hold-tme", "unknown key"),
    ("unknown-neighbor-key", "port = 1791", "prot = 1791", "neighbor[1].prot", "unknown key"),
    ("missing-asn", "asn = 64512\n", "", "global.asn", "is required"),
    ("bad-router-id", '"198.18.0.1"\nlisten', '"198.18.0"\nlisten', "global.router-id", "IPv4"),
    ("ipv6-router-id", '"198.18.0.1"\nlisten', '"fd00::1"\nlisten', "global.router-id", "IPv4"),
    ("prefix-host-bits", "10.244.1.0/24", "10.244.1.1/24", "originate[0].prefix", "not a network"),
    ("prefix-length-33", "10.244.1.0/24", "10.244.1.0/33", "originate[0].prefix", "not a network"),
    ("global-hold-time-2", "hold-time = 9", "hold-time = 2", "global.hold-time", "at least 3"),
    (
        "neighbor-hold-time-1",
        "hold-time = 3",
        "hold-time = 1",
        "neighbor[1].hold-time",
        "at least 3",
    ),
    ("asn-zero", "asn = 64512", "asn = 0", "global.asn", "between 1 and 4294967295"),
    (
        "retry-max-below-retry",
        "connect-retry-max = 7",
        "connect-retry-max = 0.5",
        "global.connect-retry-max",
        "below connect-retry",
    ),
    ("asn-string", "asn = 64512", 'asn = "64512"', "global.asn", "must be an integer"),
    ("passive-int", "passive = true", "passive = 1", "neighbor[1].passive", "boolean"),
    (
        "bad-family",
        '"ipv6-unicast"]',
        '"ipv6-multicast"]',
        "neighbor[1].families",
        "unknown family",
    ),
    ("bad-add-path", '"both"', '"all"', "neighbor[1].add-path", "send, receive, both"),
    ("bad-address", '"198.18.0.2"', '"198.18.0.256"', "neighbor[0].address", "not an IP address"),
    (
        "ttl-security-255",
        "ttl-security = 1",
        "ttl-security = 255",
        "neighbor[1].ttl-security",
        "between 1 and 254",
    ),
    (
        "duplicate-neighbor",
        '"fd00::2"',
        '"198.18.0.2"',
        "neighbor[1].address",
        "listed twice",
    ),
    ("invalid-toml", "asn = 64512", "asn = = 64512", "", "not valid TOML"),
]


def test_good_config_parses_every_key() -> None:
    cfg = parse_config(GOOD, "bgpd.toml")
    gl = cfg.global_
    assert (gl.asn, gl.router_id, gl.listen_addresses, gl.listen_port) == (
        64512,
        "198.18.0.1",
        ("198.18.0.1",),
        1790,
    )
    assert (gl.control_socket, gl.hold_time, gl.connect_retry) == ("/tmp/rm-test.sock", 9, 1.0)
    assert gl.connect_retry_max == 7.0
    a, b = cfg.neighbors
    assert (a.address, a.remote_asn, a.families, a.passive, a.port) == (
        "198.18.0.2",
        64513,
        frozenset({IPV4_UNICAST}),
        False,
        179,
    )
    assert b.families == frozenset({IPV4_UNICAST, IPV6_UNICAST})
    assert (b.passive, b.password, b.ttl_security, b.hold_time) == (True, "secret", 1, 3)
    assert (b.source_address, b.add_path, b.port) == ("fd00::1", "both", 1791)
    assert [o.text for o in cfg.originate] == ["10.244.1.0/24", "fd00:10:244::/64"]
    assert [o.family for o in cfg.originate] == [IPV4_UNICAST, IPV6_UNICAST]


def test_defaults_and_address_family_default() -> None:
    cfg = parse_config(
        '[global]\nasn = 1\nrouter-id = "198.18.0.1"\n[[neighbor]]\n'
        'address = "fd00::2"\nremote-asn = 2\n'
    )
    assert cfg.global_.hold_time == 90 and cfg.global_.listen_port == 179
    (nb,) = cfg.neighbors
    # A neighbor reached over IPv6 speaks IPv6 unicast unless told otherwise.
    assert nb.families == frozenset({IPV6_UNICAST})
    assert nb.hold_time is None and not nb.passive


def test_password_never_in_repr() -> None:
    assert "secret" not in repr(parse_config(GOOD))


@pytest.mark.parametrize(("name", "old", "new", "key", "reason"), BAD, ids=[b[0] for b in BAD])
def test_bad_config_names_file_key_and_reason(
    name: str, old: str, new: str, key: str, reason: str
) -> None:
    assert old in GOOD, f"{name}: the template no longer contains {old!r}"
    text = GOOD.replace(old, new, 1)
    with pytest.raises(ConfigError) as info:
        parse_config(text, "/etc/routemesh/bgpd.toml")
    msg = str(info.value)
    assert "\n" not in msg, msg
    assert msg.startswith("/etc/routemesh/bgpd.toml: "), msg
    if key:
        assert f": {key}: " in msg, msg
    assert reason in msg, msg
