"""The live malformed-input table: tests/malformed_cases.py adapted for a real TCP session.

Adds per case the stage it is sent at (instead of our OPEN, or once Established) and the
options our OPEN must negotiate, moves its IPv4 prefix into the lab's 10.244.0.0/16, and
appends cases only a live session can show (peer AS, no common family, FSM errors).
"""

from __future__ import annotations

from typing import Any, NamedTuple

from tests.malformed_cases import CASES, msg, open_body

# The shared table announces 10.1.0.0/16; the lab keeps route prefixes inside 10.244.0.0/16,
# so the live suite sends 10.244.0.0/16 (same length on the wire, so every length still holds).
SHARED_PREFIX_WIRE = b"\x10\x0a\x01"
LIVE_PREFIX = "10.244.0.0/16"
LIVE_PREFIX_WIRE = b"\x10\x0a\xf4"

PEER_ASN = 65001  # the AS the shared table's AS_PATHs and OPENs carry


class LiveCase(NamedTuple):
    """One live case.

    stage: "open" (sent instead of our OPEN) or "established" (after the handshake).
    expect: as in tests/malformed_cases.py, plus ("closed",): the daemon closes silently.
    asn4 / extended_message: what our OPEN offers, so the session reads the case as the codec
    tests do. route: for RFC 7606 cases, fields the surviving route must show.
    """

    name: str
    raw: bytes
    expect: tuple[Any, ...]
    stage: str
    asn4: bool = True
    extended_message: bool = False
    route: dict[str, Any] = {}


def relocate_prefix(raw: bytes) -> bytes:
    """Swap 10.1.0.0/16 for 10.244.0.0/16 in an UPDATE's withdrawn or NLRI field.

    Only when the UPDATE's own lengths are consistent, so a deliberately broken structure is
    sent exactly as the shared table has it.
    """
    if len(raw) < 23 or raw[18] != 2 or int.from_bytes(raw[16:18], "big") != len(raw):
        return raw
    body = raw[19:]
    wlen = int.from_bytes(body[0:2], "big")
    if 4 + wlen > len(body):
        return raw
    alen = int.from_bytes(body[2 + wlen : 4 + wlen], "big")
    if 4 + wlen + alen > len(body):
        return raw
    withdrawn = body[2 : 2 + wlen]
    nlri = body[4 + wlen + alen :]
    if withdrawn == SHARED_PREFIX_WIRE:
        withdrawn = LIVE_PREFIX_WIRE
    if nlri == SHARED_PREFIX_WIRE:
        nlri = LIVE_PREFIX_WIRE
    return raw[:19] + body[0:2] + withdrawn + body[2 + wlen : 4 + wlen + alen] + nlri


# Expected route fields after an attribute-discard case, where the route JSON can show them.
_ROUTE_CHECKS: dict[str, dict[str, Any]] = {
    # The second ORIGIN (incomplete) is dropped; the first (IGP) stays.
    "duplicate-origin": {"origin": "IGP", "as_path": [PEER_ASN]},
    # A malformed AS4_PATH is discarded, so the 2-octet AS_PATH is used as it came.
    "as4-path-malformed-from-2-octet-peer": {"as_path": [23456]},
    "unknown-optional-non-transitive-dropped": {"origin": "IGP", "as_path": [PEER_ASN]},
}


def _from_shared() -> list[LiveCase]:
    out = []
    for case in CASES:
        ctx = dict(case.ctx)
        # An OPEN-type message goes in place of our OPEN unless the case needs options that
        # only a negotiated session has; then it follows the handshake.
        stage = "open" if case.raw[18:19] == b"\x01" and not ctx else "established"
        out.append(
            LiveCase(
                name=case.name,
                raw=relocate_prefix(case.raw),
                expect=case.expect,
                stage=stage,
                asn4=ctx.get("asn4", True),
                extended_message=ctx.get("extended_message", False),
                route=_ROUTE_CHECKS.get(case.name, {}),
            )
        )
    return out


def _caps(*tlvs: bytes) -> bytes:
    body = b"".join(tlvs)
    return bytes((2, len(body))) + body


_CAP_AS4_65001 = b"\x41\x04" + PEER_ASN.to_bytes(4, "big")
_CAP_MP_V4 = b"\x01\x04\x00\x01\x00\x01"
_CAP_MP_V6 = b"\x01\x04\x00\x02\x00\x01"
_CAP_MP_V4_MULTICAST = b"\x01\x04\x00\x01\x00\x02"
_RID = b"\xc6\x12\x1f\x02"  # 198.18.31.2, the raw peer's own address

LIVE_ONLY: list[LiveCase] = [
    # RFC 4271 §6.2: the AS in OPEN must be the configured remote AS; data is empty.
    LiveCase(
        "open-bad-peer-as",
        msg(1, open_body(asn=65002, rid=_RID, params=_caps(_CAP_MP_V4))),
        ("notify", 2, 2, b""),
        "open",
    ),
    # With the 4-octet AS capability, its AS (not the 2-octet field) is the peer's AS.
    LiveCase(
        "open-as4-capability-names-other-as",
        msg(
            1,
            open_body(
                asn=PEER_ASN, rid=_RID, params=_caps(_CAP_MP_V4, b"\x41\x04\x00\x01\x00\x00")
            ),
        ),
        ("notify", 2, 2, b""),
        "open",
    ),
    # RFC 5492 §3: no family in common; the data lists the capabilities we need (ours, as
    # capability TLVs: IPv4 unicast and IPv6 unicast).
    LiveCase(
        "open-no-common-family",
        msg(1, open_body(asn=PEER_ASN, rid=_RID, params=_caps(_CAP_MP_V4_MULTICAST))),
        ("notify", 2, 7, _CAP_MP_V4 + _CAP_MP_V6),
        "open",
    ),
    # RFC 6608: a KEEPALIVE or UPDATE before the peer's OPEN is an FSM error in OpenSent.
    LiveCase("fsm-keepalive-in-opensent", msg(4, b""), ("notify", 5, 1, b""), "open"),
    LiveCase("fsm-update-in-opensent", msg(2, b"\x00\x00\x00\x00"), ("notify", 5, 1, b""), "open"),
    # RFC 6608: a second OPEN on an Established session.
    LiveCase(
        "fsm-open-in-established",
        msg(1, open_body(asn=PEER_ASN, rid=_RID, params=_caps(_CAP_MP_V4, _CAP_AS4_65001))),
        ("notify", 5, 3, b""),
        "established",
    ),
    # A NOTIFICATION from the peer ends the session; RFC 4271 §6.4: no NOTIFICATION back.
    LiveCase("peer-sends-cease", msg(3, b"\x06\x02"), ("closed",), "established"),
]

LIVE_CASES: list[LiveCase] = _from_shared() + LIVE_ONLY
