"""Real BGP peers for tests: BIRD 2, GoBGP, FRR and ExaBGP run inside a lab namespace.

Each peer writes its own config and keeps its sockets and state in a lab temp dir, so several
instances run at once; state and routes are read back through the daemon's own CLI or API.
One module per daemon; base.py holds the shared API (Peer) and session config (Neighbor).
"""

from tests.lab.peers.base import Family, Neighbor, Peer, Route
from tests.lab.peers.bird import BirdPeer
from tests.lab.peers.exabgp import ExabgpPeer
from tests.lab.peers.frr import FrrPeer
from tests.lab.peers.gobgp import GobgpPeer

__all__ = [
    "BirdPeer",
    "ExabgpPeer",
    "Family",
    "FrrPeer",
    "GobgpPeer",
    "Neighbor",
    "Peer",
    "Route",
]
