"""What `routemesh bgp routes -o json` shows: every Loc-RIB path with `best`, `reason` and
`multipath`, in decision order per prefix."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from bgpd.speaker.attributes import PathAttributes
from bgpd.speaker.bestpath import DecisionConfig, rank
from bgpd.speaker.rib import LocRib
from bgpd.speaker.types import (
    AFI_IPV4,
    IPV4_UNICAST,
    IPV6_UNICAST,
    Family,
    ip_to_str,
    prefix_to_str,
)


def route_rows(
    loc_rib: LocRib, decision: DecisionConfig, family: str | None
) -> list[dict[str, Any]]:
    """Every path of every prefix (optionally of one family by name)."""
    fams = [IPV4_UNICAST, IPV6_UNICAST]
    if family is not None:
        fams = [f for f in fams if f.name == family]
        if not fams:
            raise ValueError(f"unknown family {family!r}")
    out: list[dict[str, Any]] = []
    for fam in fams:
        cfg = replace(decision, family=fam)
        for prefix, dest in sorted(loc_rib.destinations(fam)):
            multi = {id(p) for p in dest.multipath}
            for p in rank(dest.paths, cfg):
                row = route_row(fam, prefix[0], prefix[1], p.path_id, p.attrs, p.next_hop)
                row["peer"] = None if p.source.local else p.source.key
                best = p is dest.best
                row["best"] = best
                row["reason"] = dest.reason if best else None
                row["multipath"] = id(p) in multi
                row["stale"] = p.stale
                out.append(row)
    return out


ORIGIN_NAMES = {0: "IGP", 1: "EGP", 2: "incomplete"}


def route_row(
    fam: Family, addr: int, plen: int, path_id: int, attrs: PathAttributes, nh: tuple[int, ...]
) -> dict[str, Any]:
    """One path as `routemesh bgp routes -o json` shows it."""
    row: dict[str, Any] = {
        "prefix": prefix_to_str(fam.afi, (addr, plen)),
        "family": fam.name,
        "next_hop": _next_hop_text(fam, nh),
        "as_path": list(attrs.asns()),
        "origin": ORIGIN_NAMES.get(attrs.origin, str(attrs.origin))
        if attrs.origin is not None
        else None,
        "peer": None,
        "best": False,
        "communities": [f"{c >> 16}:{c & 0xFFFF}" for c in attrs.communities],
    }
    if path_id:
        row["path_id"] = path_id
    if attrs.med is not None:
        row["med"] = attrs.med
    if attrs.local_pref is not None:
        row["local_pref"] = attrs.local_pref
    if attrs.large_communities:
        row["large_communities"] = [f"{a}:{b}:{c}" for a, b, c in attrs.large_communities]
    if attrs.originator_id is not None:
        row["originator_id"] = ip_to_str(attrs.originator_id, AFI_IPV4)
    if attrs.cluster_list:
        row["cluster_list"] = [ip_to_str(c, AFI_IPV4) for c in attrs.cluster_list]
    return row


def _next_hop_text(fam: Family, nh: tuple[int, ...]) -> str | None:
    if not nh:
        return None
    # An IPv4 route may carry an IPv6 next hop (RFC 8950); the value's size tells which.
    afi = AFI_IPV4 if fam == IPV4_UNICAST and nh[0] <= 0xFFFFFFFF else 2
    return ip_to_str(nh[0], afi)
