"""The host's tunnel devices: VXLAN `vxlan.calico` (VNI 4096, UDP 4789) with its VTEP address
and one FDB + one neighbour entry per remote node, and IPIP `tunl0` where the kernel has it.

Reconcile, never flush: the FDB and neighbour entries we own are the permanent ones with a
remote on our device; desired ones missing are added, stale ones removed, and every other
entry (learned, on other devices) is left alone. Without IPIP in the kernel we say so once in
the log and keep reporting a status condition, so the node can fall back instead of failing.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import ipaddress
import json
import logging
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from pyroute2 import AsyncIPRoute
from pyroute2.netlink.exceptions import NetlinkError

from agent.mtu import IPIP_OVERHEAD, VXLAN_OVERHEAD, VXLAN_V6_OVERHEAD
from agent.netlink import collect, link_by_name, link_kind, rtnl
from bgpd.datastore.base import CompactedError, Datastore, DatastoreError
from bgpd.model import Node, ResourceError, from_dict

log = logging.getLogger(__name__)

VXLAN_NAME = "vxlan.calico"
VXLAN_V6_NAME = "vxlan-v6.calico"
VXLAN_VNI = 4096
VXLAN_PORT = 4789
IPIP_NAME = "tunl0"
_NUD_PERMANENT = 0x80
_NTF_SELF = 0x02
_IFF_UP = 1

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def vtep_mac(node: str) -> str:
    """A stable, locally administered unicast MAC for a node's VTEP (Calico stores a random
    one in the Node; deriving it from the name gives the same MAC after every restart)."""
    raw = bytearray(hashlib.sha1(f"vtep:{node}".encode()).digest()[:6])
    raw[0] = (raw[0] & 0xFE) | 0x02
    return ":".join(f"{b:02x}" for b in raw)


@dataclass(frozen=True)
class Vtep:
    """One remote node's VXLAN endpoint: its tunnel address, VTEP MAC and underlay address."""

    node: str
    tunnel_ip: IPAddress
    mac: str
    underlay_ip: IPAddress


@dataclass(frozen=True)
class VxlanConfig:
    """Our own VTEP."""

    local_ip: IPAddress
    tunnel_ip: IPAddress
    mac: str
    mtu: int
    parent: str | None = None
    vni: int = VXLAN_VNI
    port: int = VXLAN_PORT
    name: str = VXLAN_NAME


@dataclass(frozen=True)
class TunnelCondition:
    """A status condition in Calico's style: type, True/False, a reason word, a sentence."""

    type: str
    status: bool
    reason: str
    message: str


@dataclass
class VtepReport:
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)


def tunnel_mtu(host_mtu: int, kind: str, *, ipv6_underlay: bool = False) -> int:
    """The tunnel device MTU: the host uplink's minus the encapsulation overhead."""
    if kind == "ipip":
        return host_mtu - IPIP_OVERHEAD
    if kind == "vxlan":
        return host_mtu - (VXLAN_V6_OVERHEAD if ipv6_underlay else VXLAN_OVERHEAD)
    raise ValueError(f"unknown tunnel kind {kind!r}")


class Tunnels:
    """Keeps the tunnel devices of one host namespace (None: our own) as desired."""

    # Logged once per process: the kernel will not grow an IPIP module while we run.
    _ipip_warned = False

    def __init__(self, *, netns: str | None = None) -> None:
        self.netns = netns
        self.ipip_condition: TunnelCondition | None = None
        self.vxlan_condition: TunnelCondition | None = None

    # -- VXLAN device ----------------------------------------------------------------------

    def conditions(self) -> list[TunnelCondition]:
        """The latest condition of each tunnel kind we were asked about, for node status."""
        return [c for c in (self.vxlan_condition, self.ipip_condition) if c is not None]

    async def ensure_vxlan(self, cfg: VxlanConfig) -> TunnelCondition:
        """Create or repair the VXLAN device; recreate it when an immutable part changed."""
        self.vxlan_condition = await self._ensure_vxlan(cfg)
        return self.vxlan_condition

    async def _ensure_vxlan(self, cfg: VxlanConfig) -> TunnelCondition:
        async with rtnl(self.netns) as ipr:
            link = await link_by_name(ipr, cfg.name)
            parent_index = None
            if cfg.parent is not None:
                parent = await link_by_name(ipr, cfg.parent)
                if parent is None:
                    return TunnelCondition(
                        "VXLANReady", False, "ParentMissing", f"{cfg.parent} does not exist"
                    )
                parent_index = parent["index"]
            if link is not None and not _vxlan_matches(link, cfg, parent_index):
                log.info("recreating %s: VNI, port, local address or parent changed", cfg.name)
                await ipr.link("del", index=link["index"])
                link = None
            if link is None:
                kwargs: dict[str, Any] = {
                    "ifname": cfg.name,
                    "kind": "vxlan",
                    "vxlan_id": cfg.vni,
                    "vxlan_port": cfg.port,
                    "vxlan_learning": 0,
                    "mtu": cfg.mtu,
                    "address": cfg.mac,
                }
                kwargs["vxlan_local6" if cfg.local_ip.version == 6 else "vxlan_local"] = str(
                    cfg.local_ip
                )
                if parent_index is not None:
                    kwargs["vxlan_link"] = parent_index
                try:
                    await ipr.link("add", **kwargs)
                except NetlinkError as exc:
                    return TunnelCondition(
                        "VXLANReady", False, "CreateFailed", f"{cfg.name}: {exc.args[-1]}"
                    )
                link = await link_by_name(ipr, cfg.name)
                assert link is not None
            index = link["index"]
            changes: dict[str, Any] = {}
            if link.get("IFLA_MTU") != cfg.mtu:
                changes["mtu"] = cfg.mtu
            if (link.get("IFLA_ADDRESS") or "").lower() != cfg.mac.lower():
                changes["address"] = cfg.mac
            if changes:
                await ipr.link("set", index=index, **changes)
            await _sync_tunnel_address(ipr, index, cfg.tunnel_ip)
            if not link["flags"] & _IFF_UP:
                await ipr.link("set", index=index, state="up")
        return TunnelCondition(
            "VXLANReady", True, "Configured", f"{cfg.name} VNI {cfg.vni} on {cfg.local_ip}"
        )

    async def remove_vxlan(self, name: str = VXLAN_NAME) -> bool:
        """Delete the device when no pool uses VXLAN any more; False if it was not there."""
        async with rtnl(self.netns) as ipr:
            link = await link_by_name(ipr, name)
            if link is None:
                return False
            await ipr.link("del", index=link["index"])
            return True

    # -- remote VTEPs ------------------------------------------------------------------------

    async def reconcile_vteps(self, desired: Iterable[Vtep], name: str = VXLAN_NAME) -> VtepReport:
        """FDB (MAC -> underlay) and neighbour (tunnel IP -> MAC) entries for each remote."""
        want = list(desired)
        report = VtepReport()
        async with rtnl(self.netns) as ipr:
            link = await link_by_name(ipr, name)
            if link is None:
                raise LookupError(f"{name} does not exist; ensure_vxlan first")
            index = link["index"]
            want_fdb = {(v.mac.lower(), v.underlay_ip) for v in want}
            want_arp = {(v.tunnel_ip, v.mac.lower()) for v in want}
            have_fdb = await self._fdb_entries(ipr, index)
            have_arp = await self._neigh_entries(ipr, index)
            for mac, dst in sorted(have_fdb - want_fdb, key=str):
                await _ignore_gone(ipr.fdb("del", ifindex=index, lladdr=mac, dst=str(dst)))
                report.removed.append(f"fdb {mac} dst {dst}")
            for ip, mac in sorted(have_arp - want_arp, key=str):
                await _ignore_gone(
                    ipr.neigh("del", ifindex=index, dst=str(ip), family=_family(ip), lladdr=mac)
                )
                report.removed.append(f"neigh {ip} lladdr {mac}")
            for mac, dst in sorted(want_fdb - have_fdb, key=str):
                await ipr.fdb(
                    "append", ifindex=index, lladdr=mac, dst=str(dst), state=_NUD_PERMANENT
                )
                report.added.append(f"fdb {mac} dst {dst}")
            for ip, mac in sorted(want_arp - have_arp, key=str):
                await ipr.neigh(
                    "replace",
                    ifindex=index,
                    dst=str(ip),
                    lladdr=mac,
                    family=_family(ip),
                    state=_NUD_PERMANENT,
                )
                report.added.append(f"neigh {ip} lladdr {mac}")
            report.unchanged = sorted(
                [f"fdb {m} dst {d}" for m, d in want_fdb & have_fdb]
                + [f"neigh {i} lladdr {m}" for i, m in want_arp & have_arp]
            )
        return report

    async def _fdb_entries(self, ipr: AsyncIPRoute, index: int) -> set[tuple[str, IPAddress]]:
        out = set()
        for msg in await collect(ipr.fdb("dump", ifindex=index)):
            dst = msg.get("NDA_DST")
            mac = msg.get("NDA_LLADDR")
            if msg["ifindex"] != index or dst is None or mac is None:
                continue
            if not msg["state"] & _NUD_PERMANENT:
                continue
            out.add((mac.lower(), ipaddress.ip_address(dst)))
        return out

    async def _neigh_entries(self, ipr: AsyncIPRoute, index: int) -> set[tuple[IPAddress, str]]:
        out = set()
        for fam in (socket.AF_INET, socket.AF_INET6):
            for msg in await collect(ipr.neigh("dump", ifindex=index, family=fam)):
                mac = msg.get("NDA_LLADDR")
                if msg["ifindex"] != index or mac is None:
                    continue
                if not msg["state"] & _NUD_PERMANENT:
                    continue
                out.add((ipaddress.ip_address(msg.get("NDA_DST")), mac.lower()))
        return out

    # -- IPIP --------------------------------------------------------------------------------

    async def ensure_ipip(self, tunnel_ip: IPAddress, mtu: int) -> TunnelCondition:
        """tunl0 up with our tunnel address; on a kernel without IPIP a False condition.

        Calico's tunl0 is the ipip module's fallback device; where it does not exist we ask
        for it by name, which either loads it or tells us the kernel cannot.
        """
        async with rtnl(self.netns) as ipr:
            link = await link_by_name(ipr, IPIP_NAME)
            if link is None:
                try:
                    await ipr.link("add", **ipip_link_request(mtu))
                except NetlinkError as exc:
                    return self._ipip_unsupported(exc)
                link = await link_by_name(ipr, IPIP_NAME)
                if link is None:
                    return self._ipip_unsupported(None)
            if link_kind(link) != "ipip":
                return self._set_ipip(
                    TunnelCondition(
                        "IPIPReady", False, "NameTaken", f"{IPIP_NAME} exists but is not ipip"
                    )
                )
            index = link["index"]
            if link.get("IFLA_MTU") != mtu:
                await ipr.link("set", index=index, mtu=mtu)
            await _sync_tunnel_address(ipr, index, tunnel_ip)
            if not link["flags"] & _IFF_UP:
                await ipr.link("set", index=index, state="up")
        return self._set_ipip(
            TunnelCondition("IPIPReady", True, "Configured", f"{IPIP_NAME} with {tunnel_ip}")
        )

    def _ipip_unsupported(self, exc: NetlinkError | None) -> TunnelCondition:
        why = exc.args[-1] if exc is not None else "the device did not appear"
        cond = TunnelCondition(
            "IPIPReady",
            False,
            "KernelUnsupported",
            f"the kernel refused an ipip device ({why}); routes of ipipMode pools go "
            "without IPIP encapsulation until the ipip module is available",
        )
        if not Tunnels._ipip_warned:
            Tunnels._ipip_warned = True
            log.warning("IPIP unavailable: %s", cond.message)
        return self._set_ipip(cond)

    def _set_ipip(self, cond: TunnelCondition) -> TunnelCondition:
        self.ipip_condition = cond
        return cond


def ipip_link_request(mtu: int) -> dict[str, Any]:
    """The RTM_NEWLINK arguments for tunl0: an ipip device with no fixed remote (any source),
    as Calico's tunl0 is; exposed so the netlink message can be tested without the module."""
    return {"ifname": IPIP_NAME, "kind": "ipip", "mtu": mtu, "ipip_remote": "0.0.0.0"}


def _vxlan_matches(link: Any, cfg: VxlanConfig, parent_index: int | None) -> bool:
    if link_kind(link) != "vxlan":
        return False
    data = link.get("IFLA_LINKINFO").get("IFLA_INFO_DATA")
    if data is None:
        return False
    local = data.get("IFLA_VXLAN_LOCAL6" if cfg.local_ip.version == 6 else "IFLA_VXLAN_LOCAL")
    return (
        data.get("IFLA_VXLAN_ID") == cfg.vni
        and data.get("IFLA_VXLAN_PORT") == cfg.port
        and local is not None
        and ipaddress.ip_address(local) == cfg.local_ip
        and (parent_index is None or data.get("IFLA_VXLAN_LINK") == parent_index)
    )


async def _sync_tunnel_address(ipr: AsyncIPRoute, index: int, tunnel_ip: IPAddress) -> None:
    plen = tunnel_ip.max_prefixlen
    for msg in await collect(ipr.addr("dump", index=index)):
        addr = ipaddress.ip_address(msg.get("IFA_ADDRESS"))
        if addr.is_link_local:
            continue
        if addr != tunnel_ip or msg["prefixlen"] != plen:
            await ipr.addr("del", index=index, address=str(addr), prefixlen=msg["prefixlen"])
    try:
        await ipr.addr("add", index=index, address=str(tunnel_ip), prefixlen=plen)
    except NetlinkError as exc:
        if exc.code != errno.EEXIST:
            raise


def _family(addr: IPAddress) -> int:
    return socket.AF_INET if addr.version == 4 else socket.AF_INET6


async def _ignore_gone(request: Any) -> None:
    try:
        await request
    except NetlinkError as exc:
        if exc.code not in (errno.ENOENT, errno.ESRCH):
            raise


# --- desired state from the datastore ---------------------------------------------------------

NODE_PREFIX = "/routemesh/v1/resources/Node/"


def vteps_from_nodes(nodes: Iterable[Node], local_node: str) -> list[Vtep]:
    """One IPv4 Vtep per other node that has a VXLAN tunnel address and a BGP IPv4 address.

    A node without a stored MAC gets the one we derive from its name (the same function it
    uses for its own device), so both ends agree without a round trip through the store.
    """
    out = []
    for node in nodes:
        if node.name == local_node:
            continue
        tunnel = node.spec.ipv4_vxlan_tunnel_addr
        underlay = node.spec.bgp.ipv4_address if node.spec.bgp else None
        if tunnel is None or underlay is None:
            continue
        out.append(
            Vtep(
                node=node.name,
                tunnel_ip=ipaddress.ip_address(tunnel),
                mac=(node.spec.vxlan_tunnel_mac_addr or vtep_mac(node.name)).lower(),
                underlay_ip=ipaddress.ip_interface(underlay).ip,
            )
        )
    return sorted(out, key=lambda v: v.node)


async def read_nodes(store: Datastore) -> list[Node]:
    """Every readable Node resource; an unreadable one is logged and skipped."""
    kvs, _rev = await store.list(NODE_PREFIX)
    nodes = []
    for kv in kvs:
        try:
            res = from_dict(json.loads(kv.value), source=kv.key)
        except (ValueError, ResourceError) as exc:
            log.warning("%s: skipping unreadable Node: %s", kv.key, exc)
            continue
        if isinstance(res, Node):
            nodes.append(res)
    return nodes


async def vtep_address(ipam: Any, node: str, current: str | None) -> IPAddress:
    """Our VTEP address from the pools (Calico's handle ``vxlan-tunnel-addr-<node>``).

    Keep ``current`` (what our Node says) when IPAM confirms it is ours or can make it ours;
    otherwise allocate a new one. The caller writes the answer into the Node resource.
    """
    handle = f"vxlan-tunnel-addr-{node}"
    attrs = {"node": node, "type": "vxlanTunnelAddress"}
    if current:
        try:
            await ipam.assign_ip(handle, current, attrs=attrs)
            return ipaddress.ip_address(current)
        except Exception as exc:  # in use by another handle, or no longer in a pool
            log.warning("VTEP address %s is not ours any more (%s); allocating anew", current, exc)
    [address] = await ipam.assign(handle, ipv4=1, attrs=attrs)
    return address


async def resync_vteps(tunnels: Tunnels, store: Datastore, local_node: str) -> VtepReport:
    """One full resync: desired VTEPs from the Nodes in the store, reconciled into the kernel."""
    return await tunnels.reconcile_vteps(vteps_from_nodes(await read_nodes(store), local_node))


async def run_vtep_resync(
    tunnels: Tunnels,
    store: Datastore,
    local_node: str,
    *,
    interval: float,
    stop: asyncio.Event,
) -> None:
    """Keep the VTEP entries current: a resync at start, at once after any Node change seen
    on the watch, and every ``interval`` seconds as the safety net, until ``stop`` is set."""
    wake = asyncio.Event()

    async def watch_nodes() -> None:
        while not stop.is_set():
            try:
                _kvs, revision = await store.list(NODE_PREFIX)
                async for _event in store.watch(NODE_PREFIX, start_revision=revision + 1):
                    wake.set()
            except CompactedError:
                wake.set()  # history gone: the next full resync covers it; watch again
            except DatastoreError as exc:
                log.warning("Node watch failed (%s); relying on the periodic resync", exc)
                await asyncio.sleep(min(interval, 5.0))

    watcher = asyncio.create_task(watch_nodes())
    try:
        while not stop.is_set():
            wake.clear()
            try:
                report = await resync_vteps(tunnels, store, local_node)
                if report.added or report.removed:
                    log.info("VTEP resync: added %s, removed %s", report.added, report.removed)
            except (LookupError, DatastoreError, NetlinkError, OSError) as exc:
                log.warning("VTEP resync failed: %s", exc)
            except Exception:
                # A resync loop that dies leaves stale tunnels forever; log and carry on.
                log.exception("VTEP resync failed unexpectedly")
            waits = [asyncio.ensure_future(wake.wait()), asyncio.ensure_future(stop.wait())]
            _done, pending = await asyncio.wait(
                waits, timeout=interval, return_when=asyncio.FIRST_COMPLETED
            )
            for task in pending:
                task.cancel()
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
