"""MTU arithmetic for workloads and tunnels, uplink selection, the MTU file, VTEP MACs."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.mtu import DEFAULT_EXCLUDE, pick_host_mtu, read_mtu_file, workload_mtu, write_mtu_file
from agent.tunnels import tunnel_mtu, vtep_mac


def test_overheads_match_calico() -> None:
    assert tunnel_mtu(1500, "ipip") == 1480
    assert tunnel_mtu(1500, "vxlan") == 1450
    assert tunnel_mtu(9000, "vxlan", ipv6_underlay=True) == 8930
    with pytest.raises(ValueError, match="gre"):
        tunnel_mtu(1500, "gre")


def test_workload_mtu_takes_the_largest_overhead_in_use() -> None:
    assert workload_mtu(1500) == 1500
    assert workload_mtu(1500, ["ipip"]) == 1480
    assert workload_mtu(1500, ["ipip", "vxlan"]) == 1450
    with pytest.raises(ValueError, match="wireguard"):
        workload_mtu(1500, ["wireguard"])
    with pytest.raises(ValueError, match="leaves"):
        workload_mtu(100, ["vxlan"])


def test_host_mtu_ignores_our_own_and_down_links() -> None:
    links = [
        ("lo", 65536, True),
        ("eth0", 9000, True),
        ("eth1", 1500, False),
        ("calice0906292e2", 1400, True),
        ("vxlan.calico", 1450, True),
        ("tunl0", 1480, True),
        ("bond0", 8950, True),
    ]
    assert pick_host_mtu(links, DEFAULT_EXCLUDE) == 8950
    assert pick_host_mtu([("lo", 65536, True)], DEFAULT_EXCLUDE) is None


def test_mtu_file_round_trip_and_garbage(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "mtu"
    assert read_mtu_file(path) is None
    write_mtu_file(1440, path)
    assert read_mtu_file(path) == 1440
    path.write_text("12")
    assert read_mtu_file(path) is None


def test_vtep_mac_is_stable_local_unicast() -> None:
    mac = vtep_mac("node-a")
    first = int(mac.split(":")[0], 16)
    assert first & 0x02 and not first & 0x01
    assert mac == vtep_mac("node-a") != vtep_mac("node-b")
