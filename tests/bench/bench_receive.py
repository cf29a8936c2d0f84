"""CPU per received UPDATE on the path bytes -> Session -> PeerDriver -> Daemon import (no FIB).

One-prefix UPDATEs, each with its own MED (the `unique` feed of the harness), fed in the
harness's 64 KiB reads to an Established session whose driver batches them into the daemon.
Prints `receive_us_per_update` (best of --repeat, with and without the cyclic GC running).

`--live-sink` imports as `bgpd -f` does with a FIB that holds nothing of ours (a live route
sink and a next-hop check, so each change is marked for the route worker); `--stages` also
prints the decode (`decode_update` alone) and the import (`Daemon._on_updates` alone, on
already decoded UPDATEs in reads of 4600, the size of an asyncio read) per UPDATE, collector
off, so that a change to one stage shows without the noise of the others.

    .venv/bin/python -m tests.bench.bench_receive [--updates 50000] [--repeat 5] [--live-sink]
        [--stages]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import time

from bgpd.daemon import Daemon
from bgpd.speaker.events import State
from bgpd.speaker.messages import AttrCache, Update, decode_update, split_messages
from bgpd.speaker.transport import PeerDriver
from tests.bench.harness import feeds
from tests.unit.test_fsm import RID_B, established_pair
from tests.unit.test_receive_batch import conn_of, daemon_on

READ_UPDATES = 4600  # one-prefix UPDATEs in one 256 KiB asyncio read


def _live(d: Daemon) -> None:
    """As `bgpd -f` with an empty FIB: changes go to a sink from the first route on."""
    d.route_sink = lambda fam, prefix, paths: None
    d.sink_from_start()
    d.loc_rib.reachable = lambda fam, nh: True


def one_run(n: int, collect: bool, live: bool = False) -> float:
    """Seconds of CPU to take in `n` UPDATEs."""
    w = established_pair()
    d, peer, _batches = daemon_on(w)
    if live:
        _live(d)
    driver: PeerDriver = peer.driver
    attrs = feeds.base_attributes(64513, ebgp=True)
    bufs = feeds.chunks(feeds.unique_updates(w.a.context, n, RID_B, attrs))
    conn = conn_of(w, 1)
    gc.collect()
    if not collect:
        gc.disable()
    try:
        t0 = time.process_time()
        for buf in bufs:
            driver.on_data(conn, buf)
        spent = time.process_time() - t0
    finally:
        gc.enable()
    assert peer.rib_in.accepted_count() == n and w.b.state is State.ESTABLISHED
    driver.loop.close()
    return spent


def stages(n: int, repeat: int, live: bool) -> tuple[float, float]:
    """(decode, import) seconds of CPU for `n` UPDATEs, best of `repeat`, collector off."""
    w = established_pair()
    ctx = w.b.context
    attrs = feeds.base_attributes(64513, ebgp=True)
    wire = b"".join(feeds.unique_updates(w.a.context, n, RID_B, attrs))
    bodies = [body for _, body in split_messages(bytearray(wire), ctx)]
    decoded: list[Update] = []
    best_decode = best_import = float("inf")
    gc.disable()
    try:
        for _ in range(repeat):
            cache = AttrCache()
            t0 = time.process_time()
            decoded = [decode_update(body, ctx, cache) for body in bodies]
            best_decode = min(best_decode, time.process_time() - t0)
        for _ in range(repeat):
            d, peer, _ = daemon_on(established_pair())
            peer.driver.loop.close()
            if live:
                _live(d)
            t0 = time.process_time()
            for i in range(0, n, READ_UPDATES):
                d._on_updates(peer.driver, decoded[i : i + READ_UPDATES])
            best_import = min(best_import, time.process_time() - t0)
            assert peer.rib_in.accepted_count() == n
    finally:
        gc.enable()
    return best_decode, best_import


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--updates", type=int, default=50000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--live-sink", action="store_true", help="import as with an empty FIB")
    ap.add_argument("--stages", action="store_true", help="also decode and import alone")
    args = ap.parse_args()
    asyncio.set_event_loop(asyncio.new_event_loop())
    for label, collect in (("", True), ("_nogc", False)):
        best = min(one_run(args.updates, collect, args.live_sink) for _ in range(args.repeat))
        print(f"receive_us_per_update{label}: {best / args.updates * 1e6:.2f}")
    if args.stages:
        dec, imp = stages(args.updates, args.repeat, args.live_sink)
        print(f"receive_decode_us_per_update: {dec / args.updates * 1e6:.2f}")
        print(f"receive_import_us_per_update: {imp / args.updates * 1e6:.2f}")


if __name__ == "__main__":
    main()
