"""Namespace profiles from the Workloads path (CNI and `routemesh endpoint add`): the first
endpoint of a namespace creates Calico's `kns.<ns>` allow-all profile, so pods with no policy
talk under the real policy loop; an operator's own `kns.<ns>` is never overwritten; an endpoint
with another profile list creates nothing."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from agent.endpoint import EndpointDataplane
from agent.endpoints import WorkloadRequest, Workloads
from agent.policy_dataplane import PolicyDataplane, local_runner
from agent.policy_sync import PolicySync
from bgpd.datastore.memory import MemoryDatastore
from bgpd.datastore.resources import ResourceNotFoundError, ResourceStore
from bgpd.model import IPPool, Profile, from_dict, load_documents, to_dict
from ipam import Ipam
from tests.integration.test_endpoint import make_host
from tests.lab import Lab, Netns
from tests.lab.require import require_binary

pytestmark = pytest.mark.root

POOL = {"apiVersion": "projectcalico.org/v3", "kind": "IPPool", "metadata": {"name": "p"},
        "spec": {"cidr": "10.244.0.0/16"}}  # fmt: skip
OPERATOR_PROFILE = """
apiVersion: projectcalico.org/v3
kind: Profile
metadata: {name: kns.ami-a}
spec:
  labelsToApply: {org: ami}
  ingress: [{action: Allow}]
  egress: [{action: Deny}]
"""


async def eventually(probe: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(probe):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.2)


class Node:
    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.host = make_host(lab)
        self.datastore = MemoryDatastore()
        self.store = ResourceStore(self.datastore)
        self.workloads = Workloads(
            "node1",
            EndpointDataplane(host_netns=self.host.name),
            ipam=Ipam(self.datastore, "node1"),
            store=self.datastore,
        )

    async def start(self) -> None:
        pool = from_dict(POOL)
        assert isinstance(pool, IPPool)
        await self.store.apply(pool)

    async def pod(
        self, namespace: str, name: str, profiles: tuple[str, ...] = ()
    ) -> tuple[Netns, str]:
        ns = self.lab.netns(forwarding=False)
        req = WorkloadRequest(
            namespace, name, ns.name, container_id=name, handle=f"net.{name}", profiles=profiles
        )
        attached = await self.workloads.add(req)
        return ns, str(attached.plumbed.addresses[0])

    async def profile(self, name: str) -> Profile | None:
        try:
            res = await self.store.get(Profile, name)
        except ResourceNotFoundError:
            return None
        assert isinstance(res, Profile)
        return res


async def test_pods_without_policy_talk_through_the_created_namespace_profile(lab: Lab) -> None:
    require_binary("iptables-nft-restore")
    node = Node(lab)
    await node.start()
    dataplane = PolicyDataplane(local_runner(node.host.name))
    # A short resync, as test_policy_sync uses: PolicySync._follow waits for ALL_COMPLETED, so
    # today it applies watch events only when the resync timer fires.
    sync = PolicySync(node.store, "node1", {4: dataplane}, resync_interval=1.0)
    task = asyncio.create_task(sync.run())
    try:
        await asyncio.wait_for(sync.synced.wait(), 10)
        (a, _), (_, ip_b) = await node.pod("shop", "a"), await node.pod("shop", "b")
        prof = await node.profile("kns.shop")
        assert prof is not None
        body = to_dict(prof)["spec"]
        assert body["ingress"] == [{"action": "Allow"}] and body["egress"] == [{"action": "Allow"}]
        assert body["labelsToApply"] == {"pcns.projectcalico.org/name": "shop"}
        await eventually(lambda: a.ping(ip_b, timeout=1), "shop/a -> shop/b allowed by kns.shop")

        # The profile is what lets them talk: without it the loop denies by default.
        await node.store.delete(Profile, "kns.shop")
        await eventually(lambda: not a.ping(ip_b, timeout=1), "no profile: denied")
        # The next endpoint of the namespace brings it back.
        await node.pod("shop", "c")
        await eventually(lambda: a.ping(ip_b, timeout=1), "profile recreated: allowed")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await node.datastore.close()


async def test_operator_profile_is_kept_and_other_profile_lists_create_nothing(lab: Lab) -> None:
    node = Node(lab)
    await node.start()
    (operator,) = load_documents(OPERATOR_PROFILE)
    stored = await node.store.apply(operator)
    await node.pod("ami-a", "a")
    await node.pod("ami-a", "b", profiles=("kns.ami-a",))
    kept = await node.profile("kns.ami-a")
    assert kept is not None
    assert kept.metadata.resource_version == stored.metadata.resource_version
    assert to_dict(kept)["spec"] == to_dict(stored)["spec"]

    # An explicit list without the namespace profile: leave the profiles alone.
    await node.pod("billing", "x", profiles=("custom",))
    assert await node.profile("kns.billing") is None
    assert await node.profile("custom") is None
    # A list that includes it (with others): it is created, the others are not.
    await node.pod("billing", "y", profiles=("kns.billing", "extra"))
    assert await node.profile("kns.billing") is not None
    assert await node.profile("extra") is None
    await node.datastore.close()
