"""RIB memory per route: one peer's routes through the daemon's own import and decision code
into Adj-RIB-In and the Loc-RIB, measured with tracemalloc at 100k and 500k routes.

Prints `name: value` lines; never asserts a number. Run: python -m tests.bench.bench_rib_memory
"""

from __future__ import annotations

import asyncio
import gc
import tracemalloc

import pytest

from bgpd.config import parse_config
from bgpd.daemon import Daemon
from bgpd.neighbors import Peer
from bgpd.speaker.attributes import AS_SEQUENCE, PathAttributes
from bgpd.speaker.messages import Update
from bgpd.speaker.rib import Source
from bgpd.speaker.types import IPV4_UNICAST

CONFIG = """
[global]
asn = 64512
router-id = "198.18.0.1"
[[neighbor]]
address = "198.18.0.2"
remote-asn = 64513
"""
ATTR_SETS = 100  # routes share attribute sets, as real tables do
PER_UPDATE = 500


async def measure(n: int) -> float:
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    d = Daemon(parse_config(CONFIG))
    nb = d.config.neighbors[0]
    peer = Peer(nb, None)  # type: ignore[arg-type]  # no session: updates are fed directly
    peer.source = Source(nb.address, 0xC6120002, 0xC6120002, 64513, True)
    d.peers[nb.address] = peer
    attrs = [
        PathAttributes(origin=0, as_path=((AS_SEQUENCE, (64513, 65000 + i)),), med=i)
        for i in range(ATTR_SETS)
    ]
    for k in range(0, n, PER_UPDATE):
        nlri = [(0x0A000000 + ((k + j) << 8), 24, 0) for j in range(min(PER_UPDATE, n - k))]
        upd = Update(
            attrs=attrs[(k // PER_UPDATE) % ATTR_SETS],
            announce={IPV4_UNICAST: nlri},
            next_hop={IPV4_UNICAST: (0xC6120002,)},
        )
        d._on_update(peer, upd)
    while d.loc_rib.pending():
        d._decide_slice()
    gc.collect()
    used = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    assert d.loc_rib.count() == n and peer.rib_in.accepted_count() == n
    return used / n


def run() -> None:
    for n in (100_000, 500_000):
        per = asyncio.run(measure(n))
        print(f"rib_bytes_per_route_{n // 1000}k: {per:.0f}")


@pytest.mark.slow
def test_rib_memory_per_route() -> None:
    run()


if __name__ == "__main__":
    run()
