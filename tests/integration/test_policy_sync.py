"""The agent's policy loop against a real store and real iptables: resources written to the
datastore are enforced (by ping), deletes and re-adds follow, and the periodic resync repairs
a chain someone flushed."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.policy_dataplane import PolicyDataplane, local_runner
from agent.policy_sync import PolicySync
from bgpd.datastore.memory import MemoryDatastore
from bgpd.datastore.resources import ResourceStore
from bgpd.model import GlobalNetworkPolicy, WorkloadEndpoint, load_documents
from tests.lab.netns import Lab, Netns
from tests.lab.require import require_binary, require_root

# The shared Calico example manifests live next to the checkout, as for test_model_examples.
EXAMPLES = Path(__file__).resolve().parents[2].parent / "shared" / "examples"


async def eventually(probe: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(probe):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.2)


def _pod(lab: Lab, host: Netns, iface: str, ip: str) -> Netns:
    pod = lab.netns()
    lab.veth(host, pod, (), f"{ip}/32", name_a=iface, name_b="eth0")
    host.ip("link", "set", iface, "address", "ee:ee:ee:ee:ee:ee")
    host.ip("route", "add", f"{ip}/32", "dev", iface)
    pod.ip("route", "add", "169.254.1.1", "dev", "eth0", "scope", "link")
    pod.ip("route", "add", "default", "via", "169.254.1.1", "dev", "eth0")
    pod.ip("neigh", "add", "169.254.1.1", "lladdr", "ee:ee:ee:ee:ee:ee", "dev", "eth0")
    return pod


def _wep(name: str, ns: str, iface: str, ip: str) -> WorkloadEndpoint:
    return WorkloadEndpoint.model_validate(
        {
            "metadata": {"name": name, "namespace": ns},
            "spec": {"node": "node1", "interfaceName": iface, "ipNetworks": [f"{ip}/32"]},
        }
    )


async def _setup(lab: Lab, resync: float) -> tuple[Any, dict, list, MemoryDatastore, Any, Any]:
    require_root()
    require_binary("iptables-nft-restore")
    host = lab.netns()
    pods = {}
    weps = []
    for name, ns, iface, ip in (
        ("a", "ami-a", "calia", "10.244.1.2"),
        ("b", "ami-b", "calib", "10.244.1.3"),
        ("m", "bmi", "calim", "10.244.1.4"),
    ):
        pods[name] = (_pod(lab, host, iface, ip), ip)
        weps.append(_wep(name, ns, iface, ip))
    datastore = MemoryDatastore()
    store = ResourceStore(datastore)
    dp = PolicyDataplane(local_runner(host.name))
    sync = PolicySync(store, "node1", {4: dp}, resync_interval=resync)
    return host, pods, weps, datastore, store, sync


async def _apply_tenants(sync: Any, store: Any, pods: dict, weps: list) -> list:
    """The tenant-isolation manifests and the endpoints, applied once the loop has synced."""
    await asyncio.wait_for(sync.synced.wait(), 10)
    resources = load_documents((EXAMPLES / "tenant-isolation.yaml").read_text())
    for res in [*resources, *weps]:
        await store.apply(res)
    (a, _), (_m, ip_m) = pods["a"], pods["m"]
    await eventually(lambda: not a.ping(ip_m, timeout=1), "ami-a -> bmi denied")
    return resources


async def test_store_changes_are_enforced_without_waiting_for_the_resync(lab: Lab) -> None:
    # A resync far beyond the test's length: every change below must come from the watch.
    _host, pods, weps, datastore, store, sync = await _setup(lab, resync=3600.0)
    task = asyncio.create_task(sync.run())
    try:
        resources = await _apply_tenants(sync, store, pods, weps)
        (a, _), (_b, ip_b), (m, _ip_m) = pods["a"], pods["b"], pods["m"]
        await eventually(lambda: a.ping(ip_b, timeout=1), "ami-a -> ami-b allowed")

        await store.delete(GlobalNetworkPolicy, "allow-within-org-ami")
        await eventually(lambda: not a.ping(ip_b, timeout=1), "allow gone: ami-a -> ami-b denied")
        allow = next(r for r in resources if r.name == "allow-within-org-ami")
        await store.apply(allow)
        await eventually(lambda: a.ping(ip_b, timeout=1), "allow back: ami-a -> ami-b allowed")
        assert not await asyncio.to_thread(m.ping, ip_b, timeout=1)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await datastore.close()


async def test_periodic_resync_repairs_a_flushed_chain(lab: Lab) -> None:
    host, pods, weps, datastore, store, sync = await _setup(lab, resync=1.0)
    task = asyncio.create_task(sync.run())
    try:
        await _apply_tenants(sync, store, pods, weps)
        (a, _), (b, _ip_b), (_m, ip_m) = pods["a"], pods["b"], pods["m"]

        # Someone flushes a chain of ours: the periodic resync puts it back.
        def tw_rules() -> int:
            save = host.run(["iptables-nft-save", "-t", "filter"]).stdout
            return sum(line.startswith("-A cali-tw-calim ") for line in save.splitlines())

        before = await asyncio.to_thread(tw_rules)
        assert before > 0
        applies = sync.applies
        await asyncio.to_thread(host.run, ["iptables-nft", "-F", "cali-tw-calim"])
        await eventually(lambda: tw_rules() == before, "resync restores the flushed chain", 10)
        assert sync.applies > applies
        assert not await asyncio.to_thread(a.ping, ip_m, timeout=1)
        assert await asyncio.to_thread(b.ping, pods["a"][1], timeout=1)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await datastore.close()
