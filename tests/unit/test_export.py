"""The export decision: split horizon, RFC 4456 reflection, well-known communities, next-hop
modes, eBGP rewriting, private AS, export filters, and the import loop checks."""

from __future__ import annotations

import pytest

from bgpd.reflector.export import (
    NO_ADVERTISE,
    NO_EXPORT,
    NO_EXPORT_SUBCONFED,
    ExportPolicy,
    LocalView,
    export_path,
    import_loop,
    is_own,
)
from bgpd.reflector.filters import Filter, Rule
from bgpd.speaker.attributes import AS_SEQUENCE, PathAttributes
from bgpd.speaker.rib import Path, Source
from bgpd.speaker.types import IPV4_UNICAST

ASN, RID, CLUSTER = 64512, 0x0A000001, 0xF4000001
SELF_NH = (0xC6120001,)
PEER_NH = (0xC6120063,)
PREFIX = (0x0AF40100, 24)
PLAIN = LocalView(ASN, RID)
RR = LocalView(ASN, RID, cluster_id=CLUSTER)

IBGP_CLIENT = Source("c1", 1, 0x01010101, ASN, False, rr_client=True)
IBGP_NONCLIENT = Source("n1", 2, 0x02020202, ASN, False)
EBGP = Source("e1", 3, 0x03030303, 65001, True)
LOCAL = Source("local", 0, RID, ASN, False, local=True)


def mk(source: Source, **kw) -> Path:
    a = dict(origin=0, as_path=() if not source.ebgp else ((AS_SEQUENCE, (65001,)),))
    if not source.ebgp and not source.local:
        a["local_pref"] = 100
    a.update(kw)
    return Path(source, PathAttributes(**a), () if source.local else PEER_NH)


def pol(*, ebgp=False, client=False, mode="auto", **kw) -> ExportPolicy:
    return ExportPolicy(IPV4_UNICAST, ebgp, 65002 if ebgp else ASN, client, mode, SELF_NH, **kw)


def test_ibgp_split_horizon_without_reflection() -> None:
    assert export_path(mk(IBGP_NONCLIENT), PREFIX, pol(), PLAIN) is None
    assert export_path(mk(IBGP_CLIENT), PREFIX, pol(client=True), PLAIN) is None
    # ...but iBGP routes do go to eBGP peers, and eBGP routes to iBGP peers.
    assert export_path(mk(IBGP_NONCLIENT), PREFIX, pol(ebgp=True), PLAIN) is not None
    assert export_path(mk(EBGP), PREFIX, pol(), PLAIN) is not None


@pytest.mark.parametrize(
    "source,to_client,sent",
    [
        (IBGP_CLIENT, True, True),
        (IBGP_CLIENT, False, True),
        (IBGP_NONCLIENT, True, True),
        (IBGP_NONCLIENT, False, False),
    ],
)
def test_reflection_rules(source, to_client, sent) -> None:
    out = export_path(mk(source), PREFIX, pol(client=to_client), RR)
    assert (out is not None) == sent
    if out is not None:
        attrs, nh = out
        assert attrs.originator_id == source.router_id
        assert attrs.cluster_list == (CLUSTER,)
        assert nh == PEER_NH  # reflection keeps the next hop


def test_client_to_client_reflection_can_be_switched_off() -> None:
    rr = LocalView(ASN, RID, cluster_id=CLUSTER, client_to_client=False)
    assert export_path(mk(IBGP_CLIENT), PREFIX, pol(client=True), rr) is None
    assert export_path(mk(IBGP_CLIENT), PREFIX, pol(client=False), rr) is not None


def test_reflection_keeps_an_existing_originator_and_prepends_cluster() -> None:
    p = mk(IBGP_CLIENT, originator_id=77, cluster_list=(5,))
    attrs, _ = export_path(p, PREFIX, pol(client=False), RR)
    assert attrs.originator_id == 77 and attrs.cluster_list == (CLUSTER, 5)


def test_locally_originated_and_ebgp_routes_are_not_reflected_attrs() -> None:
    attrs, nh = export_path(mk(EBGP), PREFIX, pol(client=True), RR)
    assert attrs.originator_id is None and attrs.cluster_list == ()
    assert nh == SELF_NH and attrs.local_pref == 100


def test_ebgp_export_prepends_strips_local_pref_rr_attrs_and_foreign_med() -> None:
    p = mk(IBGP_CLIENT, med=50, originator_id=9, cluster_list=(3,), local_pref=300)
    attrs, nh = export_path(p, PREFIX, pol(ebgp=True), RR)
    assert attrs.as_path == ((AS_SEQUENCE, (ASN,)),)
    assert attrs.local_pref is None and attrs.med is None
    assert attrs.originator_id is None and attrs.cluster_list == ()
    assert nh == SELF_NH
    e = mk(EBGP, med=7)
    attrs, _ = export_path(e, PREFIX, pol(ebgp=True), PLAIN)
    assert attrs.as_path == ((AS_SEQUENCE, (ASN, 65001)),) and attrs.med is None
    own = mk(LOCAL, med=7)
    assert export_path(own, PREFIX, pol(ebgp=True), PLAIN)[0].med == 7


def test_private_as_removed_only_when_asked() -> None:
    p = mk(EBGP, as_path=((AS_SEQUENCE, (65001, 64999, 4200000001, 3356)),))
    keep, _ = export_path(p, PREFIX, pol(ebgp=True), PLAIN)
    assert keep.as_path == ((AS_SEQUENCE, (ASN, 65001, 64999, 4200000001, 3356)),)
    strip, _ = export_path(p, PREFIX, pol(ebgp=True, remove_private_as=True), PLAIN)
    assert strip.as_path == ((AS_SEQUENCE, (ASN, 3356)),)


def test_not_sent_to_an_ebgp_peer_already_on_the_path() -> None:
    p = mk(EBGP, as_path=((AS_SEQUENCE, (65001, 65002)),))
    assert export_path(p, PREFIX, pol(ebgp=True), PLAIN) is None


@pytest.mark.parametrize(
    "community,to_ibgp,to_ebgp",
    [(NO_ADVERTISE, False, False), (NO_EXPORT, True, False), (NO_EXPORT_SUBCONFED, True, False)],
)
def test_well_known_communities(community, to_ibgp, to_ebgp) -> None:
    p = mk(EBGP, communities=(community,))
    assert (export_path(p, PREFIX, pol(), PLAIN) is not None) == to_ibgp
    assert (export_path(p, PREFIX, pol(ebgp=True), PLAIN) is not None) == to_ebgp


@pytest.mark.parametrize(
    "mode,source,expect",
    [
        ("auto", EBGP, SELF_NH),
        ("auto", IBGP_CLIENT, PEER_NH),
        ("self", IBGP_CLIENT, SELF_NH),
        ("keep", EBGP, PEER_NH),
        ("keep", LOCAL, SELF_NH),
    ],
)
def test_next_hop_modes_toward_ibgp(mode, source, expect) -> None:
    _, nh = export_path(mk(source), PREFIX, pol(client=True, mode=mode), RR)
    assert nh == expect


def test_auto_next_hop_toward_ebgp_is_self() -> None:
    _, nh = export_path(mk(IBGP_CLIENT), PREFIX, pol(ebgp=True), RR)
    assert nh == SELF_NH


def test_export_filter_rejects_and_rewrites() -> None:
    flt = Filter(
        "out",
        (
            Rule("Reject", cidr=(1, (0x0AF40100, 24)), match_operator="Equal"),
            Rule("Accept", add_community=(0xFDE80001,), set_local_pref=250),
        ),
    )
    assert export_path(mk(EBGP), PREFIX, pol(export_filter=flt), PLAIN) is None
    attrs, _ = export_path(mk(EBGP), (0x0AF40200, 24), pol(export_filter=flt), PLAIN)
    assert attrs.communities == (0xFDE80001,) and attrs.local_pref == 250


def test_is_own_blocks_the_source_peer_and_the_originator() -> None:
    p = mk(IBGP_CLIENT, originator_id=0x09090909)
    assert is_own(p, "c1", 1)
    assert is_own(p, "other", 0x09090909)
    assert not is_own(p, "other", 0x08080808)


def test_import_loop_checks() -> None:
    assert import_loop(PathAttributes(as_path=((AS_SEQUENCE, (65001, ASN)),)), RR, True)
    assert import_loop(PathAttributes(originator_id=RID), RR, False) == (
        "ORIGINATOR_ID is our router-id"
    )
    assert import_loop(PathAttributes(cluster_list=(1, CLUSTER)), RR, False) == (
        "our cluster-id in CLUSTER_LIST"
    )
    assert import_loop(PathAttributes(cluster_list=(1, CLUSTER)), PLAIN, False) is None
    assert import_loop(PathAttributes(as_path=((AS_SEQUENCE, (65001,)),)), RR, True) is None
