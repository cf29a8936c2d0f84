"""GR decisions (RFC 4724, RFC 8538): which session ends keep routes stale, and which stale
families are flushed when the peer returns without forwarding state."""

from __future__ import annotations

import pytest

from bgpd.speaker.capabilities import GracefulRestart, Negotiated
from bgpd.speaker.events import SessionDown
from bgpd.speaker.fsm import SessionConfig, build_open
from bgpd.speaker.gr import flush_on_return, retained_families
from bgpd.speaker.types import IPV4_UNICAST, IPV6_UNICAST

BOTH = frozenset({IPV4_UNICAST, IPV6_UNICAST})


def neg(gr: GracefulRestart | None, families=BOTH) -> Negotiated:
    return Negotiated(families, True, True, True, frozenset(), frozenset(), False, frozenset(),
                      gr, 90, 65001, 1, None)  # fmt: skip


GR_N = GracefulRestart(120, notification=True, families=((IPV4_UNICAST, True),))
GR_PLAIN = GracefulRestart(120, families=((IPV4_UNICAST, True), (IPV6_UNICAST, False)))
DROP = SessionDown("connection closed", True)


@pytest.mark.parametrize(
    "gr,down,hard,kept",
    [
        (GR_N, DROP, False, {IPV4_UNICAST}),
        (GR_PLAIN, DROP, False, {IPV4_UNICAST, IPV6_UNICAST}),
        (GR_N, SessionDown("hold", True, (4, 0), True, True), False, {IPV4_UNICAST}),
        (GR_PLAIN, SessionDown("hold", True, (4, 0), True, True), False, set()),
        (GR_N, SessionDown("cease", True, (6, 2), False), False, {IPV4_UNICAST}),
        (GR_PLAIN, SessionDown("cease", True, (6, 2), False), False, set()),
        (GR_N, SessionDown("hard", True, (6, 9), False), False, set()),
        (GR_N, DROP, True, set()),
        (None, DROP, False, set()),
        (GR_N, SessionDown("open failed", False), False, set()),
    ],
)
def test_which_session_ends_keep_routes(gr, down, hard, kept) -> None:
    assert retained_families(True, neg(gr), down, hard) == frozenset(kept)


def test_not_offered_by_us_means_no_gr() -> None:
    assert retained_families(False, neg(GR_N), DROP) == frozenset()


def test_families_without_forwarding_state_are_flushed_on_return() -> None:
    assert flush_on_return(BOTH, neg(GR_PLAIN)) == frozenset({IPV6_UNICAST})
    assert flush_on_return(BOTH, neg(None)) == BOTH


def test_restarting_open_carries_r_and_f_bits() -> None:
    cfg = SessionConfig(64512, 1, 64512, families=BOTH, graceful_restart=True,
                        restarting=True, forwarding_preserved=True)  # fmt: skip
    (gr,) = [c for c in build_open(cfg).capabilities if isinstance(c, GracefulRestart)]
    assert gr.restarting and gr.notification
    assert gr.families == ((IPV4_UNICAST, True), (IPV6_UNICAST, True))
