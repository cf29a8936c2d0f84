"""Decoding a feed of one-prefix UPDATEs, each with its own MED: the NLRI field of one IPv4
prefix is read as `decode_prefixes` reads it, and an attribute field equal to the last one
served outside its MED/LOCAL_PREF values comes from the cache without its headers walked
again. (test_codec_cache checks that the cache never changes a decode, malformed input too.)"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from bgpd.speaker import attrdecode
from bgpd.speaker.attrdecode import AttrCache
from bgpd.speaker.attributes import PathAttributes
from bgpd.speaker.context import CodecContext
from bgpd.speaker.errors import NotificationError
from bgpd.speaker.messages import decode_update, encode_updates, split_messages
from bgpd.speaker.nlri import decode_prefixes
from bgpd.speaker.types import AFI_IPV4, IPV4_UNICAST

CTX = CodecContext()
NH = 0xC6120001
BASE = PathAttributes(origin=0, as_path=((2, (64513,)),), next_hop=NH, med=0)


def _body(nlri_field: bytes) -> bytes:
    (wire,) = encode_updates(CTX, IPV4_UNICAST, BASE, [(0x0A000000, 8, 0)], (NH,))
    body = wire[19:]
    alen = (body[2] << 8) | body[3]
    return body[: 4 + alen] + nlri_field


def _nlri(body: bytes) -> object:
    try:
        return decode_update(body, CTX).announce.get(IPV4_UNICAST, [])
    except NotificationError as err:
        return ("error", err.code, err.subcode, str(err))


def _reference(field: bytes) -> object:
    try:
        return decode_prefixes(field, AFI_IPV4, False)
    except NotificationError as err:
        return ("error", err.code, err.subcode, str(err))


@given(plen=st.integers(0, 255), raw=st.binary(min_size=0, max_size=6))
@settings(max_examples=400, deadline=None)
def test_one_prefix_nlri_reads_as_decode_prefixes_reads_it(plen: int, raw: bytes) -> None:
    # Host bits set, lengths beyond /32, fields one byte short or long: all as before.
    field = bytes([plen]) + raw
    assert _nlri(_body(field)) == _reference(field)


def test_every_ipv4_length_with_host_bits_set() -> None:
    for plen in range(33):
        nbytes = (plen + 7) // 8
        field = bytes([plen]) + b"\xff" * nbytes
        (got,) = _nlri(_body(field))  # type: ignore[misc]
        assert got == ((0xFFFFFFFF << (32 - plen)) & 0xFFFFFFFF, plen, 0)


def _feed(n: int, **extra: int) -> list[bytes]:
    out = []
    for i in range(n):
        attrs = PathAttributes(origin=0, as_path=((2, (64513,)),), next_hop=NH, med=i, **extra)
        (wire,) = encode_updates(CTX, IPV4_UNICAST, attrs, [(0x0A000000 + (i << 8), 24, 0)], (NH,))
        out.append(wire[19:])
    return out


def test_a_new_med_on_the_last_set_skips_the_header_walk(monkeypatch) -> None:
    keys: list[bytes] = []
    real = attrdecode._cache_key

    def counted(*args):  # type: ignore[no-untyped-def]
        key = real(*args)
        keys.append(key)
        return key

    monkeypatch.setattr(attrdecode, "_cache_key", counted)
    for extra in ({}, {"local_pref": 7}):
        keys.clear()
        cache = AttrCache()
        got = [decode_update(body, CTX, cache).attrs for body in _feed(50, **extra)]
        assert [a.med for a in got] == list(range(50))  # type: ignore[union-attr]
        assert all(a.as_path == BASE.as_path for a in got)  # type: ignore[union-attr]
        # The first UPDATE misses (a key on the fast path, one in the general path that fills
        # the cache), the second finds it by its key; every later one by the second's bytes.
        assert len(keys) == 3 and cache.hits == 49 and cache.misses == 1


def test_a_run_through_one_next_hop_shares_one_next_hop_tuple() -> None:
    cache = AttrCache()
    hops = [decode_update(body, CTX, cache).next_hop[IPV4_UNICAST] for body in _feed(20)]
    assert hops[0] == (NH,) and all(h is hops[0] for h in hops)  # not a tuple per route
    other = PathAttributes(origin=0, as_path=((2, (64513,)),), next_hop=NH + 1, med=1)
    (wire,) = encode_updates(CTX, IPV4_UNICAST, other, [(0x0A000000, 24, 0)], (NH + 1,))
    assert decode_update(wire[19:], CTX, cache).next_hop[IPV4_UNICAST] == (NH + 1,)
    assert decode_update(wire[19:], CTX).next_hop[IPV4_UNICAST] == (NH + 1,)  # no cache


def test_update_lengths_outside_the_limits_still_fail_framing() -> None:
    (wire,) = encode_updates(CTX, IPV4_UNICAST, BASE, [(0x0A000000, 24, 0)], (NH,))
    for length in (19, 22, 4097):
        raw = bytearray(wire[:16] + length.to_bytes(2, "big") + wire[18:])
        raw += bytes(max(0, length - len(raw)))
        try:
            split_messages(raw, CTX)
        except NotificationError as err:
            assert (err.code, err.subcode, err.data) == (1, 2, length.to_bytes(2, "big"))
        else:
            raise AssertionError(f"UPDATE of length {length} framed")
    frames = split_messages(bytearray(wire + wire), CTX)
    assert frames == [(2, wire[19:]), (2, wire[19:])]
