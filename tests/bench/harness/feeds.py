"""Pre-encoded UPDATE streams for the blaster: the prefixes, their attribute sets, withdrawals.

Everything here is pure and runs before a session opens, so encoding never slows the send.
Prefixes are /29s out of 100.64.0.0/10 (2^19 of them), indexed 0..n-1, so a receiver can
count them from NLRI lengths alone.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import replace

from bgpd.speaker.attributes import PathAttributes
from bgpd.speaker.context import CodecContext
from bgpd.speaker.messages import encode_updates, encode_withdrawals
from bgpd.speaker.types import IPV4_UNICAST, NLRI

POOL_BASE = int(ipaddress.IPv4Address("100.64.0.0"))
PREFIX_LEN = 29
MAX_PREFIXES = 1 << (32 - 10 - (32 - PREFIX_LEN))  # /29s in a /10
NLRI_BYTES = 1 + (PREFIX_LEN + 7) // 8  # length octet + 4 address octets
AS_SEQUENCE = 2
CHUNK_BYTES = 64 * 1024
# A MED value no real feed uses, located in the template UPDATE and overwritten per prefix.
_MED_SENTINEL = 0x7E5A5A7E


def prefix_nlri(index: int) -> NLRI:
    """The index-th benchmark prefix as an (addr, len, path_id) NLRI."""
    if not 0 <= index < MAX_PREFIXES:
        raise ValueError(f"prefix index {index} outside 0..{MAX_PREFIXES - 1}")
    return (POOL_BASE + (index << (32 - PREFIX_LEN)), PREFIX_LEN, 0)


def prefix_text(index: int) -> str:
    addr, plen, _ = prefix_nlri(index)
    return f"{ipaddress.IPv4Address(addr)}/{plen}"


def prefixes(count: int, start: int = 0) -> list[NLRI]:
    if count < 0 or start + count > MAX_PREFIXES:
        raise ValueError(f"{count} prefixes from {start} do not fit in 100.64.0.0/10 as /29s")
    step = 1 << (32 - PREFIX_LEN)
    return [(POOL_BASE + ((start + i) * step), PREFIX_LEN, 0) for i in range(count)]


def base_attributes(asn: int, *, ebgp: bool) -> PathAttributes:
    """ORIGIN IGP, our AS in the path on eBGP, LOCAL_PREF 100 on iBGP."""
    return PathAttributes(
        origin=0,
        as_path=((AS_SEQUENCE, (asn,)),) if ebgp else (),
        local_pref=None if ebgp else 100,
    )


def shared_updates(
    ctx: CodecContext,
    count: int,
    next_hop: int,
    attrs: PathAttributes,
    *,
    per_set: int = 500,
    first: int = 0,
) -> list[bytes]:
    """``count`` prefixes (from index ``first``) in blocks of ``per_set``; each block has its
    own MED (so its own attribute set) and is packed into as few UPDATEs as fit."""
    out: list[bytes] = []
    nlri = prefixes(count, first)
    for block, start in enumerate(range(0, count, per_set)):
        block_attrs = replace(attrs, med=block)
        out += encode_updates(
            ctx, IPV4_UNICAST, block_attrs, nlri[start : start + per_set], (next_hop,)
        )
    return out


def unique_updates(
    ctx: CodecContext, count: int, next_hop: int, attrs: PathAttributes
) -> list[bytes]:
    """One UPDATE per prefix, prefix i carrying MED i: one attribute set per prefix.

    The codec encodes one template; each message is the template with its MED and NLRI
    bytes replaced, which is what encode_updates would produce for that prefix (the unit
    test decodes every message to prove it).
    """
    if count == 0:
        return []
    (template,) = encode_updates(
        ctx, IPV4_UNICAST, replace(attrs, med=_MED_SENTINEL), [prefix_nlri(0)], (next_hop,)
    )
    at = template.index(_MED_SENTINEL.to_bytes(4, "big"))
    head, mid = template[:at], template[at + 4 : -NLRI_BYTES]
    plen = bytes((PREFIX_LEN,))
    return [
        head + i.to_bytes(4, "big") + mid + plen + addr.to_bytes(4, "big")
        for i, (addr, _, _) in enumerate(prefixes(count))
    ]


def withdraw_updates(ctx: CodecContext, count: int, first: int = 0) -> list[bytes]:
    """Withdraw ``count`` prefixes from index ``first``, packed as tightly as fits."""
    return encode_withdrawals(ctx, IPV4_UNICAST, prefixes(count, first))


def chunks(messages: Iterable[bytes], size: int = CHUNK_BYTES) -> list[bytes]:
    """Join whole messages into buffers of about ``size`` bytes (never splitting a message),
    so the sender makes few large writes and a KEEPALIVE can go between any two buffers."""
    out: list[bytes] = []
    pending: list[bytes] = []
    filled = 0
    for msg in messages:
        pending.append(msg)
        filled += len(msg)
        if filled >= size:
            out.append(b"".join(pending))
            pending, filled = [], 0
    if pending:
        out.append(b"".join(pending))
    return out


def feed(
    kind: str, ctx: CodecContext, count: int, next_hop: int, attrs: PathAttributes
) -> list[bytes]:
    """The UPDATEs of scenario feed ``kind`` ("shared" or "unique")."""
    if kind == "shared":
        return shared_updates(ctx, count, next_hop, attrs)
    if kind == "unique":
        return unique_updates(ctx, count, next_hop, attrs)
    raise ValueError(f"unknown feed {kind!r} (shared or unique)")


def total_bytes(buffers: Sequence[bytes]) -> int:
    return sum(len(b) for b in buffers)
