"""`routemesh bgp routes` table markers (* best, = multipath, (stale)) and --detail columns, and the refresh/reload verbs."""

from __future__ import annotations

from bgpd.cli.bgp import format_routes
from bgpd.cli.main import build_parser

ROWS = [
    {"prefix": "10.244.9.0/24", "next_hop": "198.18.60.2", "as_path": [65001], "peer": "198.18.60.2",
     "best": True, "multipath": True, "stale": False, "communities": [], "local_pref": 100,
     "med": 5, "reason": "router-id"},
    {"prefix": "10.244.9.0/24", "next_hop": "198.18.60.3", "as_path": [65001], "peer": "198.18.60.3",
     "best": False, "multipath": True, "stale": True, "communities": [], "local_pref": 100,
     "med": 5, "reason": None, "originator_id": "198.18.60.9", "cluster_list": ["244.0.0.1"]},
]  # fmt: skip


def test_markers_best_multipath_stale() -> None:
    lines = format_routes(ROWS).splitlines()
    assert lines[3].startswith("| * 10.244.9.0/24 ")
    assert lines[4].startswith("| = 10.244.9.0/24 (stale)")
    assert "REASON" not in lines[1]


def test_detail_shows_reason_and_rr_attributes() -> None:
    text = format_routes(ROWS, detail=True)
    header = text.splitlines()[1]
    for col in ("LOCPRF", "MED", "ORIGINATOR", "CLUSTER LIST", "REASON"):
        assert col in header
    assert "router-id" in text.splitlines()[3]
    assert "198.18.60.9" in text and "244.0.0.1" in text


def test_refresh_and_reload_verbs_parse() -> None:
    p = build_parser()
    a = p.parse_args(["bgp", "refresh", "198.18.0.2", "in"])
    assert (a.bgp_cmd, a.peer, a.direction) == ("refresh", "198.18.0.2", "in")
    assert p.parse_args(["bgp", "refresh", "198.18.0.2"]).direction == "both"
    assert p.parse_args(["bgp", "reload"]).bgp_cmd == "reload"
    assert p.parse_args(["bgp", "routes", "--detail"]).detail
