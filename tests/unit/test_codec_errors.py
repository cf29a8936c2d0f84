"""Every malformed message in tests/malformed_cases.py gets exactly the outcome the RFCs demand."""

from __future__ import annotations

import pytest

from bgpd.speaker.context import CodecContext
from bgpd.speaker.errors import NotificationError
from bgpd.speaker.messages import Update, decode_message, split_messages
from bgpd.speaker.types import IPV4_UNICAST
from tests.malformed_cases import CASES, Case


def _run(case: Case) -> list[object]:
    ctx = CodecContext(**case.ctx)
    buf = bytearray(case.raw)
    frames = split_messages(buf, ctx)
    return [decode_message(t, body, ctx) for t, body in frames]


def test_table_has_at_least_40_distinct_cases() -> None:
    names = [c.name for c in CASES]
    assert len(names) >= 40
    assert len(set(names)) == len(names)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_malformed(case: Case) -> None:
    kind = case.expect[0]
    if kind == "notify":
        _, code, subcode, data = case.expect
        with pytest.raises(NotificationError) as info:
            _run(case)
        err = info.value
        assert (err.code, err.subcode) == (code, subcode), str(err)
        if data is not None:
            assert err.data == data
        assert err.reason  # every error says where it happened
        return
    msgs = _run(case)
    if kind == "incomplete":
        assert msgs == []
        return
    assert len(msgs) == 1
    upd = msgs[0]
    assert isinstance(upd, Update)
    text = case.expect[1]
    assert any(text in d for d in upd.diagnostics) or not text, upd.diagnostics
    if kind == "withdraw":
        assert upd.treat_as_withdraw
        assert upd.announce == {}
        # the NLRI of the message are withdrawn, not silently dropped
        assert upd.withdraw[IPV4_UNICAST]
        assert any(d.startswith("treat-as-withdraw") for d in upd.diagnostics)
    elif kind == "discard":
        assert not upd.treat_as_withdraw
        assert upd.announce[IPV4_UNICAST] == [(0x0A010000, 16, 0)]
        assert any(d.startswith("attribute-discard") for d in upd.diagnostics)
    else:
        assert kind == "ok"
        assert not upd.treat_as_withdraw
        assert upd.announce[IPV4_UNICAST] == [(0x0A010000, 16, 0)]


def test_discarded_attribute_is_absent_but_others_kept() -> None:
    case = next(c for c in CASES if c.name == "aggregator-length-7")
    (upd,) = _run(case)
    assert upd.attrs.aggregator is None
    assert upd.attrs.origin == 0 and upd.attrs.next_hop == 0x0A000001


def test_duplicate_keeps_first_value() -> None:
    case = next(c for c in CASES if c.name == "duplicate-origin")
    (upd,) = _run(case)
    assert upd.attrs.origin == 0  # the second ORIGIN said INCOMPLETE (2)


def test_unknown_non_transitive_is_not_passed_on() -> None:
    case = next(c for c in CASES if c.name == "unknown-optional-non-transitive-dropped")
    (upd,) = _run(case)
    assert upd.attrs.unknown == ()


def test_split_consumes_good_messages_before_a_bad_one() -> None:
    keepalive = b"\xff" * 16 + b"\x00\x13\x04"
    buf = bytearray(keepalive + b"\xff" * 16 + b"\x00\x13\x09")
    with pytest.raises(NotificationError) as info:
        split_messages(buf, CodecContext())
    assert (info.value.code, info.value.subcode, info.value.data) == (1, 3, b"\x09")
    assert bytes(buf) == b"\xff" * 16 + b"\x00\x13\x09"


def test_header_error_raised_before_body_arrives() -> None:
    buf = bytearray(b"\xff" * 16 + b"\x00\x13\x02")  # UPDATE of 19 bytes: too short
    with pytest.raises(NotificationError) as info:
        split_messages(buf, CodecContext())
    assert (info.value.code, info.value.subcode, info.value.data) == (1, 2, b"\x00\x13")


def test_extended_message_allows_long_update() -> None:
    from tests.malformed_cases import BASE, NLRI, update

    raw = update(
        attrs=BASE + b"\xd0\x08" + (5000).to_bytes(2, "big") + b"\x00" * 5000,
        nlri=NLRI,
    )
    with pytest.raises(NotificationError):
        split_messages(bytearray(raw), CodecContext())
    (frame,) = split_messages(bytearray(raw), CodecContext(extended_message=True))
    upd = decode_message(*frame, CodecContext(extended_message=True))
    assert len(upd.attrs.communities) == 1250
