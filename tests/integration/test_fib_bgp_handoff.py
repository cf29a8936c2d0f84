"""The hand-off between a real Daemon's route sink and the FIB bridge (bgpd/standalone.py):
every change arrives in order, a whole table is handed over in slices that let the loop run,
`drained()` waits for the last one, and nothing is handed over once a stop is asked for."""

from __future__ import annotations

import asyncio
from pathlib import Path

from bgpd.config import parse_config
from bgpd.daemon import Daemon
from bgpd.speaker.types import IPV4_UNICAST, IPV6_UNICAST, Family, Prefix
from bgpd.standalone import SinkQueue, live_sink

Change = tuple[Family, Prefix, object]


def _daemon(tmp_path: Path) -> Daemon:
    return Daemon(
        parse_config(
            f"""
[global]
asn = 64512
router-id = "198.18.91.1"
listen-address = "127.0.0.1"
control-socket = "{tmp_path / "bgpd.sock"}"
"""
        )
    )


async def test_a_whole_table_arrives_in_order_in_slices_and_drained_waits_for_it(
    tmp_path: Path,
) -> None:
    got: list[Change] = []
    queue = SinkQueue(_daemon(tmp_path), lambda f, p, paths: got.append((f, p, paths)), 100)
    runner = asyncio.create_task(queue.run())
    sent: list[Change] = [
        (IPV4_UNICAST if i % 3 else IPV6_UNICAST, (i << 8, 24), None if i % 5 == 0 else ())
        for i in range(1000)
    ]
    for change in sent:
        queue.put(*change)
    seen_by_others: list[int] = []
    asyncio.get_running_loop().call_soon(lambda: seen_by_others.append(len(got)))
    await queue.drained()
    assert got == sent
    # Another callback ran while the hand-off was under way: it did not take one loop turn.
    assert seen_by_others and 0 <= seen_by_others[0] < len(sent)
    queue.put(IPV4_UNICAST, (1, 32), None)
    await queue.drained()
    assert got[-1] == (IPV4_UNICAST, (1, 32), None)
    runner.cancel()


async def test_nothing_is_handed_over_once_a_stop_is_asked_for(tmp_path: Path) -> None:
    daemon = _daemon(tmp_path)
    got: list[Change] = []
    queue = SinkQueue(daemon, lambda f, p, paths: got.append((f, p, paths)), 10)
    runner = asyncio.create_task(queue.run())
    for i in range(100):
        queue.put(IPV4_UNICAST, (i << 8, 24), ())
    await asyncio.sleep(0)  # the first slices go
    await asyncio.sleep(0)
    daemon.request_stop()
    queue.put(IPV4_UNICAST, (0xFFFF00, 24), None)  # a shutdown's withdrawal
    await queue.drained()
    assert 0 < len(got) < 100
    assert (IPV4_UNICAST, (0xFFFF00, 24), None) not in got
    runner.cancel()


async def test_a_failing_sink_loses_only_that_change(tmp_path: Path) -> None:
    got: list[Prefix] = []

    def sink(family: Family, prefix: Prefix, paths: object) -> None:
        if prefix[0] == 2:
            raise ValueError("refused")
        got.append(prefix)

    queue = SinkQueue(_daemon(tmp_path), sink)
    runner = asyncio.create_task(queue.run())
    for i in range(1, 4):
        queue.put(IPV4_UNICAST, (i, 32), ())
    await queue.drained()
    assert got == [(1, 32), (3, 32)]
    runner.cancel()


async def test_a_live_sink_hands_over_at_once_until_a_stop_is_asked_for(tmp_path: Path) -> None:
    """With routes handed over as they are decided (no routes of ours in the kernel at
    start), each change goes straight to the bridge, and a shutdown's withdrawals do not."""
    daemon = _daemon(tmp_path)
    got: list[Change] = []
    put = live_sink(daemon, lambda f, p, paths: got.append((f, p, paths)))
    put(IPV4_UNICAST, (1 << 8, 24), ())
    put(IPV6_UNICAST, (2 << 8, 24), None)
    assert got == [(IPV4_UNICAST, (1 << 8, 24), ()), (IPV6_UNICAST, (2 << 8, 24), None)]
    daemon.request_stop()
    put(IPV4_UNICAST, (1 << 8, 24), None)
    assert len(got) == 2


async def test_batches_arrive_in_order_in_pieces_of_a_slice_between_single_changes(
    tmp_path: Path,
) -> None:
    """The route worker's decided slices (Daemon.route_sink_batch) queue as one entry each,
    and reach the bridge in order, at most a slice per loop turn, among single changes."""
    pieces: list[int] = []
    seen: list[object] = []

    def batch_sink(family: Family, items: list) -> None:
        pieces.append(len(items))
        seen.extend((family, p) for p, _entry in items)

    queue = SinkQueue(
        _daemon(tmp_path),
        lambda f, p, paths: seen.append(("single", p)),
        100,
        batch_sink=batch_sink,
    )
    runner = asyncio.create_task(queue.run())
    order: list[object] = []
    for n, size in enumerate((250, 30, 100, 1)):
        family = IPV4_UNICAST if n % 2 else IPV6_UNICAST
        prefixes = [((n << 16) + i, 24) for i in range(size)]
        queue.put_batch(family, [(p, None) for p in prefixes])
        order.extend((family, p) for p in prefixes)
        queue.put(IPV4_UNICAST, (n, 32), None)
        order.append(("single", (n, 32)))
    queue.put_batch(IPV4_UNICAST, [])  # nothing decided for the FIB: no entry
    turns: list[int] = []
    asyncio.get_running_loop().call_soon(lambda: turns.append(len(seen)))
    await queue.drained()
    assert seen == order
    assert max(pieces) <= 100 and sum(pieces) == 381
    assert turns and turns[0] < len(seen), "other callbacks ran during the hand-off"
    runner.cancel()
