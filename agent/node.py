"""`routemesh node run`: one host's composition root, what calico/node is for Calico.

It registers the Node (address autodetected, AS, liveness lease), computes its BGP sessions
from the datastore (mesh, reflectors, BGPPeers) and runs the embedded speaker with them,
originates its IPAM blocks (blackholed locally) and borrowed /32s, installs learned routes
through the FIB bridge with the pools' tunnel rules, keeps vxlan.calico and its VTEP entries,
resyncs workload endpoints and runs the policy loop. One watch on the store drives every
recomputation; sessions whose spec did not change are never touched.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.autodetect import autodetect
from agent.endpoint import EndpointDataplane
from agent.endpoints import EndpointResync, Workloads
from agent.mtu import detect_host_mtu, publish_workload_mtu
from agent.nat import run_nat_outgoing
from agent.node_metrics import NodeMetrics, newest_revision
from agent.routing import (
    NodeAddressing,
    blackholes,
    forward_route,
    nodes_by_address,
    originations,
)
from agent.tunnels import (
    Tunnels,
    VxlanConfig,
    run_vtep_resync,
    tunnel_mtu,
    vtep_address,
    vtep_mac,
)
from bgpd.config import Config, FibSection, GlobalConfig, NeighborConfig
from bgpd.datastore.base import CompactedError, Datastore, DatastoreError
from bgpd.datastore.resources import ResourceNotFoundError, ResourceStore
from bgpd.datastore.url import open_datastore
from bgpd.dynamic import DynamicDaemon
from bgpd.fib.manager import manager_from_config
from bgpd.fib.types import Prefix, Route
from bgpd.kernel import KernelRoutes
from bgpd.logs import LEVELS, set_level
from bgpd.model import from_dict
from bgpd.model.bgp import BGPConfiguration, BGPPeer, Node
from bgpd.model.ipam import IPPool
from bgpd.reflector.topology import PeerSpec, Topology, compute_topology
from bgpd.speaker.attributes import PathAttributes
from bgpd.speaker.types import IPV4_UNICAST, IPV6_UNICAST, Family
from bgpd.standalone import SinkQueue, after_convergence
from ipam import Ipam
from ipam.gc import IpamGC

log = logging.getLogger("routemesh.node")

RUN_DIR = Path("/run/routemesh")
SECRETS_DIR = Path("/etc/routemesh/secrets")
LIVENESS_TTL = 30
ORIGIN_IGP = 0


def control_socket_for(name: str, run_dir: Path = RUN_DIR) -> Path:
    """Where node NAME serves `routemesh node status` and `routemesh bgp …`."""
    return run_dir / f"node-{name}.sock"


@dataclass
class NodeOptions:
    """Everything `routemesh node run` takes from its command line."""

    datastore: str
    name: str = field(default_factory=socket.gethostname)
    ip: str | None = None
    ip_autodetect: str = "first-found"
    asn: int | None = None
    run_dir: Path = RUN_DIR
    control_socket: Path | None = None
    secrets_dir: Path = SECRETS_DIR
    hold_time: int = 90
    graceful_restart_time: int = 120
    fib_table: int = 254
    fib_protocol: int = 80
    scan_time: int = 30
    resync_interval: float = 30.0
    policy: bool = True
    mtu_file: Path | None = None
    gc_interval: float = 60.0
    # None: follow BGPConfiguration logSeverityScreen, as calico/node does.
    log_level: str | None = None
    # Prometheus /metrics, /livez, /readyz (Felix's port); 0 turns them off.
    metrics_port: int = 9091
    metrics_address: str = "0.0.0.0"

    @property
    def socket_path(self) -> Path:
        return self.control_socket or control_socket_for(self.name, self.run_dir)


@dataclass
class ClusterView:
    """The resources the node computes from, as last read (one consistent list)."""

    config: BGPConfiguration | None = None
    nodes: list[Node] = field(default_factory=list)
    peers: list[BGPPeer] = field(default_factory=list)
    pools: list[IPPool] = field(default_factory=list)


def resolve_password(ref: str | None, secrets_dir: Path) -> str | None:
    """A BGPPeer password from ``<secrets_dir>/<secret>/<key>`` (a mounted Secret's layout).

    The value never reaches a log line; a missing file is reported by name only.
    """
    if ref is None:
        return None
    secret, _, key = ref.partition("/")
    path = secrets_dir / secret / key
    try:
        return path.read_text().strip()
    except OSError:
        log.error(
            "password secret %s/%s not found under %s; peering without it", secret, key, secrets_dir
        )
        return None


def neighbor_config(
    spec: PeerSpec, *, secrets_dir: Path, graceful_restart: bool, local: str | None = None
) -> NeighborConfig:
    """The daemon's neighbor for one computed session.

    Between two nodes only the higher address connects, exactly as Calico's BIRD mesh does
    (`passive on` toward a higher address), so that a routemesh node and a Calico node in
    one mesh during a migration agree on who dials. Nodes start together, and although the
    FSM settles crossed connections (RFC 4271 §6.8), a collision can still cost one reset
    when one side is already Established on the connection the other rules out. One opener
    has no collision at all.
    """
    family: Family = IPV6_UNICAST if ":" in spec.address else IPV4_UNICAST
    passive = False
    if spec.node is not None and local is not None and (":" in local) == (":" in spec.address):
        passive = ipaddress.ip_address(spec.address) > ipaddress.ip_address(local)
    return NeighborConfig(
        passive=passive,
        address=spec.address,
        remote_asn=spec.remote_asn,
        families=frozenset({family}),
        password=resolve_password(spec.password_ref, secrets_dir),
        ttl_security=spec.ttl_security,
        source_address=spec.source_address,
        port=spec.port or 179,
        description=spec.source,
        route_reflector_client=spec.route_reflector_client,
        next_hop=spec.next_hop,
        graceful_restart=graceful_restart,
    )


class NodeRunner:
    """Runs one node until SIGTERM; see the module docstring."""

    def __init__(self, opts: NodeOptions, store: Datastore | None = None) -> None:
        self.opts = opts
        self.store = store
        self.view = ClusterView()
        self.address: ipaddress.IPv4Interface | ipaddress.IPv6Interface | None = None
        self.topology: Topology | None = None
        self.daemon: DynamicDaemon | None = None
        self.kernel: KernelRoutes | None = None
        self.tunnels = Tunnels()
        self.blocks: list[Any] = []
        self.borrowed: list[Any] = []
        self.vxlan: VxlanConfig | None = None
        self.ipip_available = False
        self.started = time.time()
        self._stop = asyncio.Event()
        self._dirty = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []

    # -- lifecycle ---------------------------------------------------------------------------

    async def run(self) -> int:
        opts = self.opts
        if self.store is None:
            self.store = open_datastore(opts.datastore)
        store = self.store
        self.resources = ResourceStore(store)
        self.ipam = Ipam(store, opts.name)
        try:
            self.address = (
                ipaddress.ip_interface(opts.ip) if opts.ip else autodetect(opts.ip_autodetect, 4)
            )
            await self._register()
            lease = await self.ipam.register_liveness(LIVENESS_TTL)
            revision = self._watched_revision = await self._load()
            self.topology = self._compute()
            config = self._config(self.topology)
        except (DatastoreError, ValueError, KeyError) as err:
            log.error("node %s cannot start: %s", opts.name, err)
            await store.close()
            return 1
        fib = manager_from_config(config.fib, on_reachability=self._on_reachability)
        assert fib is not None
        self.kernel = KernelRoutes(fib, forward=self._forward)
        self.daemon = DynamicDaemon(config, nexthop_reachable=self.kernel.reachable)
        # Changes reach the kernel in slices, and none once a stop is asked for: the Cease
        # at shutdown flushes every peer's paths, and persist must keep forwarding intact.
        handoff = SinkQueue(self.daemon, self.kernel.sink, batch_sink=self.kernel.sink_batch)
        self.daemon.route_sink = handoff.put
        self.daemon.route_sink_batch = handoff.put_batch
        self.kernel.reachability_changed = self.daemon.reachability_changed
        self.node_metrics = NodeMetrics(
            self.daemon,
            fib,
            policy_enabled=opts.policy,
            ipam=self.ipam,
            blocks=lambda: self.blocks,
            pools=lambda: self.view.pools,
        )
        self.daemon.handlers["node-status"] = lambda _req: self.status()
        try:
            await self.node_metrics.load_blocks(store)
        except DatastoreError as err:
            log.warning("pool usage metrics unavailable: %s", err)
        await fib.start()
        await self._tunnels_and_mtu()
        await self._refresh_originations()
        self._forward_changed()
        spawn = asyncio.get_running_loop().create_task
        self._tasks = [
            spawn(handoff.run()),
            spawn(after_convergence(self.daemon, fib, handoff, True)),
            spawn(self._keep_lease(lease)),
            spawn(self._watch(revision)),
            spawn(self._recompute_loop()),
            spawn(self._endpoint_resync()),
        ]
        if self.vxlan is not None:
            self._tasks.append(
                spawn(
                    run_vtep_resync(
                        self.tunnels,
                        store,
                        opts.name,
                        interval=opts.resync_interval,
                        stop=self._stop,
                    )
                )
            )
        if opts.policy:
            self._tasks.append(spawn(self._policy()))
            self._tasks.append(
                spawn(run_nat_outgoing(self.resources, self._stop, opts.resync_interval * 10))
            )
        if opts.gc_interval > 0:
            # Every node collects: each write is a CAS on what it just read, so two collectors
            # never free one address twice, and no single controller has to stay up.
            gc = IpamGC(store)
            self._tasks.append(spawn(gc.run(opts.gc_interval, self._stop)))
        log.info(
            "node %s: address %s, AS %d, %d BGP peers%s",
            opts.name,
            self.address,
            self.topology.asn,
            len(self.topology.peers),
            f", route reflector (cluster {self.topology.cluster_id})"
            if self.topology.cluster_id
            else "",
        )
        try:
            rc = await self.daemon.run()
        finally:
            self._stop.set()
            for task in self._tasks:
                task.cancel()
            for task in self._tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            await fib.stop()
            await store.close()
        return rc

    # -- registration and the view -----------------------------------------------------------

    async def _register(self) -> None:
        """Create or update our Node: address and AS; labels and RR settings are the user's."""
        opts = self.opts
        try:
            current = await self.resources.get(Node, opts.name)
            body = current.model_dump(by_alias=True, exclude_none=True)
        except ResourceNotFoundError:
            body = {"apiVersion": "projectcalico.org/v3", "kind": "Node"}
            body["metadata"] = {"name": opts.name}
        spec = body.setdefault("spec", {})
        bgp = spec.setdefault("bgp", {})
        key = "ipv4Address" if self.address and self.address.version == 4 else "ipv6Address"
        bgp[key] = str(self.address)
        if opts.asn is not None:
            bgp["asNumber"] = opts.asn
        body.get("metadata", {}).pop("resourceVersion", None)
        await self.resources.apply(from_dict(body, source=f"Node {opts.name}"))

    async def _load(self) -> int:
        """Read everything the node computes from; the revision to watch from."""
        # Any list returns the store revision; later reads may be newer, which only means the
        # watch replays a change we already saw (a harmless extra recompute), never a gap.
        configs, revision = await self.resources.list_with_revision(BGPConfiguration)
        default = next((c for c in configs if c.name == "default"), None)
        severity = (
            default.spec.log_severity_screen if isinstance(default, BGPConfiguration) else None
        )
        if self.opts.log_level is None and severity and severity != self._severity:
            self._severity = severity
            # Say it at the level that is still (or already) shown.
            message = "log level %s (BGPConfiguration logSeverityScreen)"
            if LEVELS.get(severity.lower(), 0) > logging.getLogger().getEffectiveLevel():
                log.info(message, severity)
                set_level(severity)
            else:
                set_level(severity)
                log.info(message, severity)
        self.view = ClusterView(
            config=next((c for c in configs if c.name == "default"), None),  # type: ignore[misc]
            nodes=[n for n in await self.resources.list(Node) if isinstance(n, Node)],
            peers=[p for p in await self.resources.list(BGPPeer) if isinstance(p, BGPPeer)],
            pools=[p for p in await self.resources.list(IPPool) if isinstance(p, IPPool)],
        )
        return revision

    def _compute(self) -> Topology:
        view = self.view
        return compute_topology(self.opts.name, view.nodes, view.peers, view.config)

    def _config(self, topo: Topology) -> Config:
        opts = self.opts
        bind = self.view.config.spec.bind_mode if self.view.config is not None else None
        listen: tuple[str, ...] = ("0.0.0.0", "::")
        if bind == "NodeIP":
            listen = tuple(a for a in (topo.ipv4_address, topo.ipv6_address) if a)
        gl = GlobalConfig(
            asn=topo.asn,
            router_id=topo.router_id or "0.0.0.1",
            listen_addresses=listen,
            listen_port=topo.listen_port,
            control_socket=str(opts.socket_path),
            hold_time=opts.hold_time,
            # Nodes boot in any order; a peer not yet listening must not push our next
            # attempt a minute away (Calico's BIRD mesh retries every 5 s).
            connect_retry_max=5.0,
            hostname=opts.name,
            cluster_id=topo.cluster_id,
            multipath=8,
            graceful_restart_time=opts.graceful_restart_time,
            metrics_address=opts.metrics_address,
            metrics_port=opts.metrics_port,
        )
        return Config(
            source=f"datastore {opts.datastore}",
            global_=gl,
            neighbors=tuple(self._neighbors(topo)),
            originate=(),
            fib=FibSection(
                enabled=True,
                table=opts.fib_table,
                protocol=opts.fib_protocol,
                persist=True,
                scan_time=opts.scan_time,
            ),
        )

    def _neighbors(self, topo: Topology) -> list[NeighborConfig]:
        return [
            neighbor_config(
                p,
                secrets_dir=self.opts.secrets_dir,
                graceful_restart=True,
                local=topo.ipv6_address if ":" in p.address else topo.ipv4_address,
            )
            for p in topo.peers
        ]

    # -- what we originate and how we forward -------------------------------------------------

    async def _refresh_originations(self) -> None:
        blocks = await self.ipam.host_blocks()
        borrowed = await self.ipam.borrowed()
        if blocks == self.blocks and borrowed == self.borrowed and self._originated_once:
            return
        self._originated_once = True
        self.blocks, self.borrowed = blocks, borrowed
        wanted: dict[Family, dict[tuple[int, int], PathAttributes]] = {
            IPV4_UNICAST: {},
            IPV6_UNICAST: {},
        }
        for org in originations(blocks, borrowed, self.view.pools, self.view.config):
            version, addr, plen = org.prefix
            fam = IPV4_UNICAST if version == 4 else IPV6_UNICAST
            standard, large = _communities(org.communities)
            wanted[fam][(addr, plen)] = PathAttributes(
                origin=ORIGIN_IGP, communities=standard, large_communities=large
            )
        assert self.daemon is not None and self.kernel is not None
        for fam, routes in wanted.items():
            self.daemon.set_local_routes(fam, routes)
        static: dict[Prefix, Route] = {r.prefix: r for r in blackholes(blocks)}
        self.kernel.set_static(static)

    _originated_once = False
    _severity: str | None = None
    _watched_revision = 0

    def _forward_changed(self) -> None:
        assert self.kernel is not None
        self.kernel.set_forward(self._forward)

    def _forward(self, prefix: Prefix, gateways: Any) -> Route | None:
        me = self._me()
        return forward_route(
            prefix,
            gateways,
            me=me,
            pools=self.view.pools,
            nodes=nodes_by_address(self.view.nodes),
            ipip_available=self.ipip_available,
        )

    def _me(self) -> NodeAddressing:
        for node in self.view.nodes:
            if node.name == self.opts.name:
                return NodeAddressing.from_node(node)
        v4 = self.address if isinstance(self.address, ipaddress.IPv4Interface) else None
        return NodeAddressing(self.opts.name, v4, None, None, None)

    def _on_reachability(self, version: int, gateway: int, reachable: bool) -> None:
        if self.kernel is not None:
            self.kernel.on_reachability(version, gateway, reachable)

    # -- tunnels -----------------------------------------------------------------------------

    def _encaps(self) -> list[str]:
        out = []
        v4 = [p for p in self.view.pools if p.spec.network.version == 4 and not p.spec.disabled]
        if any(p.spec.vxlan_mode != "Never" for p in v4):
            out.append("vxlan")
        if any(p.spec.ipip_mode != "Never" for p in v4) and self.ipip_available:
            out.append("ipip")
        return out

    async def _tunnels_and_mtu(self) -> None:
        v4 = [p for p in self.view.pools if p.spec.network.version == 4 and not p.spec.disabled]
        host_mtu = await detect_host_mtu()
        if any(p.spec.ipip_mode != "Never" for p in v4):
            cond = await self.tunnels.ensure_ipip(self.address.ip, tunnel_mtu(host_mtu, "ipip"))  # type: ignore[union-attr]
            self.ipip_available = cond.status
        if any(p.spec.vxlan_mode != "Never" for p in v4) and self.vxlan is None:
            await self._ensure_vxlan(host_mtu)
        kwargs = {"path": self.opts.mtu_file} if self.opts.mtu_file else {}
        await publish_workload_mtu(self._encaps(), **kwargs)

    async def _ensure_vxlan(self, host_mtu: int) -> None:
        me = next((n for n in self.view.nodes if n.name == self.opts.name), None)
        current = me.spec.ipv4_vxlan_tunnel_addr if me is not None else None
        tunnel_ip = await vtep_address(self.ipam, self.opts.name, current)
        mac = vtep_mac(self.opts.name)
        if current != str(tunnel_ip) or me is None or me.spec.vxlan_tunnel_mac_addr != mac:
            node = await self.resources.get(Node, self.opts.name)
            body = node.model_dump(by_alias=True, exclude_none=True)
            body["metadata"].pop("resourceVersion", None)
            body["spec"]["ipv4VXLANTunnelAddr"] = str(tunnel_ip)
            body["spec"]["vxlanTunnelMACAddr"] = mac
            await self.resources.apply(from_dict(body, source=f"Node {self.opts.name}"))
        assert self.address is not None
        self.vxlan = VxlanConfig(
            local_ip=self.address.ip,
            tunnel_ip=tunnel_ip,
            mac=mac,
            mtu=tunnel_mtu(host_mtu, "vxlan"),
        )
        cond = await self.tunnels.ensure_vxlan(self.vxlan)
        if not cond.status:
            log.error("vxlan.calico: %s", cond.message)

    # -- the loops ---------------------------------------------------------------------------

    async def _keep_lease(self, lease: int) -> None:
        while not self._stop.is_set():
            await asyncio.sleep(LIVENESS_TTL / 3)
            try:
                await self.store.refresh_lease(lease)  # type: ignore[union-attr]
            except DatastoreError as err:
                log.warning("liveness lease refresh failed (%s); taking a new one", err)
                with contextlib.suppress(DatastoreError):
                    lease = await self.ipam.register_liveness(LIVENESS_TTL)

    async def _watch(self, revision: int) -> None:
        """Any change under our prefix marks the view dirty; the recompute loop reacts."""
        store = self.store
        assert store is not None
        while not self._stop.is_set():
            try:
                async for event in store.watch("/routemesh/v1/", start_revision=revision + 1):
                    revision = self._watched_revision = event.revision
                    self.node_metrics.on_watch_event(event)
                    if "/liveness/" in event.key or "/locks/" in event.key:
                        continue
                    self._dirty.set()
            except CompactedError:
                _items, revision = await store.list("/routemesh/v1/resources/Node/")
                self._dirty.set()
                self.node_metrics.on_reconnect()
                await self.node_metrics.load_blocks(store)
            except DatastoreError as err:
                log.warning("datastore watch failed (%s); retrying", err)
                await asyncio.sleep(1.0)
                self.node_metrics.on_reconnect()

    async def _recompute_loop(self) -> None:
        while not self._stop.is_set():
            try:
                await asyncio.wait_for(self._dirty.wait(), timeout=self.opts.resync_interval)
            except TimeoutError:
                pass
            # Changes come in bursts (a manifest, a CNI ADD): let the burst land first.
            await asyncio.sleep(0.1)
            self._dirty.clear()
            try:
                await self._recompute()
            except Exception:
                log.exception("node recompute failed; retrying at the next change or resync")

    async def _recompute(self) -> None:
        assert self.daemon is not None
        old_pools = self.view.pools
        old_nodes = self.view.nodes
        await self._load()
        # Writes to what we just read that the watch has not delivered yet (0 when caught up).
        view = self.view
        listed = [view.config, *view.nodes, *view.peers, *view.pools]
        self.node_metrics.set_watch_lag(newest_revision(listed), self._watched_revision)
        topo = self._compute()
        if topo != self.topology:
            before = {p.address for p in self.topology.peers} if self.topology else set()
            self.topology = topo
            changes = self.daemon.set_neighbors(self._neighbors(topo))
            after = {p.address for p in topo.peers}
            if before != after or changes:
                log.info(
                    "BGP peers now %s (added %s, removed %s)",
                    ", ".join(sorted(after)) or "none",
                    ", ".join(sorted(after - before)) or "none",
                    ", ".join(sorted(before - after)) or "none",
                )
        if old_pools != self.view.pools:
            await self._tunnels_and_mtu()
        await self._refresh_originations()
        if old_pools != self.view.pools or old_nodes != self.view.nodes:
            self._forward_changed()

    async def _endpoint_resync(self) -> None:
        workloads = Workloads(self.opts.name, EndpointDataplane(), ipam=self.ipam, store=self.store)
        await EndpointResync(workloads).run(self.opts.resync_interval, self._stop)

    async def _policy(self) -> None:
        from agent.policy_dataplane import PolicyDataplane, local_runner
        from agent.policy_sync import PolicySync

        runner = self.node_metrics.counting_runner(local_runner())
        sync = PolicySync(
            self.resources,
            self.opts.name,
            {4: PolicyDataplane(runner=runner, version=4)},
            resync_interval=max(self.opts.resync_interval, 60.0),
        )
        sync.apply = self.node_metrics.timed_apply(sync.apply)  # type: ignore[method-assign]
        self.policy_sync = sync
        self.node_metrics.policy_sync = sync
        await sync.run()

    # -- status ------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """What `routemesh node status -o json` prints."""
        daemon = self.daemon
        kernel = self.kernel
        fib = kernel.fib if kernel is not None else None
        policy = getattr(self, "policy_sync", None)
        return {
            "node": self.opts.name,
            "address": str(self.address),
            "asn": self.topology.asn if self.topology else None,
            "route_reflector_cluster_id": self.topology.cluster_id if self.topology else None,
            "uptime_s": round(time.time() - self.started, 1),
            "bgp": daemon.status() if daemon is not None else [],
            "peers": [
                {
                    "peer": p.address,
                    "source": p.source,
                    "node": p.node,
                    "rr_client": p.route_reflector_client,
                }
                for p in (self.topology.peers if self.topology else ())
            ],
            "blocks": [str(b) for b in self.blocks],
            "borrowed": [str(a) for a in self.borrowed],
            "vxlan": None
            if self.vxlan is None
            else {
                "device": self.vxlan.name,
                "vtep": str(self.vxlan.tunnel_ip),
                "mac": self.vxlan.mac,
            },
            "tunnel_conditions": [
                {"type": c.type, "status": c.status, "reason": c.reason, "message": c.message}
                for c in self.tunnels.conditions()
            ],
            "fib": None
            if fib is None
            else {
                "routes_installed": fib.routes_installed,
                "converged": fib.is_converged,
                "in_sync": fib.in_sync,
            },
            "policy_synced": None if policy is None else policy.synced.is_set(),
            # Policies that could not be rendered, and why: they are left out (or keep their
            # last good version), never half-applied. Calico v3 has no policy status field.
            "policy_problems": {}
            if policy is None
            else {k: v for dp in policy.dataplanes.values() for k, v in sorted(dp.status.items())},
        }


def _communities(
    values: Iterable[str],
) -> tuple[tuple[int, ...], tuple[tuple[int, int, int], ...]]:
    """'aa:nn' → RFC 1997 communities, 'aa:nn:mm' → RFC 8092 large ones (validated upstream)."""
    standard: list[int] = []
    large: list[tuple[int, int, int]] = []
    for value in values:
        parts = [int(x) for x in value.split(":")]
        if len(parts) == 2:
            standard.append((parts[0] << 16) | parts[1])
        else:
            large.append((parts[0], parts[1], parts[2]))
    return tuple(standard), tuple(large)


def run_node(opts: NodeOptions) -> int:
    """Entry point for `routemesh node run`."""
    opts.run_dir.mkdir(parents=True, exist_ok=True)
    return asyncio.run(NodeRunner(opts).run())
