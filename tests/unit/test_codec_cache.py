"""The per-session attribute cache: decoding with it gives exactly what decoding without it gives,
and UPDATEs that differ only in MED or LOCAL_PREF decode the rest of their attributes once."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bgpd.speaker.attrdecode import AttrCache, _vary, decode_attributes
from bgpd.speaker.attributes import PathAttributes, encode_attributes
from bgpd.speaker.context import CodecContext
from bgpd.speaker.errors import NotificationError
from bgpd.speaker.messages import decode_message, encode_updates, split_messages
from bgpd.speaker.types import IPV4_UNICAST, IPV6_UNICAST
from tests.unit.test_codec_fuzz import mutated
from tests.unit.test_codec_roundtrip import path_attributes

CTX = CodecContext()
NH = (0xC6120001,)
BASE = PathAttributes(origin=0, as_path=((2, (65001, 65002)),), communities=(0xFFFF0001,))


def _bodies(attrs_list: list[PathAttributes], fam=IPV4_UNICAST, ctx: CodecContext = CTX):
    nh = NH if fam == IPV4_UNICAST else (0xFD00 << 112 | 1,)
    out = []
    for i, attrs in enumerate(attrs_list):
        (wire,) = encode_updates(ctx, fam, attrs, [(0x64400000 + (i << 3), 29, 0)], nh)
        out.append(wire[19:])
    return out


def _outcome(body: bytes, ctx: CodecContext, cache: AttrCache | None):
    try:
        upd = decode_message(2, body, ctx, cache)
    except NotificationError as err:
        return ("error", err.code, err.subcode, err.data, str(err))
    return (
        upd.attrs,
        upd.announce,
        upd.next_hop,
        upd.withdraw,
        upd.treat_as_withdraw,
        upd.diagnostics,
    )


def test_updates_differing_in_med_decode_the_rest_once():
    bodies = _bodies([replace(BASE, med=i) for i in range(1000)])
    cache = AttrCache()
    got = [decode_message(2, b, CTX, cache) for b in bodies]
    assert (cache.misses, cache.hits) == (1, 999)
    assert len(cache) == 1
    assert [u.attrs.med for u in got] == list(range(1000))
    assert all(replace(u.attrs, med=None) == replace(BASE, next_hop=NH[0]) for u in got)
    # The AS path is walked once for the whole family of sets, not once per UPDATE.
    first = got[0].attrs.asns()
    assert first == (65001, 65002)
    assert all(u.attrs.asns() is first for u in got)


def test_local_pref_and_med_both_vary_on_one_entry():
    sets = [replace(BASE, med=i % 7, local_pref=100 + i % 3) for i in range(50)]
    cache = AttrCache()
    got = [decode_message(2, b, CTX, cache).attrs for b in _bodies(sets)]
    assert cache.misses == 1
    assert got == [replace(a, next_hop=NH[0]) for a in sets]


def test_same_bytes_share_one_object():
    a, b = _bodies([replace(BASE, med=5), replace(BASE, med=6)])
    cache = AttrCache()
    first = decode_message(2, a, CTX, cache).attrs
    assert decode_message(2, a, CTX, cache).attrs is first
    second = decode_message(2, b, CTX, cache).attrs
    assert second is not first and second.med == 6
    assert decode_message(2, b, CTX, cache).attrs is second


def test_other_attributes_differing_miss_the_cache():
    sets = [replace(BASE, med=1, communities=(i,)) for i in range(1, 4)]
    cache = AttrCache()
    got = [decode_message(2, b, CTX, cache).attrs for b in _bodies(sets)]
    assert cache.misses == 3
    assert got == [replace(a, next_hop=NH[0]) for a in sets]


def test_asn_size_is_part_of_the_key():
    # The same bytes under a 2-octet session mean other ASNs than under a 4-octet one.
    two = CodecContext(asn4=False)
    attrs = replace(BASE, as_path=((2, (65001, 65002)),), med=1)
    raw = encode_attributes(attrs, two)
    cache = AttrCache()
    as2 = decode_attributes(raw, two, cache=cache).attrs
    as4 = decode_attributes(raw, CTX, cache=cache).attrs
    assert as2.as_path == ((2, (65001, 65002)),)
    assert as4.as_path != as2.as_path
    assert cache.misses == 2


def test_malformed_med_is_never_served_from_the_cache():
    good, bad = _bodies([replace(BASE, med=1), replace(BASE, med=2)])
    # Give the second UPDATE's MED a wrong length: 3 octets instead of 4.
    at = bad.index(bytes((0x80, 4, 4)))
    bad = bad[: at + 2] + b"\x03" + bad[at + 3 : at + 6] + bad[at + 7 :]
    bad = bad[:2] + (int.from_bytes(bad[2:4], "big") - 1).to_bytes(2, "big") + bad[4:]
    cache = AttrCache()
    decode_message(2, good, CTX, cache)
    upd = decode_message(2, bad, CTX, cache)
    assert upd.treat_as_withdraw and upd.announce == {}
    assert any("MULTI_EXIT_DISC" in d for d in upd.diagnostics)
    assert _outcome(bad, CTX, None) == _outcome(bad, CTX, AttrCache())


def test_vary_matches_replace_for_every_field():
    full = PathAttributes(
        origin=1,
        as_path=((2, (1, 2)), (1, (3,))),
        next_hop=0x0A000001,
        med=1,
        local_pref=2,
        atomic_aggregate=True,
        aggregator=(65001, 0x0A000002),
        communities=(1, 2),
        originator_id=0x0A000003,
        cluster_list=(4,),
        ext_communities=(b"\x00\x02\x00\x00\x00\x00\x00\x01",),
        large_communities=((1, 2, 3),),
        unknown=((0xC0, 99, b"x"),),
    )
    full.asns()
    got = _vary(full, 7, 8)
    assert got == replace(full, med=7, local_pref=8)
    assert got.asns() is full.asns()
    # Every slot is set, including any added later that equality does not compare.
    for name in PathAttributes.__slots__:
        getattr(got, name)
    assert hash(got) == hash(replace(full, med=7, local_pref=8))


@given(st.lists(path_attributes(True, with_next_hop=False), min_size=1, max_size=6), st.data())
@settings(max_examples=60, deadline=None)
def test_cache_never_changes_a_decode(sets, data):
    # Sets drawn at random, then repeated with only MED/LOCAL_PREF changed, in random order.
    variants = []
    for attrs in sets:
        for _ in range(data.draw(st.integers(1, 3))):
            variants.append(
                replace(
                    attrs,
                    med=data.draw(st.none() | st.integers(0, 0xFFFFFFFF)),
                    local_pref=data.draw(st.none() | st.integers(0, 0xFFFFFFFF)),
                )
            )
    order = data.draw(st.permutations(variants))
    fam = data.draw(st.sampled_from([IPV4_UNICAST, IPV6_UNICAST]))
    bodies = _bodies(order, fam)
    cache = AttrCache()
    for body in bodies + bodies:
        assert _outcome(body, CTX, cache) == _outcome(body, CTX, None)


@given(st.lists(mutated(), min_size=1, max_size=8))
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_cache_never_changes_a_decode_of_mutated_bytes(raws):
    # Malformed and odd inputs through one shared cache, as a session sees them.
    for ctx in (CTX, CodecContext(asn4=False)):
        cache = AttrCache()
        for raw in raws + raws:
            try:
                msgs = split_messages(bytearray(raw), ctx)
            except NotificationError:
                continue
            for mtype, body in msgs:
                if mtype == 2:
                    assert _outcome(body, ctx, cache) == _outcome(body, ctx, None)
