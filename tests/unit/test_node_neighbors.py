"""Which side of a node-to-node session dials: the same rule as Calico's BIRD mesh."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.node import neighbor_config
from bgpd.reflector.topology import PeerSpec


def _cfg(peer: str, local: str, node: str | None = "other"):
    spec = PeerSpec(address=peer, remote_asn=64512, source="mesh", node=node)
    return neighbor_config(
        spec, secrets_dir=Path("/nonexistent"), graceful_restart=True, local=local
    )


@pytest.mark.parametrize(
    ("local", "peer", "passive"),
    [
        ("198.18.0.2", "198.18.0.10", True),  # the peer is higher: it dials us
        ("198.18.0.10", "198.18.0.2", False),  # numeric order, not string order
        ("fd00::2", "fd00::1", False),
        ("fd00::1", "fd00::a", True),
    ],
)
def test_between_nodes_only_the_higher_address_dials(local, peer, passive):
    assert _cfg(peer, local).passive is passive
    # The two ends of one session always disagree: exactly one of them dials.
    assert _cfg(local, peer).passive is not passive


def test_an_explicit_bgppeer_and_a_mixed_family_pair_always_dial():
    assert _cfg("198.18.0.10", "198.18.0.2", node=None).passive is False
    assert _cfg("fd00::10", "198.18.0.2").passive is False
