"""The FIB hook contract, with two of our daemons in one process over loopback: `converged` is
set after the first End-of-RIB, `route_sink` gets every Loc-RIB change (multipath set or None),
and `nexthop_reachable` + `reachability_changed()` re-run the decision."""

from __future__ import annotations

import asyncio
import socket

from bgpd.config import parse_config
from bgpd.daemon import Daemon
from bgpd.speaker.types import IPV4_UNICAST, prefix_from_str

NH_A = "198.18.90.1"  # only an attribute here: no packet is ever sent to it


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def config(me: str, other: str, port: int, other_port: int, sock: str, extra: str = ""):
    return parse_config(
        f"""
[global]
asn = 64512
router-id = "{me}"
listen-address = "{me}"
listen-port = {port}
control-socket = "{sock}"
connect-retry = 1
next-hop-ipv4 = "{NH_A if me == "127.0.0.1" else "198.18.90.2"}"
select-defer-time = 30
{extra}
[[neighbor]]
address = "{other}"
remote-asn = 64512
port = {other_port}
hold-time = 9
"""
    )


async def wait(cond, timeout: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not cond():
        if loop.time() > end:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


async def test_route_sink_converged_and_reachability(tmp_path) -> None:
    pa, pb = free_port(), free_port()
    a = Daemon(config("127.0.0.1", "127.0.0.2", pa, pb, str(tmp_path / "a.sock")))
    calls: list[tuple] = []
    reachable = {"ok": True}
    b = Daemon(
        config("127.0.0.2", "127.0.0.1", pb, pa, str(tmp_path / "b.sock"), "multipath = 2"),
        route_sink=lambda fam, prefix, paths: calls.append((fam, prefix, paths)),
        nexthop_reachable=lambda fam, nh: reachable["ok"],
    )
    tasks = [asyncio.create_task(d.run()) for d in (a, b)]
    try:
        fam, p1 = prefix_from_str("10.244.1.0/24")
        _, p2 = prefix_from_str("10.244.2.0/24")
        a.originate(fam, [p1])
        await asyncio.wait_for(b.converged.wait(), 20)
        await wait(lambda: any(c[1] == p1 and c[2] for c in calls))
        ((f, prefix, paths),) = [c for c in calls if c[1] == p1]
        assert (f, prefix) == (IPV4_UNICAST, p1)
        assert len(paths) == 1 and paths[0].next_hop == (0xC6125A01,)
        assert paths[0].source.key == "127.0.0.1"

        # A change after convergence is passed on at once; a withdraw arrives as None.
        calls.clear()
        a.originate(fam, [p2])
        await wait(lambda: [c[1] for c in calls] == [p2])
        a.withdraw_origin(fam, [p2])
        await wait(lambda: calls[-1] == (IPV4_UNICAST, p2, None))

        # The next hop becomes unreachable: the decision drops the path and the sink hears so.
        calls.clear()
        reachable["ok"] = False
        b.reachability_changed()
        await wait(lambda: (IPV4_UNICAST, p1, None) in calls)
        assert b.routes()[0]["best"] is False
        reachable["ok"] = True
        b.reachability_changed()
        await wait(lambda: calls[-1][1] == p1 and calls[-1][2] is not None)
    finally:
        for d in (a, b):
            d.request_stop()
        await asyncio.gather(*tasks, return_exceptions=True)
