"""The agent's policy loop: one task owns the compilers and dataplanes, lists every policy
resource and endpoint, reconciles the kernel, then applies datastore changes as they come
(batched while they keep coming) and runs a full resync every `resync_interval`.
"""

from __future__ import annotations

import asyncio
import logging
import time

from agent.policy_dataplane import ApplyError, ApplyStats, PolicyDataplane
from bgpd.datastore.base import CompactedError
from bgpd.datastore.resources import ResourceEvent, ResourceStore
from bgpd.model import (
    GlobalNetworkPolicy,
    GlobalNetworkSet,
    HostEndpoint,
    K8sNetworkPolicy,
    NetworkPolicy,
    NetworkSet,
    Profile,
    Resource,
    Tier,
    WorkloadEndpoint,
)
from policy.compiler import PolicyCompiler
from policy.endpoint import Endpoint
from policy.layout import Failsafes

log = logging.getLogger(__name__)

POLICY_KINDS: tuple[type[Resource], ...] = (
    Tier,
    Profile,
    GlobalNetworkSet,
    NetworkSet,
    GlobalNetworkPolicy,
    NetworkPolicy,
    K8sNetworkPolicy,
)
ENDPOINT_KINDS: tuple[type[Resource], ...] = (WorkloadEndpoint, HostEndpoint)


def _endpoint(res: Resource) -> Endpoint:
    if isinstance(res, WorkloadEndpoint):
        return Endpoint.from_workload(res)
    assert isinstance(res, HostEndpoint)
    return Endpoint.from_host(res)


def _endpoint_key(cls: type[Resource], namespace: str | None, name: str) -> str:
    kind = "wep" if cls is WorkloadEndpoint else "hep"
    return f"{kind}/{namespace}/{name}" if namespace else f"{kind}/{name}"


def _resource_key(cls: type[Resource], namespace: str | None, name: str) -> str:
    kind = "K8sNetworkPolicy" if cls is K8sNetworkPolicy else cls.KIND
    return f"{kind}/{namespace}/{name}" if namespace else f"{kind}/{name}"


class PolicySync:
    """Keeps this node's iptables and ipsets equal to the policy in the datastore."""

    def __init__(
        self,
        store: ResourceStore,
        node: str,
        dataplanes: dict[int, PolicyDataplane],
        *,
        failsafes: Failsafes | None = None,
        resync_interval: float = 300.0,
        batch_delay: float = 0.05,
    ) -> None:
        self.store = store
        self.dataplanes = dataplanes
        self.compilers = {v: PolicyCompiler(v, node=node, failsafes=failsafes) for v in dataplanes}
        self.resync_interval = resync_interval
        self.batch_delay = batch_delay
        self.applies = 0
        self.last_stats: dict[int, ApplyStats] = {}
        self.synced = asyncio.Event()
        self._must_reconcile = True

    # --- loading and applying --------------------------------------------------------------

    async def _list(self) -> int:
        """Replace the compilers' view with a fresh list; the revision to watch from."""
        resources: list[Resource] = []
        endpoints: list[Endpoint] = []
        revisions = []
        for kind in (*POLICY_KINDS, *ENDPOINT_KINDS):
            items, revision = await self.store.list_with_revision(kind)
            revisions.append(revision)
            if kind in ENDPOINT_KINDS:
                endpoints += [_endpoint(r) for r in items]
            else:
                resources += items
        for compiler in self.compilers.values():
            compiler.set_resources(resources)
            compiler.set_endpoints(endpoints)
        # Lists ran at different revisions: replaying from the oldest is safe (idempotent).
        return min(revisions) + 1

    def _event(self, ev: ResourceEvent) -> bool:
        """Feed one change to the compilers; False for kinds policy does not use."""
        if ev.kind in ENDPOINT_KINDS:
            for compiler in self.compilers.values():
                if ev.resource is None:
                    compiler.delete_endpoint(_endpoint_key(ev.kind, ev.namespace, ev.name))
                else:
                    compiler.upsert_endpoint(_endpoint(ev.resource))
            return True
        if ev.kind not in POLICY_KINDS:
            return False
        for compiler in self.compilers.values():
            if ev.resource is None:
                compiler.delete(_resource_key(ev.kind, ev.namespace, ev.name))
            else:
                compiler.upsert(ev.resource)
        return True

    async def apply(self) -> None:
        """Apply the compilers' state; reconcile with the kernel first when asked to."""
        reconcile = self._must_reconcile
        for version, compiler in self.compilers.items():
            rs = compiler.ruleset()
            dp = self.dataplanes[version]
            try:
                # The dataplane runs subprocesses; keep the loop free while it does.
                fn = dp.reconcile if reconcile else dp.apply
                self.last_stats[version] = await asyncio.to_thread(fn, rs)
            except ApplyError as err:
                log.error("IPv%d policy apply failed, will reconcile: %s", version, err)
                self._must_reconcile = True
                return
        self._must_reconcile = False
        self.applies += 1

    # --- the loop --------------------------------------------------------------------------

    async def run(self) -> None:
        """List, reconcile, then follow the datastore until cancelled."""
        while True:
            revision = await self._list()
            self._must_reconcile = True
            await self.apply()
            self.synced.set()
            try:
                await self._follow(revision)
            except CompactedError:
                log.warning("policy watch history compacted; listing again")

    async def _follow(self, revision: int) -> None:
        events: asyncio.Queue[ResourceEvent] = asyncio.Queue()

        async def pump() -> None:
            async for ev in self.store.watch(None, start_revision=revision):
                await events.put(ev)

        pumper = asyncio.create_task(pump())
        try:
            next_resync = time.monotonic() + self.resync_interval
            while True:
                timeout = max(0.0, next_resync - time.monotonic())
                get = asyncio.ensure_future(events.get())
                done, _ = await asyncio.wait(
                    {get, pumper}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                )
                if pumper in done:
                    get.cancel()
                    pumper.result()  # re-raise CompactedError and friends
                    return
                if get not in done:
                    get.cancel()
                    # The safety net: a full list and reconcile, as at start.
                    await self._list()
                    self._must_reconcile = True
                    await self.apply()
                    next_resync = time.monotonic() + self.resync_interval
                    continue
                changed = self._safe_event(get.result())
                changed |= await self._drain(events)
                if changed or self._must_reconcile:
                    await self.apply()
        finally:
            pumper.cancel()

    async def _drain(self, events: asyncio.Queue[ResourceEvent]) -> bool:
        """Take every change that arrives within `batch_delay` of the last one."""
        changed = False
        while True:
            try:
                ev = await asyncio.wait_for(events.get(), timeout=self.batch_delay)
            except TimeoutError:
                return changed
            changed |= self._safe_event(ev)

    def _safe_event(self, ev: ResourceEvent) -> bool:
        # One bad resource must not stop policy for everything else.
        try:
            return self._event(ev)
        except Exception:
            log.exception("policy: cannot use %s %s/%s", ev.kind.KIND, ev.namespace, ev.name)
            return False
