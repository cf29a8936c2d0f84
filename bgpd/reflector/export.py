"""The export decision: whether a Loc-RIB path goes to a peer, and with which attributes.

Every rule about who may see what lives here and nowhere else (BIRD `bgp_preexport`, GoBGP
`filterpath`): iBGP split horizon, RFC 4456 reflection between clients and non-clients with
ORIGINATOR_ID/CLUSTER_LIST, the well-known communities, next-hop auto/self/keep, AS_PATH prepend
and private-AS removal toward eBGP, LOCAL_PREF and MED scoping, and the peer's export filter.
Import loop checks (our AS, our router-id as ORIGINATOR_ID, our cluster-id in CLUSTER_LIST) are
`import_loop`.

`export_path` depends only on the peer's `ExportPolicy`, so peers with equal policies (an update
group) share one result per path; `is_own` is the per-peer part (never send a path back to the
peer it came from, nor to its originator).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from bgpd.reflector.filters import Filter, apply_filter
from bgpd.speaker.attributes import AS_SEQUENCE, PathAttributes
from bgpd.speaker.rib import Path
from bgpd.speaker.types import Family, Prefix

NO_EXPORT = 0xFFFFFF01
NO_ADVERTISE = 0xFFFFFF02
NO_EXPORT_SUBCONFED = 0xFFFFFF03
NEXT_HOP_MODES = ("auto", "self", "keep")
DEFAULT_LOCAL_PREF = 100


@dataclass(frozen=True, slots=True)
class LocalView:
    """What export needs to know about ourselves."""

    asn: int
    router_id: int
    cluster_id: int | None = None  # set: we are a route reflector
    client_to_client: bool = True


@dataclass(frozen=True, slots=True)
class ExportPolicy:
    """Everything export depends on for one peer and family; equal policies = one update group.

    self_next_hop is the address we put as next hop when the mode (or the rules) say "self".
    """

    family: Family
    ebgp: bool
    remote_asn: int
    rr_client: bool = False
    next_hop_mode: str = "auto"
    self_next_hop: tuple[int, ...] = ()
    remove_private_as: bool = False
    export_filter: Filter | None = None
    addpath: bool = False


Exported = tuple[PathAttributes, tuple[int, ...]]


def is_private_asn(asn: int) -> bool:
    """RFC 6996 private ranges (16- and 32-bit)."""
    return 64512 <= asn <= 65534 or 4200000000 <= asn <= 4294967294


def _strip_private(path: PathAttributes) -> PathAttributes:
    segs = []
    for seg_type, asns in path.as_path:
        kept = tuple(a for a in asns if not is_private_asn(a))
        if kept:
            segs.append((seg_type, kept))
    return replace(path, as_path=tuple(segs))


def _prepend(attrs: PathAttributes, asn: int) -> PathAttributes:
    path = attrs.as_path
    if path and path[0][0] == AS_SEQUENCE and len(path[0][1]) < 255:
        path = ((AS_SEQUENCE, (asn, *path[0][1])), *path[1:])
    else:
        path = ((AS_SEQUENCE, (asn,)), *path)
    return replace(attrs, as_path=path)


def export_path(
    path: Path, prefix: Prefix, policy: ExportPolicy, local: LocalView
) -> Exported | None:
    """The (attributes, next hop) to send for `path` under `policy`, or None to send nothing."""
    src = path.source
    attrs = path.attrs
    comms = attrs.communities
    if comms:
        if NO_ADVERTISE in comms:
            return None
        if policy.ebgp and (NO_EXPORT in comms or NO_EXPORT_SUBCONFED in comms):
            return None
    ibgp_learned = not src.local and not src.ebgp
    reflected = False
    if ibgp_learned and not policy.ebgp:
        # RFC 4271 §9.2 split horizon, relaxed only by RFC 4456 reflection.
        if local.cluster_id is None:
            return None
        if src.rr_client:
            if policy.rr_client and not local.client_to_client:
                return None
        elif not policy.rr_client:
            return None
        reflected = True
    if policy.ebgp and policy.remote_asn in attrs.asns():
        return None  # the peer would drop it as a loop (RFC 4271 §9.1.2)
    if policy.export_filter is not None:
        filtered = apply_filter(policy.export_filter, policy.family, prefix, attrs, policy.ebgp)
        if filtered is None:
            return None
        attrs = filtered

    if policy.ebgp:
        if policy.remove_private_as:
            attrs = _strip_private(attrs)
        attrs = _prepend(attrs, local.asn)
        # LOCAL_PREF and the RR attributes never leave the AS; a MED received from one
        # neighbouring AS is not passed to another (RFC 4271 §5.1.4).
        attrs = replace(
            attrs,
            local_pref=None,
            originator_id=None,
            cluster_list=(),
            med=attrs.med if src.local else None,
        )
    else:
        if attrs.local_pref is None:
            attrs = replace(attrs, local_pref=DEFAULT_LOCAL_PREF)
        if reflected:
            assert local.cluster_id is not None
            attrs = replace(
                attrs,
                originator_id=attrs.originator_id
                if attrs.originator_id is not None
                else src.router_id,
                cluster_list=(local.cluster_id, *attrs.cluster_list),
            )

    mode = policy.next_hop_mode
    if src.local or not path.next_hop or mode == "self":
        nh = policy.self_next_hop
    elif mode == "keep":
        nh = path.next_hop
    else:
        # auto: eBGP gets us; iBGP keeps what an iBGP peer sent and gets us for eBGP routes.
        nh = policy.self_next_hop if policy.ebgp or src.ebgp else path.next_hop
    if not nh:
        return None
    return attrs, nh


def is_own(path: Path, peer_key: str, peer_router_id: int) -> bool:
    """True when `path` must not go to this peer: it came from there, or originated there."""
    if path.source.key == peer_key:
        return True
    oid = path.attrs.originator_id
    return oid is not None and oid == peer_router_id


def import_loop(attrs: PathAttributes, local: LocalView, ebgp: bool) -> str | None:
    """Why a received path is a loop and must not be accepted, or None."""
    if local.asn in attrs.asns():
        return "our AS in AS_PATH"
    if not ebgp:
        if attrs.originator_id is not None and attrs.originator_id == local.router_id:
            return "ORIGINATOR_ID is our router-id"
        if local.cluster_id is not None and local.cluster_id in attrs.cluster_list:
            return "our cluster-id in CLUSTER_LIST"
    return None
