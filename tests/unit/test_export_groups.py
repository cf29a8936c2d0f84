"""Update groups: Adj-RIB-Out diffs, batching by attribute set, shared encoded bytes, ADD-PATH
tx ids, split horizon per member, forced refresh and exact withdrawals."""

from __future__ import annotations

from bgpd.reflector.export import ExportPolicy, LocalView
from bgpd.reflector.groups import EncodeCache, Outbound, export_changes
from bgpd.speaker.attributes import PathAttributes
from bgpd.speaker.bestpath import DecisionConfig, make_decider
from bgpd.speaker.context import CodecContext
from bgpd.speaker.messages import Update, decode_message, split_messages
from bgpd.speaker.rib import AttrInterner, LocRib, Path, Source
from bgpd.speaker.types import IPV4_UNICAST

ASN = 64512
LOCAL = LocalView(ASN, 0x0A000001, cluster_id=0xF4000001)
CTX = CodecContext()
CTX_AP = CodecContext(addpath_tx=frozenset({IPV4_UNICAST}))
AP_RX = CodecContext(addpath_rx=frozenset({IPV4_UNICAST}))  # how the client reads them
C1 = Source("198.18.0.11", 11, 0xC612000B, ASN, False, rr_client=True)
C2 = Source("198.18.0.12", 12, 0xC612000C, ASN, False, rr_client=True)


def client(n: int, ctx: CodecContext = CTX) -> Outbound:
    pol = ExportPolicy(IPV4_UNICAST, False, ASN, True, "auto", (0xC6120001,), addpath=ctx is CTX_AP)
    return Outbound(f"198.18.0.{n}", 0xC6120000 + n, ctx, {IPV4_UNICAST: pol})


def rib_with(paths: list[tuple[int, Path]]) -> LocRib:
    rib = LocRib(make_decider(DecisionConfig()))
    for i, p in paths:
        rib.update(IPV4_UNICAST, (0x0AF40000 | (i << 8), 24), p)
    return rib


def changes(rib: LocRib):
    return [(prefix, dest) for _, prefix, dest, _ in rib.decide(rib.take_dirty(100000))]


def decode_all(msgs: list[bytes], ctx: CodecContext = CTX) -> list[Update]:
    buf = bytearray(b"".join(msgs))
    return [decode_message(t, body, ctx) for t, body in split_messages(buf, ctx)]


def test_prefixes_sharing_attributes_go_in_one_update_and_members_share_bytes() -> None:
    attrs = PathAttributes(origin=0, local_pref=100)
    rib = rib_with([(i, Path(C1, attrs, (0xC6120063,))) for i in range(50)])
    members = [client(n) for n in range(20, 30)]
    enc = EncodeCache()
    out = export_changes(IPV4_UNICAST, changes(rib), members, LOCAL, AttrInterner(), enc)
    assert len(out) == 10
    first = out[0][1]
    assert len(first) == 1  # 50 prefixes, one attribute set: one UPDATE
    for _m, msgs in out[1:]:
        assert msgs[0] is first[0]  # the very same bytes object
    assert enc.hits == 9
    (upd,) = decode_all(first)
    assert len(upd.announce[IPV4_UNICAST]) == 50
    assert upd.attrs.originator_id == C1.router_id and upd.attrs.cluster_list == (0xF4000001,)
    assert all(m.rib_out.count() == 50 == m.rib_out.count(IPV4_UNICAST) for m in members)


def test_source_member_gets_nothing_and_others_get_it() -> None:
    rib = rib_with([(1, Path(C1, PathAttributes(origin=0), (0xC612000B,)))])
    src, other = client(11), client(12)
    src.router_id = C1.router_id
    out = dict(
        (m.key, msgs)
        for m, msgs in export_changes(
            IPV4_UNICAST, changes(rib), [src, other], LOCAL, AttrInterner()
        )
    )
    assert src.key not in out and other.key in out
    assert src.rib_out.count() == 0 and other.rib_out.count() == 1


def test_unchanged_prefix_sends_nothing_until_forced_and_withdraw_is_exact() -> None:
    p = Path(C1, PathAttributes(origin=0), (0xC612000B,))
    rib = rib_with([(1, p)])
    m = client(20)
    it = AttrInterner()
    ch = changes(rib)
    assert export_changes(IPV4_UNICAST, ch, [m], LOCAL, it)
    assert export_changes(IPV4_UNICAST, ch, [m], LOCAL, it) == []
    assert len(export_changes(IPV4_UNICAST, ch, [m], LOCAL, it, force=True)) == 1
    rib.withdraw(IPV4_UNICAST, (0x0AF40100, 24), C1.key, 0)
    ((_, msgs),) = export_changes(IPV4_UNICAST, changes(rib), [m], LOCAL, it)
    (upd,) = decode_all(msgs)
    assert upd.withdraw[IPV4_UNICAST] == [(0x0AF40100, 24, 0)]
    assert m.rib_out.count() == 0
    # Withdrawing again is a no-op: the peer holds nothing of it any more.
    assert export_changes(IPV4_UNICAST, [((0x0AF40100, 24), None)], [m], LOCAL, it) == []


def test_add_path_sends_every_path_with_our_tx_ids() -> None:
    a = Path(C1, PathAttributes(origin=0), (0xC612000B,))
    b = Path(C2, PathAttributes(origin=0), (0xC612000C,))
    rib = rib_with([(1, a), (1, b)])
    ap, plain = client(20, CTX_AP), client(21)
    out = dict(
        (m.key, msgs)
        for m, msgs in export_changes(
            IPV4_UNICAST, changes(rib), [ap, plain], LOCAL, AttrInterner()
        )
    )
    ap_nlri = sorted(n for u in decode_all(out[ap.key], AP_RX) for n in u.announce[IPV4_UNICAST])
    assert ap_nlri == [(0x0AF40100, 24, 1), (0x0AF40100, 24, 2)]
    plain_nlri = [n for u in decode_all(out[plain.key]) for n in u.announce[IPV4_UNICAST]]
    assert plain_nlri == [(0x0AF40100, 24, 0)]
    # Path b goes away: the ADD-PATH peer gets a withdraw of exactly tx id 2.
    rib.withdraw(IPV4_UNICAST, (0x0AF40100, 24), C2.key, 0)
    out = dict(
        (m.key, msgs)
        for m, msgs in export_changes(
            IPV4_UNICAST, changes(rib), [ap, plain], LOCAL, AttrInterner()
        )
    )
    (upd,) = decode_all(out[ap.key], AP_RX)
    assert upd.withdraw[IPV4_UNICAST] == [(0x0AF40100, 24, 2)]


def test_attributes_too_big_for_the_peer_are_skipped_not_fatal(caplog) -> None:
    huge = PathAttributes(origin=0, communities=tuple(range(1, 1100)))  # 4.4 kB > 4096
    rib = rib_with(
        [(1, Path(C1, huge, (0xC612000B,))), (2, Path(C1, PathAttributes(origin=0), (0xC612000B,)))]
    )
    small, big = client(20), client(21, CodecContext(extended_message=True))
    out = dict(
        (m.key, msgs)
        for m, msgs in export_changes(
            IPV4_UNICAST, changes(rib), [small, big], LOCAL, AttrInterner()
        )
    )
    # The 4096-byte peer gets the route that fits; the extended-message peer gets both.
    assert sum(len(u.announce.get(IPV4_UNICAST, [])) for u in decode_all(out[small.key])) == 1
    ext = CodecContext(extended_message=True)
    assert sum(len(u.announce.get(IPV4_UNICAST, [])) for u in decode_all(out[big.key], ext)) == 2
    assert "routes not sent" in caplog.text
