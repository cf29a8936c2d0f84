"""Codec throughput against exabgp on the same bytes. Run: python -m tests.bench.bench_codec

Prints `name: value` lines; never asserts a number (DESIGN.md, Performance).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace

from bgpd.speaker.attrdecode import AttrCache
from bgpd.speaker.attributes import PathAttributes
from bgpd.speaker.context import CodecContext
from bgpd.speaker.messages import decode_message, encode_updates
from bgpd.speaker.nlri import decode_prefixes, encode_prefixes
from bgpd.speaker.types import IPV4_UNICAST, IPV6_UNICAST

PREFIXES_PER_UPDATE = 500
UNIQUE_UPDATES = 20000  # one prefix per UPDATE, each with its own MED (the ingest-unique feed)


def _rate(fn: Callable[[], object], items: int, min_time: float = 0.5) -> float:
    fn()  # warm up
    runs = 0
    start = time.perf_counter()
    while True:
        fn()
        runs += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_time:
            return items * runs / elapsed


def _workloads():
    v4 = [(0x0A000000 | (i << 8), 24, 0) for i in range(PREFIXES_PER_UPDATE)]
    v6 = [((0xFD00 << 112) | (i << 80), 48, 0) for i in range(PREFIXES_PER_UPDATE)]
    return {"ipv4": (1, IPV4_UNICAST, v4, (0x0A000001,)), "ipv6": (2, IPV6_UNICAST, v6, (1,))}


def _exabgp():
    from exabgp.bgp.message.action import Action
    from exabgp.bgp.message.direction import Direction
    from exabgp.bgp.message.update import Update as ExaUpdate
    from exabgp.bgp.message.update.nlri import NLRI as ExaNLRI
    from exabgp.configuration.check import _negotiated
    from exabgp.configuration.configuration import Configuration
    from exabgp.environment import getenv
    from exabgp.logger import log

    getenv()
    log.silence()
    conf = """neighbor 127.0.0.1 {
        router-id 198.18.0.9; local-address 127.0.0.1; local-as 65001; peer-as 65001;
        family { ipv4 unicast; ipv6 unicast; }
    }"""
    config = Configuration([conf], text=True)
    config.reload()
    (neighbor,) = config.neighbors.values()
    negotiated = _negotiated(neighbor)

    def decode_nlri(afi: int, data: bytes) -> list:
        out = []
        while data:
            nlri, data = ExaNLRI.unpack_nlri(afi, 1, data, Action.ANNOUNCE, False)
            out.append(nlri)
        return out

    def encode_nlri(nlris: list) -> bytes:
        return b"".join(n.pack_nlri(negotiated) for n in nlris)

    def decode_update(body: bytes):
        return ExaUpdate.unpack_message(body, Direction.IN, negotiated)

    def encode_update(update) -> list[bytes]:
        # The same job as our encode_updates: NLRI plus attributes into framed UPDATEs.
        return list(ExaUpdate(update.nlris, update.attributes).messages(negotiated))

    return decode_nlri, encode_nlri, decode_update, encode_update


def _unique_bodies(ctx: CodecContext, attrs: PathAttributes) -> list[bytes]:
    out = []
    for i in range(UNIQUE_UPDATES):
        nlri = [(0x64400000 + (i << 3), 29, 0)]
        (wire,) = encode_updates(ctx, IPV4_UNICAST, replace(attrs, med=i), nlri, (0xC6120001,))
        out.append(wire[19:])
    return out


def _cpu_per_item(fn: Callable[[], object], items: int, repeat: int = 5) -> float:
    """Best CPU seconds per item over `repeat` runs (CPU time: the machine is shared)."""
    best = float("inf")
    for _ in range(repeat):
        start = time.process_time()
        fn()
        best = min(best, time.process_time() - start)
    return best / items


def unique_updates(exa_decode_update: Callable[[bytes], object]) -> None:
    """One attribute set per UPDATE: what the per-session AttrCache saves, and exabgp's cost."""
    ctx = CodecContext()
    attrs = PathAttributes(origin=0, as_path=((2, (65001,)),))
    bodies = _unique_bodies(ctx, attrs)
    n = len(bodies)
    caches: list[AttrCache] = []

    def ours(cached: bool) -> None:
        cache = AttrCache() if cached else None
        for body in bodies:
            decode_message(2, body, ctx, cache)
        if cache is not None:
            caches.append(cache)

    cached = _cpu_per_item(lambda: ours(True), n)
    uncached = _cpu_per_item(lambda: ours(False), n)
    exa = _cpu_per_item(lambda: [exa_decode_update(b) for b in bodies], n, repeat=2)
    print(f"unique_update_decode_us_ours_cached: {cached * 1e6:.2f}")
    print(f"unique_update_decode_us_ours_uncached: {uncached * 1e6:.2f}")
    print(f"unique_update_decode_us_exabgp: {exa * 1e6:.2f}")
    print(f"unique_update_decode_ratio_exabgp_to_ours: {exa / cached:.1f}")
    print(f"unique_update_cache_misses: {caches[-1].misses}")


def main() -> None:
    ctx = CodecContext(extended_message=True)  # one 500-prefix UPDATE fits either family
    attrs = PathAttributes(origin=0, as_path=((2, (65001, 65002)),), local_pref=100)
    exa_decode_nlri, exa_encode_nlri, exa_decode_update, exa_encode_update = _exabgp()
    for name, (afi, fam, nlri, nh) in _workloads().items():
        wire = encode_prefixes(nlri, afi, False)
        (update,) = encode_updates(ctx, fam, attrs, nlri, nh)
        body = update[19:]
        n = len(nlri)
        exa_objs = exa_decode_nlri(afi, wire)
        assert [(int(o.cidr.prefix().split("/")[1])) for o in exa_objs] == [p[1] for p in nlri]

        ours_dec = _rate(lambda wire=wire, afi=afi: decode_prefixes(wire, afi, False), n)
        exa_dec = _rate(lambda wire=wire, afi=afi: exa_decode_nlri(afi, wire), n)
        ours_enc = _rate(lambda nlri=nlri, afi=afi: encode_prefixes(nlri, afi, False), n)
        exa_enc = _rate(lambda objs=exa_objs: exa_encode_nlri(objs), n)
        ours_upd = _rate(lambda body=body: decode_message(2, body, ctx), n)
        exa_upd = _rate(lambda body=body: exa_decode_update(body), n)
        ours_pack = _rate(
            lambda fam=fam, nlri=nlri, nh=nh: encode_updates(ctx, fam, attrs, nlri, nh), n
        )
        exa_parsed = exa_decode_update(body)
        exa_pack = _rate(lambda u=exa_parsed: exa_encode_update(u), n)
        print(f"{name}_nlri_decode_prefixes_per_s_ours: {ours_dec:.0f}")
        print(f"{name}_nlri_decode_prefixes_per_s_exabgp: {exa_dec:.0f}")
        print(f"{name}_nlri_decode_ratio: {ours_dec / exa_dec:.1f}")
        print(f"{name}_nlri_encode_prefixes_per_s_ours: {ours_enc:.0f}")
        print(f"{name}_nlri_encode_prefixes_per_s_exabgp: {exa_enc:.0f}")
        print(f"{name}_nlri_encode_ratio: {ours_enc / exa_enc:.1f}")
        print(f"{name}_update_decode_prefixes_per_s_ours: {ours_upd:.0f}")
        print(f"{name}_update_decode_prefixes_per_s_exabgp: {exa_upd:.0f}")
        print(f"{name}_update_decode_ratio: {ours_upd / exa_upd:.1f}")
        print(f"{name}_update_encode_prefixes_per_s_ours: {ours_pack:.0f}")
        print(f"{name}_update_encode_prefixes_per_s_exabgp: {exa_pack:.0f}")
        print(f"{name}_update_encode_ratio: {ours_pack / exa_pack:.1f}")
    unique_updates(exa_decode_update)


if __name__ == "__main__":
    main()
