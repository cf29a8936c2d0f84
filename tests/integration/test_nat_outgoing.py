"""NAT outgoing live, in namespaces with the real iptables-nft and ipset: a workload's TCP connect
to an outside listener shows the host's address when its pool has natOutgoing and its own address
when it has not; traffic to any pool (a disabled one too) is never masqueraded; the loop follows
IPPool changes in the store, the resync repairs a flushed chain, foreign nat rules survive, and
the policy dataplane's reconcile in the same namespace does not take our sets away."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterator

import pytest

from agent.nat import CHAIN, NatOutgoing, run_nat_outgoing
from agent.policy_dataplane import PolicyDataplane, local_runner
from bgpd.datastore.memory import MemoryDatastore
from bgpd.datastore.resources import ResourceStore
from bgpd.model import IPPool, from_dict, load_documents
from policy.compiler import PolicyCompiler
from policy.endpoint import Endpoint
from tests.lab.netns import Lab, Netns
from tests.lab.require import require_binary, require_root

HOST_OUT = "198.18.0.1"  # the host's address on the outside link
OUTSIDE = "198.18.0.2"  # a server beyond every pool
REMOTE_POD = "100.64.0.5"  # a workload of another pool, reached over the same link
POD_A = "10.244.1.2"
POD_B = "10.244.1.3"
PORT = 8080
HOST_OUT6 = "fd00:18::1"
OUTSIDE6 = "fd00:18::2"
POD_A6 = "fd00:244::2"
ALLOW_PROFILE = """
apiVersion: projectcalico.org/v3
kind: Profile
metadata: {name: kns.shop}
spec:
  ingress: [{action: Allow}]
  egress: [{action: Allow}]
"""
FOREIGN = "-A POSTROUTING -s 172.17.0.0/16 -o nosuch0 -j MASQUERADE"

# Answers every connection with the address it came from, then closes.
PEER_SERVER = """
import socket, sys
family = socket.AF_INET6 if sys.argv[2] == "6" else socket.AF_INET
srv = socket.socket(family, socket.SOCK_STREAM)
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
if family == socket.AF_INET6:
    srv.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
srv.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", int(sys.argv[1])))
srv.listen(16)
while True:
    conn, peer = srv.accept()
    conn.sendall(peer[0].encode() + b"\\n")
    conn.close()
"""


def _requirements() -> None:
    require_root()
    for tool in ("iptables-nft-restore", "iptables-nft-save", "ipset", "python3"):
        require_binary(tool)


def pool(name: str, cidr: str, nat: bool, disabled: bool = False) -> IPPool:
    res = from_dict(
        {
            "apiVersion": "projectcalico.org/v3",
            "kind": "IPPool",
            "metadata": {"name": name},
            "spec": {"cidr": cidr, "natOutgoing": nat, "disabled": disabled},
        }
    )
    assert isinstance(res, IPPool)
    return res


def _workload(lab: Lab, host: Netns, iface: str, ip: str) -> Netns:
    """A workload plumbed the way agent.endpoint does it: /32, gateway 169.254.1.1."""
    wl = lab.netns()
    lab.veth(host, wl, (), f"{ip}/32", name_a=iface, name_b="eth0")
    host.ip("link", "set", iface, "address", "ee:ee:ee:ee:ee:ee")
    host.ip("route", "add", f"{ip}/32", "dev", iface)
    wl.ip("route", "add", "169.254.1.1", "dev", "eth0", "scope", "link")
    wl.ip("route", "add", "default", "via", "169.254.1.1", "dev", "eth0")
    wl.ip("neigh", "add", "169.254.1.1", "lladdr", "ee:ee:ee:ee:ee:ee", "dev", "eth0")
    return wl


class World:
    """host ─ two workloads (10.244.0.0/16) ─ and an outside netns on a 198.18 link that also
    holds a workload address of the 100.64.0.0/10 pool (another host's pod, as BGP would route
    it). The outside routes 10.244/16 back to the host, so un-NATed replies arrive too."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.host = lab.netns()
        self.a = _workload(lab, self.host, "calia", POD_A)
        self.b = _workload(lab, self.host, "calib", POD_B)
        self.out = lab.netns()
        lab.veth(
            self.host, self.out, f"{HOST_OUT}/30", f"{OUTSIDE}/30", name_a="up0", name_b="eth0"
        )
        self.out.ip("addr", "add", f"{REMOTE_POD}/32", "dev", "lo")
        self.host.ip("route", "add", "100.64.0.0/10", "via", OUTSIDE)
        self.out.ip("route", "add", "10.244.0.0/16", "via", HOST_OUT)
        # IPv6 for workload a: a /128, gateway fe80::1 on the host side of its veth.
        self.a.add_address("eth0", f"{POD_A6}/128")
        self.host.add_address("calia", "fe80::1/64")
        self.host.ip("-6", "route", "add", f"{POD_A6}/128", "dev", "calia")
        self.a.ip("-6", "route", "add", "default", "via", "fe80::1", "dev", "eth0")
        self.host.add_address("up0", f"{HOST_OUT6}/64")
        self.out.add_address("eth0", f"{OUTSIDE6}/64")
        self.out.ip("-6", "route", "add", "fd00:244::/64", "via", HOST_OUT6)
        script = lab.tmpdir("nat") / "peer_server.py"
        script.write_text(PEER_SERVER)
        for ns in (self.out, self.b):
            ns.popen(["python3", str(script), str(PORT), "4"])
        self.out.popen(["python3", str(script), str(PORT + 1), "6"])
        for ns, port in ((self.out, PORT), (self.b, PORT), (self.out, PORT + 1)):
            deadline = time.monotonic() + 10
            while not ns.tcp_listening(port):
                assert time.monotonic() < deadline, f"peer server in {ns} did not start"
                time.sleep(0.1)
        # An operator's (or Docker's) own nat rule, there before us: it must stay.
        self.host.run(["iptables-nft", "-t", "nat", *FOREIGN.split()])

    def peer_seen(self, wl: Netns, dst: str) -> str | None:
        """The source address `dst`'s server saw for a new TCP connection from `wl`."""
        port = PORT + 1 if ":" in dst else PORT
        code = (
            "import socket,sys\n"
            f"s=socket.create_connection(({dst!r},{port}),timeout=5)\n"
            "sys.stdout.write(s.makefile().readline())\n"
        )
        res = wl.run(["python3", "-c", code], check=False, timeout=20)
        return res.stdout.strip() if res.returncode == 0 else None

    def nat_save(self) -> str:
        return self.host.run(["iptables-nft-save", "-t", "nat"]).stdout

    def postrouting(self) -> list[str]:
        return [ln for ln in self.nat_save().splitlines() if ln.startswith("-A POSTROUTING ")]

    def chain_rules(self) -> list[str]:
        return [ln for ln in self.nat_save().splitlines() if ln.startswith(f"-A {CHAIN} ")]

    def sets(self) -> str:
        return self.host.run(["ipset", "save"]).stdout


@pytest.fixture
def world(lab: Lab) -> Iterator[World]:
    _requirements()
    yield World(lab)


async def eventually(probe: Callable[[], object], what: str, timeout: float = 15.0) -> object:
    deadline = time.monotonic() + timeout
    while True:
        value = await asyncio.to_thread(probe)
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.2)


@contextlib.asynccontextmanager
async def nat_loop(
    store: ResourceStore, host: Netns, interval: float
) -> AsyncIterator[asyncio.Task[None]]:
    stop = asyncio.Event()
    task = asyncio.create_task(
        run_nat_outgoing(store, stop, interval, netns=host.name, versions=(4,))
    )
    try:
        yield task
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def test_workload_to_outside_is_masqueraded_only_with_nat_outgoing(world: World) -> None:
    datastore = MemoryDatastore()
    store = ResourceStore(datastore)
    # Before any NAT: the outside sees the workload itself (it routes 10.244/16 back).
    assert await asyncio.to_thread(world.peer_seen, world.a, OUTSIDE) == POD_A
    await store.apply(pool("pods", "10.244.0.0/16", nat=True))
    await store.apply(pool("old", "100.64.0.0/10", nat=False, disabled=True))
    try:
        async with nat_loop(store, world.host, interval=1.0) as task:
            await eventually(
                lambda: world.peer_seen(world.a, OUTSIDE) == HOST_OUT, "workload masqueraded"
            )
            # Pool to pool is never masqueraded: same pool on this host, and a pool that is
            # disabled and has no NAT of its own, beyond the same uplink.
            assert await asyncio.to_thread(world.peer_seen, world.a, POD_B) == POD_A
            assert await asyncio.to_thread(world.peer_seen, world.a, REMOTE_POD) == POD_A
            assert world.postrouting()[0].endswith(f"-j {CHAIN}")
            assert FOREIGN in world.postrouting()

            # natOutgoing off: the outside sees the workload address again.
            pods = await store.get(IPPool, "pods")
            assert isinstance(pods, IPPool)
            pods.spec.nat_outgoing = False
            await store.update(pods)
            await eventually(
                lambda: world.peer_seen(world.a, OUTSIDE) == POD_A, "NAT off: workload address"
            )
            assert len(world.chain_rules()) == 1  # kept: an empty masq set matches nothing
            assert "add cali40masq-ipam-pools" not in world.sets()
            assert "add cali40all-ipam-pools 10.244.0.0/16" in world.sets()

            pods = await store.get(IPPool, "pods")
            assert isinstance(pods, IPPool)
            pods.spec.nat_outgoing = True
            await store.update(pods)
            await eventually(lambda: world.peer_seen(world.a, OUTSIDE) == HOST_OUT, "NAT on again")

            # Someone flushes our chain and deletes a set member: the resync repairs both.
            world.host.run(["iptables-nft", "-t", "nat", "-F", CHAIN])
            world.host.run(["ipset", "del", "cali40all-ipam-pools", "100.64.0.0/10"])
            await eventually(
                lambda: (
                    len(world.chain_rules()) == 1
                    and "add cali40all-ipam-pools 100.64.0.0/10" in world.sets()
                ),
                "resync repairs chain and set",
            )
            assert await asyncio.to_thread(world.peer_seen, world.a, REMOTE_POD) == POD_A

            # A pool deleted from the store leaves the sets.
            await store.delete(IPPool, "old")
            await eventually(
                lambda: "100.64.0.0/10" not in world.sets(), "deleted pool leaves the sets"
            )
            assert await asyncio.to_thread(world.peer_seen, world.a, REMOTE_POD) == HOST_OUT
            assert not task.done()
        # Stopping the loop leaves the rules in place (as BIRD's persist; Felix does too).
        assert len(world.chain_rules()) == 1
    finally:
        await datastore.close()

    NatOutgoing(local_runner(world.host.name), 4).remove()
    assert world.chain_rules() == [] and f":{CHAIN} " not in world.nat_save()
    assert "ipam-pools" not in world.sets()
    assert world.postrouting() == [FOREIGN]
    assert await asyncio.to_thread(world.peer_seen, world.a, OUTSIDE) == POD_A


async def test_policy_reconcile_in_the_same_namespace_keeps_nat(world: World) -> None:
    # The policy dataplane counts every cali40… set as its own and destroys those it did not
    # make; the kernel refuses while a rule references them, and our rule always does (even
    # with no NAT pool). This pins that NAT survives it, idle or active.
    runner = local_runner(world.host.name)
    nat = NatOutgoing(runner, 4)
    idle = [pool("pods", "10.244.0.0/16", nat=False)]
    nat.reconcile(idle)
    # Policy that lets the workload out (its namespace profile allows everything).
    compiler = PolicyCompiler(4, node="node1")
    compiler.set_resources(load_documents(ALLOW_PROFILE))
    compiler.set_endpoints([Endpoint.for_pod("a", "shop", "calia", [POD_A])])
    policy = PolicyDataplane(runner, 4)
    await asyncio.to_thread(policy.reconcile, compiler.ruleset())
    assert any(ln.startswith("-A cali-fw-calia ") for ln in world.host.run(
        ["iptables-nft-save", "-t", "filter"]).stdout.splitlines())  # fmt: skip
    assert "create cali40masq-ipam-pools" in world.sets()
    assert "create cali40all-ipam-pools" in world.sets()
    assert await asyncio.to_thread(world.peer_seen, world.a, OUTSIDE) == POD_A

    # NAT turns on with a plain apply (no kernel read): the sets it believes in are there.
    active = [pool("pods", "10.244.0.0/16", nat=True)]
    assert nat.apply(active).iptables_batch == ""
    assert await asyncio.to_thread(world.peer_seen, world.a, OUTSIDE) == HOST_OUT
    await asyncio.to_thread(policy.reconcile, compiler.ruleset())
    stats = nat.reconcile(active)
    assert stats.ipset_batch == "" and stats.iptables_batch == ""
    assert await asyncio.to_thread(world.peer_seen, world.a, OUTSIDE) == HOST_OUT
    policy.remove_all()
    assert nat.reconcile(active).iptables_batch == ""
    assert await asyncio.to_thread(world.peer_seen, world.a, OUTSIDE) == HOST_OUT


async def test_ipv6_workload_to_outside_is_masqueraded_by_the_loop(world: World) -> None:
    require_binary("ip6tables-nft-restore")
    # The new links' own link-local addresses finish DAD first; until then NDP cannot run.
    await eventually(lambda: world.peer_seen(world.a, OUTSIDE6) == POD_A6, "IPv6 path up")
    datastore = MemoryDatastore()
    store = ResourceStore(datastore)
    await store.apply(pool("v6", "fd00:244::/64", nat=True))
    await store.apply(pool("v4", "10.244.0.0/16", nat=False))
    stop = asyncio.Event()
    # Both families, as the agent runs it by default.
    task = asyncio.create_task(run_nat_outgoing(store, stop, 60.0, netns=world.host.name))
    try:
        await eventually(
            lambda: world.peer_seen(world.a, OUTSIDE6) == HOST_OUT6, "IPv6 workload masqueraded"
        )
        save6 = world.host.run(["ip6tables-nft-save", "-t", "nat"]).stdout
        assert "-m set --match-set cali60masq-ipam-pools src" in save6
        assert "! --match-set cali60all-ipam-pools dst -j MASQUERADE --random-fully" in save6
        assert "add cali60masq-ipam-pools fd00:244::/64" in world.sets()
        # The IPv4 pool has no NAT: its masq set is empty and IPv4 leaves unchanged.
        assert "add cali40masq-ipam-pools" not in world.sets()
        assert await asyncio.to_thread(world.peer_seen, world.a, OUTSIDE) == POD_A
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
        await datastore.close()
    nat6 = NatOutgoing(local_runner(world.host.name), 6)
    nat6.remove()
    assert "cali60" not in world.sets()
    assert CHAIN not in world.host.run(["ip6tables-nft-save", "-t", "nat"]).stdout
    assert await asyncio.to_thread(world.peer_seen, world.a, OUTSIDE6) == POD_A6
