"""CPU per received UPDATE on the path bytes -> Session -> PeerDriver -> Daemon import (no FIB).

One-prefix UPDATEs, each with its own MED (the `unique` feed of the harness), fed in the
harness's 64 KiB reads to an Established session whose driver batches them into the daemon.
Prints `receive_us_per_update` (best of --repeat, with and without the cyclic GC running).

    .venv/bin/python -m tests.bench.bench_receive [--updates 50000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import time

from bgpd.speaker.events import State
from bgpd.speaker.transport import PeerDriver
from tests.bench.harness import feeds
from tests.unit.test_fsm import RID_B, established_pair
from tests.unit.test_receive_batch import conn_of, daemon_on


def one_run(n: int, collect: bool) -> float:
    """Seconds of CPU to take in `n` UPDATEs."""
    w = established_pair()
    _d, peer, _batches = daemon_on(w)
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--updates", type=int, default=50000)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    asyncio.set_event_loop(asyncio.new_event_loop())
    for label, collect in (("", True), ("_nogc", False)):
        best = min(one_run(args.updates, collect) for _ in range(args.repeat))
        print(f"receive_us_per_update{label}: {best / args.updates * 1e6:.2f}")


if __name__ == "__main__":
    main()
