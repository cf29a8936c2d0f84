"""Hypothesis stateful test: random allocate / assign-ip / release / node-delete / reserve
sequences against MemoryDatastore, checking after every step that no address has two holders,
every allocation sits in the pool, reserved addresses are never handed out automatically, the
store agrees with a plain model of who holds what, and exhaustion is only reported when the pool
really has too few free addresses."""

from __future__ import annotations

import asyncio
import ipaddress

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    multiple,
    rule,
)

from bgpd.datastore.memory import MemoryDatastore
from bgpd.model import load_documents
from ipam import AddressInUseError, Ipam, NotAllocatedError, PoolExhaustedError
from ipam.allocator import read_blocks
from ipam.check import check
from ipam.gc import IpamGC
from ipam.keys import resource_key
from ipam.pools import put_resource

POOL = ipaddress.ip_network("10.244.0.0/26")  # 8 blocks of /29
HOSTS = ("node-a", "node-b", "node-c")


def _doc(kind: str, name: str, spec: str = "{}") -> str:
    return f"apiVersion: projectcalico.org/v3\nkind: {kind}\nmetadata: {{name: {name}}}\nspec: {spec}\n"


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


class IpamMachine(RuleBasedStateMachine):
    handles = Bundle("handles")

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.store = MemoryDatastore()
        self.clock = Clock()
        self.gc = IpamGC(self.store, node_grace=10, leak_grace=10, clock=self.clock)
        self.ipams = {h: Ipam(self.store, h) for h in HOSTS}
        self.held: dict[ipaddress.IPv4Address, str] = {}  # the model: address -> handle
        self.reserved: set[ipaddress.IPv4Address] = set()
        self.counter = 0

    def run(self, coro):  # type: ignore[no-untyped-def]
        return self.loop.run_until_complete(coro)

    def teardown(self) -> None:
        self.run(self.store.close())
        self.loop.close()

    async def _apply(self, text: str) -> None:
        for r in load_documents(text):
            await put_resource(self.store, r)

    @initialize()
    def setup(self) -> None:
        docs = [_doc("IPPool", "p", f"{{cidr: '{POOL}', blockSize: 29}}")]
        docs += [_doc("Node", h) for h in HOSTS]
        self.run(self._apply("---\n".join(docs)))

    def _free_for_auto(self) -> int:
        return sum(1 for a in POOL if a not in self.held and a not in self.reserved)

    @rule(target=handles, host=st.sampled_from(HOSTS), count=st.integers(1, 5))
    def allocate(self, host: str, count: int):  # type: ignore[no-untyped-def]
        self.counter += 1
        handle = f"h{self.counter}"
        try:
            got = self.run(self.ipams[host].assign(handle, ipv4=count))
        except PoolExhaustedError:
            assert self._free_for_auto() < count, "exhaustion reported with room left"
            return multiple()
        assert len(got) == count == len(set(got))
        for a in got:
            assert a in POOL
            assert a not in self.held, f"{a} handed out twice"
            assert a not in self.reserved, f"reserved {a} handed out"
            self.held[a] = handle
        return handle

    @rule(target=handles, host=st.sampled_from(HOSTS), offset=st.integers(0, 63))
    def assign_ip(self, host: str, offset: int):  # type: ignore[no-untyped-def]
        self.counter += 1
        handle = f"x{self.counter}"
        address = POOL.network_address + offset
        try:
            self.run(self.ipams[host].assign_ip(handle, str(address)))
        except AddressInUseError:
            assert address in self.held
            return multiple()
        assert address not in self.held
        self.held[address] = handle
        return handle

    @rule(handle=consumes(handles), host=st.sampled_from(HOSTS))
    def release_handle(self, handle: str, host: str) -> None:
        released = self.run(self.ipams[host].release_handle(handle))
        expected = {a for a, h in self.held.items() if h == handle}
        assert set(released) == expected
        for a in expected:
            del self.held[a]

    @rule(offset=st.integers(0, 63), host=st.sampled_from(HOSTS))
    def release_ip(self, offset: int, host: str) -> None:
        address = POOL.network_address + offset
        try:
            self.run(self.ipams[host].release_ip(str(address)))
        except NotAllocatedError:
            assert address not in self.held
            return
        del self.held[address]

    @rule(host=st.sampled_from(HOSTS))
    def delete_node_and_collect(self, host: str) -> None:
        async def go() -> None:
            await self.store.delete(resource_key("Node", host))
            await self.gc.run_once()
            self.clock.now += 10
            await self.gc.run_once()
            assert await self.ipams[host].host_blocks() == []
            await self._apply(_doc("Node", host))

        self.run(go())

    @rule(start=st.integers(0, 63), length=st.sampled_from([1, 2, 4]))
    def reserve(self, start: int, length: int) -> None:
        base = int(POOL.network_address) + start - start % length
        net = ipaddress.ip_network((base, 32 - length.bit_length() + 1))
        self.counter += 1
        name = f"r{self.counter}"
        self.run(self._apply(_doc("IPReservation", name, f"{{reservedCIDRs: ['{net}']}}")))
        self.reserved.update(net)

    @rule()
    def clear_reservations(self) -> None:
        async def go() -> None:
            kvs, _ = await self.store.list("/routemesh/v1/resources/IPReservation/")
            for kv in kvs:
                await self.store.delete(kv.key)

        self.run(go())
        self.reserved.clear()

    @invariant()
    def store_matches_model_and_check_is_clean(self) -> None:
        async def go() -> None:
            report = await check(self.store)
            assert report.double_allocations == []
            assert report.inconsistencies == []
            assert report.orphans == []
            assert report.allocated == report.unique == len(self.held)
            stored = {}
            for block, _ in await read_blocks(self.store):
                assert block.cidr.subnet_of(POOL)
                for o, attr in block.allocated():
                    stored[block.address(o)] = attr.handle
            assert stored == self.held

        self.run(go())


IpamMachine.TestCase.settings = settings(
    max_examples=60,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestIpamStateful = IpamMachine.TestCase
