"""The node's speaker over loopback: neighbors set at run time, local routes with their own
attributes, and an unchanged session left alone when the set changes around it."""

from __future__ import annotations

import asyncio
from dataclasses import replace

from bgpd.config import NeighborConfig, parse_config
from bgpd.dynamic import DynamicDaemon
from bgpd.speaker.attributes import PathAttributes
from bgpd.speaker.types import IPV4_UNICAST, prefix_from_str
from tests.integration.test_rib_fib_hook import free_port, wait


def daemon(tmp_path, me: str, port: int, name: str) -> DynamicDaemon:
    cfg = parse_config(f"""
[global]
asn = 64512
router-id = "{me}"
listen-address = "{me}"
listen-port = {port}
control-socket = "{tmp_path / name}.sock"
connect-retry = 1
next-hop-ipv4 = "198.18.91.{me.rsplit(".", 1)[1]}"
""")  # fmt: skip
    return DynamicDaemon(cfg)


def neighbor(address: str, port: int) -> NeighborConfig:
    return NeighborConfig(
        address=address, remote_asn=64512, families=frozenset({IPV4_UNICAST}), port=port,
        hold_time=9,
    )  # fmt: skip


async def test_neighbors_and_local_routes_change_at_run_time(tmp_path) -> None:
    ports = [free_port() for _ in range(3)]
    addrs = ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
    ds = [daemon(tmp_path, a, p, f"d{i}") for i, (a, p) in enumerate(zip(addrs, ports))]
    tasks = [asyncio.create_task(d.run()) for d in ds]
    a, b, c = ds
    try:
        # Start empty, then peer a<->b at run time.
        a.set_neighbors([neighbor(addrs[1], ports[1])])
        b.set_neighbors([neighbor(addrs[0], ports[0])])
        await wait(lambda: [r["state"] for r in b.status()] == ["Established"])
        fam, block = prefix_from_str("10.244.1.0/26")
        attrs = PathAttributes(origin=0, communities=((64512 << 16) | 300,))
        a.set_local_routes(fam, {block: attrs})
        await wait(lambda: any(r["prefix"] == "10.244.1.0/26" for r in b.routes()))
        row = next(r for r in b.routes() if r["prefix"] == "10.244.1.0/26")
        assert row["communities"] == ["64512:300"]
        # c joins: a gets a second neighbor; the a<->b session must not reset.
        a.set_neighbors([neighbor(addrs[1], ports[1]), neighbor(addrs[2], ports[2])])
        c.set_neighbors([neighbor(addrs[0], ports[0])])
        await wait(lambda: any(r["prefix"] == "10.244.1.0/26" for r in c.routes()))
        by_peer = {r["peer"]: r for r in a.status()}
        assert by_peer[addrs[1]]["established_count"] == 1
        # Withdrawing the local route reaches both.
        a.set_local_routes(fam, {})
        await wait(lambda: not b.routes() and not c.routes())
        # b removed from a: a sends Cease, b's copy of the session goes down, c stays.
        a.set_neighbors([neighbor(addrs[2], ports[2])])
        await wait(lambda: b.status()[0]["state"] != "Established")
        assert [r["peer"] for r in a.status()] == [addrs[2]]
        assert a.status()[0]["established_count"] == 1
        # A changed spec for the same address replaces that one session only.
        a.set_neighbors([replace(neighbor(addrs[2], ports[2]), hold_time=30)])
        await wait(lambda: a.status()[0]["state"] == "Established")
    finally:
        for d in ds:
            d.request_stop()
        await asyncio.gather(*tasks, return_exceptions=True)


async def test_speakers_that_open_to_each_other_at_once_settle_on_one_session(tmp_path) -> None:
    # Issue 2's collision livelock: pairs of speakers, both active, given each other at the same
    # moment, so their connections cross. §6.8 may cost one reset; it must never loop.
    pairs = 6
    addrs = [f"127.0.5.{i}" for i in range(1, 2 * pairs + 1)]
    ports = [free_port() for _ in addrs]
    ds = [daemon(tmp_path, a, p, f"c{i}") for i, (a, p) in enumerate(zip(addrs, ports))]
    tasks = [asyncio.create_task(d.run()) for d in ds]
    try:
        await asyncio.sleep(0.2)
        for i in range(0, len(ds), 2):
            # Each connects from its own address, which is the one the other side expects.
            ds[i].set_neighbors(
                [replace(neighbor(addrs[i + 1], ports[i + 1]), source_address=addrs[i])]
            )
            ds[i + 1].set_neighbors(
                [replace(neighbor(addrs[i], ports[i]), source_address=addrs[i + 1])]
            )

        def all_up() -> bool:
            return all(d.status() and d.status()[0]["state"] == "Established" for d in ds)

        await wait(all_up)
        for d in ds:
            (row,) = d.status()
            assert 1 <= row["established_count"] <= 2, row
    finally:
        for d in ds:
            d.request_stop()
        await asyncio.gather(*tasks, return_exceptions=True)
