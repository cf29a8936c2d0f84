"""The frozen codec context: what a session negotiated that changes how bytes are read."""

from __future__ import annotations

from dataclasses import dataclass

from bgpd.speaker.types import MAX_EXTENDED_MESSAGE_LEN, MAX_MESSAGE_LEN, Family


@dataclass(frozen=True, slots=True)
class CodecContext:
    """Negotiated options that shape encoding and decoding, fixed for the life of a session.

    addpath_rx: families in which received NLRI carry a path id.
    addpath_tx: families in which NLRI we send carry a path id.
    extended_nexthop: families whose NLRI may carry an IPv6 next hop (RFC 8950).
    """

    asn4: bool = True
    addpath_rx: frozenset[Family] = frozenset()
    addpath_tx: frozenset[Family] = frozenset()
    extended_message: bool = False
    extended_nexthop: frozenset[Family] = frozenset()

    @property
    def max_message_len(self) -> int:
        return MAX_EXTENDED_MESSAGE_LEN if self.extended_message else MAX_MESSAGE_LEN


# Before OPEN is exchanged nothing is negotiated: OPEN itself is read with this context.
DEFAULT_CONTEXT = CodecContext()
