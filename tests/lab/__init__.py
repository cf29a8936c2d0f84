"""Reusable test lab: network namespaces, real BGP peers (BIRD, GoBGP, FRR, ExaBGP), and
skip-or-fail preconditions. See netns.py, peers.py and require.py."""

from tests.lab.netns import Lab, LabError, Netns, sweep_stale
from tests.lab.peers import BirdPeer, ExabgpPeer, FrrPeer, GobgpPeer, Neighbor, Peer
from tests.lab.require import (
    missing,
    require_binary,
    require_link_kind,
    require_module,
    require_netns,
    require_root,
)
from tests.lab.waiting import LabTimeout, wait_for

__all__ = [
    "BirdPeer",
    "ExabgpPeer",
    "FrrPeer",
    "GobgpPeer",
    "Lab",
    "LabError",
    "LabTimeout",
    "Neighbor",
    "Netns",
    "Peer",
    "missing",
    "require_binary",
    "require_link_kind",
    "require_module",
    "require_netns",
    "require_root",
    "sweep_stale",
    "wait_for",
]
