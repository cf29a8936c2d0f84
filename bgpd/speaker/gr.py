"""Graceful restart decisions (RFC 4724, RFC 8538), as pure functions over negotiated state.

The daemon owns the timers; this module only answers: when a session drops, which families'
routes are kept as stale (helper side), and when a session returns, which stale families must be
flushed at once because the peer did not preserve forwarding for them.
"""

from __future__ import annotations

from bgpd.speaker.capabilities import GracefulRestart, Negotiated
from bgpd.speaker.errors import CEASE, CEASE_HARD_RESET
from bgpd.speaker.events import SessionDown
from bgpd.speaker.types import Family


def retained_families(
    enabled: bool, neg: Negotiated | None, down: SessionDown, hard: bool = False
) -> frozenset[Family]:
    """Families whose routes stay (stale) after `down`; empty means flush everything.

    GR applies when we offered it (`enabled`) and the peer's OPEN carried it, the session had
    been Established, and the end was a transport loss, or, when both sides set the N bit
    (RFC 8538), any NOTIFICATION except Cease/Hard Reset (hold-timer expiry included). `hard` is for ends
    we chose ourselves (max-prefix, operator reset) that must never be graceful.
    """
    if not enabled or hard or neg is None or neg.remote_gr is None or not down.was_established:
        return frozenset()
    gr: GracefulRestart = neg.remote_gr
    if down.notification is not None:
        if not gr.notification:
            return frozenset()  # RFC 4724 alone: a NOTIFICATION ends the session for good
        if down.notification == (CEASE, CEASE_HARD_RESET):
            return frozenset()
    return frozenset(f for f, _ in gr.families if f in neg.families)


def flush_on_return(stale: frozenset[Family], neg: Negotiated) -> frozenset[Family]:
    """Stale families to flush now that the peer is back (RFC 4724 §4.2).

    A family is kept only if the new OPEN lists it with the Forwarding State bit set.
    """
    gr = neg.remote_gr
    if gr is None:
        return stale
    preserved = {f for f, fwd in gr.families if fwd}
    return frozenset(f for f in stale if f not in preserved)
