"""MTU for workloads and tunnels: the host uplink's MTU minus the encapsulation overhead, and
the file through which the agent tells the CNI plugin the value (Calico's /var/lib/calico/mtu)."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path

from agent.netlink import collect, rtnl

# Outer IPv4 header for IPIP; outer IPv4 + UDP + VXLAN + inner Ethernet for VXLAN. IPv6
# underlays add 20 more to each (40-byte outer header).
IPIP_OVERHEAD = 20
VXLAN_OVERHEAD = 50
VXLAN_V6_OVERHEAD = 70
OVERHEAD = {"none": 0, "ipip": IPIP_OVERHEAD, "vxlan": VXLAN_OVERHEAD, "vxlan6": VXLAN_V6_OVERHEAD}

DEFAULT_MTU = 1500
MTU_FILE = Path("/var/lib/routemesh/mtu")
# Interfaces that are ours or virtual never decide the uplink MTU (Calico's default exclude).
DEFAULT_EXCLUDE = re.compile(
    r"^(lo|cali.*|tunl\d*|vxlan[.-].*|wireguard\..*|docker\d*|cni\d*|veth.*|kube-ipvs\d*|nodelocaldns)$"
)


def workload_mtu(host_mtu: int, encaps: Iterable[str] = ()) -> int:
    """The MTU a workload veth may use when its traffic may take any of ``encaps``."""
    unknown = [e for e in encaps if e not in OVERHEAD]
    if unknown:
        raise ValueError(f"unknown encapsulation {unknown[0]!r} (known: {sorted(OVERHEAD)})")
    overhead = max((OVERHEAD[e] for e in encaps), default=0)
    mtu = host_mtu - overhead
    if mtu < 68:
        raise ValueError(f"host MTU {host_mtu} leaves {mtu} after {overhead} bytes of overhead")
    return mtu


def pick_host_mtu(links: Iterable[tuple[str, int, bool]], exclude: re.Pattern[str]) -> int | None:
    """The smallest MTU among up, non-excluded links given as (name, mtu, up), or None."""
    mtus = [mtu for name, mtu, up in links if up and not exclude.match(name)]
    return min(mtus) if mtus else None


async def detect_host_mtu(
    *, netns: str | None = None, exclude: re.Pattern[str] = DEFAULT_EXCLUDE
) -> int:
    """The host uplink MTU as Calico detects it; DEFAULT_MTU when no link qualifies."""
    async with rtnl(netns) as ipr:
        links = [
            (msg.get("IFLA_IFNAME"), msg.get("IFLA_MTU"), bool(msg["flags"] & 1))
            for msg in await collect(ipr.link("dump"))
        ]
    return pick_host_mtu(links, exclude) or DEFAULT_MTU


def write_mtu_file(mtu: int, path: Path = MTU_FILE) -> None:
    """Publish the workload MTU for the CNI plugin; atomic, so a reader never sees half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(f"{mtu}\n")
    os.replace(tmp, path)


def read_mtu_file(path: Path = MTU_FILE) -> int | None:
    """The MTU the agent published, or None if there is none (or it is not a number)."""
    try:
        value = int(path.read_text().strip())
    except (OSError, ValueError):
        return None
    return value if 68 <= value <= 65535 else None


async def publish_workload_mtu(
    encaps: Iterable[str], *, path: Path = MTU_FILE, netns: str | None = None
) -> int:
    """Detect the uplink MTU, subtract the overhead of the encapsulations in use, and write
    the result where the CNI plugin looks (``"mtu": 0`` in its config). Returns the value."""
    mtu = workload_mtu(await detect_host_mtu(netns=netns), list(encaps))
    if read_mtu_file(path) != mtu:
        write_mtu_file(mtu, path)
    return mtu
