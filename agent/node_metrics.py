"""What `routemesh node run` exports beyond its speaker: the agent, IPAM and datastore metrics,
and the `dataplane-synced` readiness condition (the first policy sync into iptables/ipsets).

The speaker's own metrics and readiness come from `bgpd.observe.Observer`; `NodeMetrics`
replaces the daemon's observer with one that has every area and adds its exporter to it.
Counts are read from the node's parts before each scrape (dataplane state, IPAM stats), or
recorded where they happen (watch events, restore runs) by the small hooks below.
"""

from __future__ import annotations

import logging
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from bgpd.health import DATAPLANE_SYNCED
from bgpd.metrics import AREAS
from bgpd.observe import Observer
from ipam.block import Block
from ipam.errors import IpamError
from ipam.keys import BLOCKS

if TYPE_CHECKING:
    from agent.policy_dataplane import Runner
    from agent.policy_sync import PolicySync
    from bgpd.datastore.base import Datastore, WatchEvent
    from bgpd.dynamic import DynamicDaemon
    from bgpd.fib.manager import FibManager
    from bgpd.model.ipam import IPPool

log = logging.getLogger("routemesh.node")


class NodeMetrics:
    """The node's metrics wiring; see the module docstring."""

    def __init__(
        self,
        daemon: DynamicDaemon,
        fib: FibManager | None,
        *,
        policy_enabled: bool,
        ipam: Any,
        blocks: Callable[[], Sequence[Any]],
        pools: Callable[[], Iterable[IPPool]] = tuple,
    ) -> None:
        self.observer = Observer(daemon, areas=AREAS)
        daemon.observer = self.observer
        self.observer.attach_fib(fib)
        self.metrics = self.observer.metrics
        self.policy_enabled = policy_enabled
        self.policy_sync: PolicySync | None = None
        self.ipam = ipam
        self._blocks = blocks
        self._pools = pools
        self._conflicts_seen = 0
        self._pool_names: set[str] = set()
        # Addresses in use per block of the whole cluster (key -> (cidr, in use)), read once
        # and then kept current from the node's watch, which carries every block write.
        self._block_use: dict[str, tuple[Any, int]] | None = None
        self.observer.add_check(DATAPLANE_SYNCED, self._dataplane_synced, latch=True)
        self.observer.exporters.append(self.export)

    # -- readiness ---------------------------------------------------------------------------

    def _dataplane_synced(self) -> tuple[bool, str]:
        if not self.policy_enabled:
            return True, "policy disabled (--no-policy)"
        sync = self.policy_sync
        if sync is None or not sync.synced.is_set():
            return False, "first iptables/ipset sync in progress"
        return True, "policy applied"

    # -- hooks where things happen -----------------------------------------------------------

    def counting_runner(self, runner: Runner) -> Runner:
        """Wrap the policy dataplane's command runner to count restore runs and failures."""
        agent = self.metrics.agent
        assert agent is not None

        def run(argv: Sequence[str], stdin: str | None) -> subprocess.CompletedProcess[str]:
            kind = _restore_kind(argv)
            try:
                res = runner(argv, stdin)
            except OSError:
                if kind is not None:
                    agent.on_restore(kind, ok=False)
                raise
            if kind is not None:
                agent.on_restore(kind, ok=res.returncode == 0)
            return res

        return run

    def timed_apply(self, apply: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
        """Wrap PolicySync.apply to observe the apply latency histogram."""
        agent = self.metrics.agent
        assert agent is not None

        async def timed() -> None:
            started = time.perf_counter()
            try:
                await apply()
            finally:
                agent.observe_apply(time.perf_counter() - started)

        return timed

    def on_watch_event(self, event: WatchEvent) -> None:
        if self.metrics.datastore is not None:
            self.metrics.datastore.on_watch_event(event.kind)
        use = self._block_use
        if use is not None and event.key.startswith(BLOCKS):
            if event.kind == "delete" or event.value is None:
                use.pop(event.key, None)
                return
            try:
                block = Block.from_json(event.value, event.key)
            except IpamError:
                use.pop(event.key, None)  # ipam logs malformed blocks; count it as gone
                return
            use[event.key] = (block.cidr, block.in_use())

    def on_reconnect(self) -> None:
        if self.metrics.datastore is not None:
            self.metrics.datastore.on_reconnect()

    def set_watch_lag(self, store_revision: int, applied_revision: int) -> None:
        if self.metrics.datastore is not None:
            self.metrics.datastore.set_watch_lag(store_revision, applied_revision)

    async def load_blocks(self, store: Datastore) -> None:
        """Read every block once (again after the watch had to start over)."""
        kvs, _rev = await store.list(BLOCKS)
        use = {}
        for kv in kvs:
            try:
                block = Block.from_json(kv.value, kv.key)
            except IpamError:
                continue
            use[kv.key] = (block.cidr, block.in_use())
        self._block_use = use

    # -- before each scrape ------------------------------------------------------------------

    def export(self) -> None:
        m = self.metrics
        if m.ipam is not None:
            m.ipam.set_blocks(len(self._blocks()))
            stats = getattr(self.ipam, "stats", None)
            if stats is not None and stats.conflicts > self._conflicts_seen:
                m.ipam.on_cas_conflict(stats.conflicts - self._conflicts_seen)
                self._conflicts_seen = stats.conflicts
            if self._block_use is not None:
                self._export_pools(m.ipam)
        if m.agent is not None and self.policy_sync is not None:
            _export_dataplane(m.agent, self.policy_sync)

    def _export_pools(self, ipam_m: Any) -> None:
        assert self._block_use is not None
        names = set()
        for pool in self._pools():
            net = pool.spec.network
            used = sum(
                n
                for cidr, n in self._block_use.values()
                if cidr.version == net.version and cidr.subnet_of(net)
            )
            ipam_m.set_pool(pool.name, used, net.num_addresses - used)
            names.add(pool.name)
        for gone in self._pool_names - names:
            ipam_m.remove_pool(gone)
        self._pool_names = names


def newest_revision(resources: Iterable[Any]) -> int:
    """The newest store revision among resources just listed (their resourceVersion).

    Compared with the revision the watch has applied, it gives the watch lag without counting
    writes to keys we do not watch (an etcd shared with other programs advances its revision
    for those too, and that is no lag of ours).
    """
    newest = 0
    for res in resources:
        version = getattr(getattr(res, "metadata", None), "resource_version", None)
        if version is not None and str(version).isdigit():
            newest = max(newest, int(version))
    return newest


def _restore_kind(argv: Sequence[str]) -> str | None:
    if not argv:
        return None
    tool = argv[0].rsplit("/", 1)[-1]
    if tool == "ipset" and len(argv) > 1 and argv[1] == "restore":
        return "ipset"
    if "tables" in tool and tool.endswith("-restore"):
        return "iptables"
    return None


def _export_dataplane(agent: Any, sync: PolicySync) -> None:
    """Endpoints, sets and chains as the policy loop last applied them.

    Read from the compiler's endpoints and the dataplane's record of what it wrote (the
    same state its next diff is taken against), so a scrape runs no iptables-save.
    """
    endpoints = 0
    ipsets = members = chains = rules = 0
    for version, compiler in sync.compilers.items():
        endpoints = max(
            endpoints,
            sum(1 for ep in compiler.endpoints.values() if compiler.is_local(ep) and ep.iface),
        )
        dp = sync.dataplanes[version]
        sets = getattr(dp, "_sets", {}) or {}
        ipsets += len(sets)
        members += sum(len(s.members) for s in sets.values())
        for state in (getattr(dp, "_tables", None) or {}).values():
            chains += len(state.chains)
            rules += sum(len(hashes) for hashes in state.chains.values())
    agent.set_dataplane(
        endpoints=endpoints, ipsets=ipsets, ipset_members=members, chains=chains, rules=rules
    )
