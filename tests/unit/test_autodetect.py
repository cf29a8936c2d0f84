"""Node address autodetection with Calico's methods."""

from __future__ import annotations

import ipaddress
import sys

import pytest

from agent.autodetect import AutodetectError, HostAddress, autodetect
from tests.lab.netns import Lab
from tests.lab.require import require_netns

ADDRS = [
    HostAddress("lo", ipaddress.ip_interface("127.0.0.1/8")),
    HostAddress("docker0", ipaddress.ip_interface("172.17.0.1/16")),
    HostAddress("cali1234567890a", ipaddress.ip_interface("10.244.1.1/32")),
    HostAddress("eth0", ipaddress.ip_interface("198.18.0.2/24")),
    HostAddress("eth0", ipaddress.ip_interface("fd00::2/64")),
    HostAddress("eth1", ipaddress.ip_interface("198.19.5.9/24")),
]


@pytest.mark.parametrize(
    ("method", "version", "expected"),
    [
        ("first-found", 4, "198.18.0.2/24"),
        ("", 4, "198.18.0.2/24"),
        ("first-found", 6, "fd00::2/64"),
        ("interface=eth1", 4, "198.19.5.9/24"),
        ("interface=nope,eth.*", 4, "198.18.0.2/24"),
        ("skip-interface=eth0", 4, "198.19.5.9/24"),
        ("cidr=198.19.0.0/16", 4, "198.19.5.9/24"),
        ("cidr=10.0.0.0/8,198.18.0.0/24", 4, "198.18.0.2/24"),
    ],
)
def test_methods(method: str, version: int, expected: str) -> None:
    assert str(autodetect(method, version, ADDRS)) == expected


@pytest.mark.parametrize(
    ("method", "message"),
    [
        ("bogus", "unknown method 'bogus'"),
        ("interface=", "interface: needs a value"),
        ("interface=(", "bad regular expression"),
        ("cidr=10.0.0.0/33", "cidr:"),
        ("interface=wlan.*", "no IPv4 address found"),
    ],
)
def test_errors_name_the_method(method: str, message: str) -> None:
    with pytest.raises(AutodetectError, match=message.replace("(", r"\(")):
        autodetect(method, 4, ADDRS)


def test_can_reach_and_first_found_in_a_real_namespace(lab: Lab) -> None:
    require_netns()
    a, b = lab.netns(), lab.netns()
    lab.veth(a, b, "198.18.7.1/24", "198.18.7.2/24")
    code = (
        "from agent.autodetect import autodetect;"
        "print(autodetect('can-reach=198.18.7.2'), autodetect('first-found'))"
    )
    out = a.run([sys.executable, "-c", code]).stdout
    assert out.split() == ["198.18.7.1/24", "198.18.7.1/24"]
