"""Malformed BGP messages and the exact outcome RFC 4271/7606 demand, as data.

Shared by the codec unit tests and the live raw-TCP suite: each case is a full wire message
(header included), the codec context it is read under, and the expected outcome:

- ("notify", code, subcode, data)  data None means "any data"
- ("withdraw", text)               RFC 7606 treat-as-withdraw; text appears in a diagnostic
- ("discard", text)                RFC 7606 attribute discard; routes still announced
- ("ok", text)                     accepted; text appears in a diagnostic ("" for none needed)
- ("incomplete",)                  not a whole message yet: nothing framed, nothing raised

The bytes are built by hand here, not with the codec under test.
"""

from __future__ import annotations

from typing import Any, NamedTuple

MARKER = b"\xff" * 16


class Case(NamedTuple):
    name: str
    raw: bytes
    expect: tuple[Any, ...]
    ctx: dict[str, Any] = {}


def msg(mtype: int, body: bytes, length: int | None = None, marker: bytes = MARKER) -> bytes:
    size = 19 + len(body) if length is None else length
    return marker + size.to_bytes(2, "big") + bytes((mtype,)) + body


def attr(flags: int, atype: int, value: bytes) -> bytes:
    if flags & 0x10:
        return bytes((flags, atype)) + len(value).to_bytes(2, "big") + value
    return bytes((flags, atype, len(value))) + value


def update(withdrawn: bytes = b"", attrs: bytes = b"", nlri: bytes = b"") -> bytes:
    body = len(withdrawn).to_bytes(2, "big") + withdrawn + len(attrs).to_bytes(2, "big")
    return msg(2, body + attrs + nlri)


def open_body(
    version: int = 4,
    asn: int = 65001,
    hold: int = 90,
    rid: bytes = b"\x0a\x00\x00\x01",
    params: bytes = b"",
    opt_len: int | None = None,
) -> bytes:
    olen = len(params) if opt_len is None else opt_len
    return (
        bytes((version,))
        + asn.to_bytes(2, "big")
        + hold.to_bytes(2, "big")
        + rid
        + bytes((olen,))
        + params
    )


ORIGIN = attr(0x40, 1, b"\x00")
AS_PATH = attr(0x40, 2, b"\x02\x01\x00\x00\xfd\xe9")  # AS_SEQUENCE [65001], 4-octet
NEXT_HOP = attr(0x40, 3, b"\x0a\x00\x00\x01")  # 10.0.0.1
BASE = ORIGIN + AS_PATH + NEXT_HOP
NLRI = b"\x10\x0a\x01"  # 10.1.0.0/16
MP_V6_HEAD = b"\x00\x02\x01\x10" + bytes.fromhex("fd000000000000000000000000000001") + b"\x00"
V6_NLRI = b"\x30\xfd\x00\x00\x00\x00\x01"  # fd00:0:0:1::/48 (6 bytes)


def _mp_reach(value: bytes, flags: int = 0x80) -> bytes:
    return attr(flags, 14, value)


CASES: list[Case] = [
    # --- message header (RFC 4271 §6.1) ----------------------------------------------------
    Case("header-bad-marker", msg(4, b"", marker=b"\xff" * 15 + b"\x00"), ("notify", 1, 1, b"")),
    Case("header-length-18", msg(4, b"", length=18), ("notify", 1, 2, b"\x00\x12")),
    Case("header-length-0", msg(4, b"", length=0), ("notify", 1, 2, b"\x00\x00")),
    Case(
        "header-length-4097",
        msg(2, b"\x00" * 4078, length=4097),
        ("notify", 1, 2, b"\x10\x01"),
    ),
    Case("header-type-0", msg(0, b""), ("notify", 1, 3, b"\x00")),
    Case("header-type-6", msg(6, b""), ("notify", 1, 3, b"\x06")),
    Case("header-type-255", msg(255, b""), ("notify", 1, 3, b"\xff")),
    Case("keepalive-with-body", msg(4, b"\x00"), ("notify", 1, 2, b"\x00\x14")),
    Case("open-length-28", msg(1, b"\x04" + b"\x00" * 8), ("notify", 1, 2, b"\x00\x1c")),
    Case("update-length-22", msg(2, b"\x00\x00\x00"), ("notify", 1, 2, b"\x00\x16")),
    Case("notification-length-20", msg(3, b"\x06"), ("notify", 1, 2, b"\x00\x14")),
    Case("route-refresh-length-24", msg(5, b"\x00\x01\x00\x01\x00"), ("notify", 1, 2, b"\x00\x18")),
    Case("route-refresh-length-22", msg(5, b"\x00\x01\x00"), ("notify", 1, 2, b"\x00\x16")),
    Case(
        "route-refresh-borr-length-27",
        msg(5, b"\x00\x01\x01\x01\x00\x00\x00\x00"),
        ("notify", 7, 1, msg(5, b"\x00\x01\x01\x01\x00\x00\x00\x00")),
    ),
    Case(
        "open-over-4096-with-extended-message",
        msg(1, open_body() + b"\x00" * 4080),
        ("notify", 1, 2, (19 + 10 + 4080).to_bytes(2, "big")),
        {"extended_message": True},
    ),
    Case("truncated-header", msg(4, b"")[:10], ("incomplete",)),
    Case("truncated-body", update(attrs=BASE, nlri=NLRI)[:30], ("incomplete",)),
    # --- OPEN (RFC 4271 §6.2, RFC 5492, RFC 9072) ----------------------------------------------
    Case("open-version-3", msg(1, open_body(version=3)), ("notify", 2, 1, b"\x00\x04")),
    Case("open-hold-time-1", msg(1, open_body(hold=1)), ("notify", 2, 6, b"")),
    Case("open-hold-time-2", msg(1, open_body(hold=2)), ("notify", 2, 6, b"")),
    Case("open-router-id-0", msg(1, open_body(rid=b"\x00\x00\x00\x00")), ("notify", 2, 3, b"")),
    Case(
        "open-param-type-1-authentication",
        msg(1, open_body(params=b"\x01\x02\xab\xcd")),
        ("notify", 2, 4, b""),
    ),
    Case(
        "open-opt-len-longer-than-body",
        msg(1, open_body(params=b"\x02\x02\x02\x00", opt_len=10)),
        ("notify", 2, 0, b""),
    ),
    Case(
        "open-param-overruns",
        msg(1, open_body(params=b"\x02\x09\x02\x00")),
        ("notify", 2, 0, b""),
    ),
    Case(
        "open-capability-overruns-param",
        msg(1, open_body(params=b"\x02\x04\x01\x04\x00\x01")),
        ("notify", 2, 0, b""),
    ),
    Case(
        "open-mp-capability-length-3",
        msg(1, open_body(params=b"\x02\x05\x01\x03\x00\x01\x00")),
        ("notify", 2, 0, b""),
    ),
    Case(
        "open-as4-capability-length-2",
        msg(1, open_body(params=b"\x02\x04\x41\x02\xfd\xe9")),
        ("notify", 2, 0, b""),
    ),
    Case(
        "open-addpath-capability-length-5",
        msg(1, open_body(params=b"\x02\x07\x45\x05\x00\x01\x01\x03\x00")),
        ("notify", 2, 0, b""),
    ),
    Case(
        "open-graceful-restart-length-3",
        msg(1, open_body(params=b"\x02\x05\x40\x03\x00\x78\x00")),
        ("notify", 2, 0, b""),
    ),
    # --- UPDATE structure (RFC 4271 §6.3, RFC 7606 §5.3) ---------------------------------------
    Case(
        "update-withdrawn-length-overrun",
        msg(2, b"\x00\x10\x00\x00"),
        ("notify", 3, 1, b""),
    ),
    Case(
        "update-attribute-length-overrun",
        msg(2, b"\x00\x00\x00\x20" + ORIGIN),
        ("notify", 3, 1, b""),
    ),
    Case(
        "update-nlri-length-33",
        update(attrs=BASE, nlri=b"\x21\x0a\x00\x00\x00\x00"),
        ("notify", 3, 10, b""),
    ),
    Case("update-nlri-truncated", update(attrs=BASE, nlri=b"\x18\x0a\x00"), ("notify", 3, 10, b"")),
    Case(
        "update-withdrawn-length-33",
        update(withdrawn=b"\x21\x0a\x00\x00\x00\x00"),
        ("notify", 3, 10, b""),
    ),
    Case("update-withdrawn-truncated", update(withdrawn=b"\x20\x0a"), ("notify", 3, 10, b"")),
    # --- per-attribute RFC 7606 handling -------------------------------------------------------
    Case(
        "origin-value-3",
        update(attrs=attr(0x40, 1, b"\x03") + AS_PATH + NEXT_HOP, nlri=NLRI),
        ("withdraw", "ORIGIN"),
    ),
    Case(
        "origin-length-2",
        update(attrs=attr(0x40, 1, b"\x00\x00") + AS_PATH + NEXT_HOP, nlri=NLRI),
        ("withdraw", "ORIGIN"),
    ),
    Case(
        "origin-flags-optional",
        update(attrs=attr(0xC0, 1, b"\x00") + AS_PATH + NEXT_HOP, nlri=NLRI),
        ("withdraw", "ORIGIN"),
    ),
    Case(
        "missing-origin",
        update(attrs=AS_PATH + NEXT_HOP, nlri=NLRI),
        ("withdraw", "missing well-known ORIGIN"),
    ),
    Case(
        "missing-as-path",
        update(attrs=ORIGIN + NEXT_HOP, nlri=NLRI),
        ("withdraw", "missing well-known AS_PATH"),
    ),
    Case(
        "missing-next-hop",
        update(attrs=ORIGIN + AS_PATH, nlri=NLRI),
        ("withdraw", "missing well-known NEXT_HOP"),
    ),
    Case("missing-all-attributes", update(nlri=NLRI), ("withdraw", "missing well-known ORIGIN")),
    Case(
        "as-path-segment-overrun",
        update(attrs=ORIGIN + attr(0x40, 2, b"\x02\x02\x00\x00\xfd\xe9") + NEXT_HOP, nlri=NLRI),
        ("withdraw", "AS_PATH"),
    ),
    Case(
        "as-path-segment-type-5",
        update(attrs=ORIGIN + attr(0x40, 2, b"\x05\x01\x00\x00\xfd\xe9") + NEXT_HOP, nlri=NLRI),
        ("withdraw", "AS_PATH"),
    ),
    Case(
        "as-path-zero-length-segment",
        update(attrs=ORIGIN + attr(0x40, 2, b"\x02\x00") + NEXT_HOP, nlri=NLRI),
        ("withdraw", "AS_PATH"),
    ),
    Case(
        "as-path-dangling-octet",
        update(attrs=ORIGIN + attr(0x40, 2, b"\x02\x01\x00\x00\xfd\xe9\x02") + NEXT_HOP, nlri=NLRI),
        ("withdraw", "AS_PATH"),
    ),
    Case(
        "as-path-flags-optional",
        update(attrs=ORIGIN + attr(0x80, 2, b"\x02\x01\x00\x00\xfd\xe9") + NEXT_HOP, nlri=NLRI),
        ("withdraw", "AS_PATH"),
    ),
    Case(
        "next-hop-length-5",
        update(attrs=ORIGIN + AS_PATH + attr(0x40, 3, b"\x0a\x00\x00\x01\x00"), nlri=NLRI),
        ("withdraw", "NEXT_HOP"),
    ),
    Case(
        "next-hop-0.0.0.0",
        update(attrs=ORIGIN + AS_PATH + attr(0x40, 3, b"\x00\x00\x00\x00"), nlri=NLRI),
        ("withdraw", "NEXT_HOP"),
    ),
    Case(
        "next-hop-multicast",
        update(attrs=ORIGIN + AS_PATH + attr(0x40, 3, b"\xe0\x00\x00\x05"), nlri=NLRI),
        ("withdraw", "NEXT_HOP"),
    ),
    Case(
        "med-length-3",
        update(attrs=BASE + attr(0x80, 4, b"\x00\x00\x01"), nlri=NLRI),
        ("withdraw", "MULTI_EXIT_DISC"),
    ),
    Case(
        "local-pref-length-5",
        update(attrs=BASE + attr(0x40, 5, b"\x00" * 5), nlri=NLRI),
        ("withdraw", "LOCAL_PREF"),
    ),
    Case(
        "atomic-aggregate-length-1",
        update(attrs=BASE + attr(0x40, 6, b"\x01"), nlri=NLRI),
        ("discard", "ATOMIC_AGGREGATE"),
    ),
    Case(
        "aggregator-length-7",
        update(attrs=BASE + attr(0xC0, 7, b"\x00" * 7), nlri=NLRI),
        ("discard", "AGGREGATOR"),
    ),
    Case(
        "aggregator-flags-non-transitive",
        update(attrs=BASE + attr(0x80, 7, b"\x00\x00\xfd\xe9\x0a\x00\x00\x01"), nlri=NLRI),
        ("discard", "AGGREGATOR"),
    ),
    Case(
        "communities-length-5",
        update(attrs=BASE + attr(0xC0, 8, b"\x00" * 5), nlri=NLRI),
        ("withdraw", "COMMUNITIES"),
    ),
    Case(
        "communities-length-0",
        update(attrs=BASE + attr(0xC0, 8, b""), nlri=NLRI),
        ("withdraw", "COMMUNITIES"),
    ),
    Case(
        "originator-id-length-3",
        update(attrs=BASE + attr(0x80, 9, b"\x00" * 3), nlri=NLRI),
        ("withdraw", "ORIGINATOR_ID"),
    ),
    Case(
        "cluster-list-length-6",
        update(attrs=BASE + attr(0x80, 10, b"\x00" * 6), nlri=NLRI),
        ("withdraw", "CLUSTER_LIST"),
    ),
    Case(
        "ext-communities-length-9",
        update(attrs=BASE + attr(0xC0, 16, b"\x00" * 9), nlri=NLRI),
        ("withdraw", "EXTENDED_COMMUNITIES"),
    ),
    Case(
        "large-communities-length-11",
        update(attrs=BASE + attr(0xC0, 32, b"\x00" * 11), nlri=NLRI),
        ("withdraw", "LARGE_COMMUNITY"),
    ),
    Case(
        "duplicate-origin",
        update(attrs=BASE + attr(0x40, 1, b"\x02"), nlri=NLRI),
        ("discard", "duplicate ORIGIN"),
    ),
    Case(
        "duplicate-mp-reach",
        update(attrs=ORIGIN + AS_PATH + _mp_reach(MP_V6_HEAD + V6_NLRI) * 2),
        ("notify", 3, 1, b""),
    ),
    Case(
        "duplicate-mp-unreach",
        update(attrs=attr(0x80, 15, b"\x00\x02\x01") * 2),
        ("notify", 3, 1, b""),
    ),
    Case(
        "mp-reach-next-hop-length-5-ipv6",
        update(
            attrs=ORIGIN
            + AS_PATH
            + _mp_reach(b"\x00\x02\x01\x05" + b"\x00" * 5 + b"\x00" + V6_NLRI)
        ),
        ("notify", 3, 9, b""),
    ),
    Case(
        "mp-reach-next-hop-length-16-ipv4-without-rfc8950",
        update(
            attrs=ORIGIN + AS_PATH + _mp_reach(b"\x00\x01\x01\x10" + b"\x20" * 16 + b"\x00" + NLRI)
        ),
        ("notify", 3, 9, b""),
    ),
    Case(
        "mp-reach-next-hop-overruns",
        update(attrs=ORIGIN + AS_PATH + _mp_reach(b"\x00\x02\x01\x20" + b"\x00" * 16)),
        ("notify", 3, 9, b""),
    ),
    Case(
        "mp-reach-length-3",
        update(attrs=ORIGIN + AS_PATH + _mp_reach(b"\x00\x02\x01")),
        ("notify", 3, 9, b""),
    ),
    Case(
        "mp-reach-nlri-length-129",
        update(attrs=ORIGIN + AS_PATH + _mp_reach(MP_V6_HEAD + b"\x81" + b"\x00" * 17)),
        ("notify", 3, 10, b""),
    ),
    Case(
        "mp-reach-nlri-truncated",
        update(attrs=ORIGIN + AS_PATH + _mp_reach(MP_V6_HEAD + b"\x40\xfd\x00")),
        ("notify", 3, 10, b""),
    ),
    Case("mp-unreach-length-2", update(attrs=attr(0x80, 15, b"\x00\x02")), ("notify", 3, 9, b"")),
    Case(
        "mp-reach-flags-transitive",
        update(attrs=ORIGIN + AS_PATH + _mp_reach(MP_V6_HEAD + V6_NLRI, flags=0xC0)),
        ("notify", 3, 4, None),
    ),
    Case(
        "unrecognized-well-known-attribute",
        update(attrs=BASE + attr(0x40, 99, b"\x01\x02"), nlri=NLRI),
        ("notify", 3, 2, attr(0x40, 99, b"\x01\x02")),
    ),
    Case(
        "attribute-overruns-block-with-nlri",
        update(attrs=BASE + b"\x40\x05\x04\x00\x00", nlri=NLRI),
        ("withdraw", "overruns"),
    ),
    Case(
        "attribute-header-truncated-with-nlri",
        update(attrs=BASE + b"\x40\x05", nlri=NLRI),
        ("withdraw", "truncated"),
    ),
    Case(
        "attribute-overrun-without-nlri",
        update(attrs=ORIGIN + b"\x40\x02\x09\x02\x01"),
        ("notify", 3, 1, b""),
    ),
    Case(
        "as4-path-malformed-from-2-octet-peer",
        update(
            attrs=ORIGIN
            + attr(0x40, 2, b"\x02\x01\x5b\xa0")
            + NEXT_HOP
            + attr(0xC0, 17, b"\x02\x02\x00\x00\x00\x01"),
            nlri=NLRI,
        ),
        ("discard", "AS4_PATH"),
        {"asn4": False},
    ),
    Case(
        "unknown-optional-non-transitive-dropped",
        update(attrs=BASE + attr(0x80, 200, b"\x01"), nlri=NLRI),
        ("ok", ""),
    ),
    Case(
        "malformed-origin-no-nlri",
        update(withdrawn=NLRI, attrs=attr(0x40, 1, b"\x07")),
        ("withdraw", "ORIGIN"),
    ),
]
