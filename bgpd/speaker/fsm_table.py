"""The FSM's tables and per-neighbor configuration: the inputs, the (state, input) -> state
table, message-type names, `SessionConfig` and the OPEN built from it (used by `fsm.Session`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum, auto

from bgpd.speaker import errors as E
from bgpd.speaker.capabilities import (
    AddPath,
    EnhancedRouteRefresh,
    ExtendedMessage,
    ExtendedNextHop,
    FourOctetAS,
    GracefulRestart,
    Hostname,
    Multiprotocol,
    RouteRefresh,
)
from bgpd.speaker.events import State
from bgpd.speaker.messages import Open
from bgpd.speaker.types import (
    IPV4_UNICAST,
    MSG_KEEPALIVE,
    MSG_NOTIFICATION,
    MSG_OPEN,
    MSG_ROUTE_REFRESH,
    MSG_UPDATE,
    Family,
)

AS_TRANS = 23456
# RFC 4271 §8.2.2 suggests 4 minutes for the hold timer while OPEN is awaited.
OPEN_HOLD_TIME = 240.0
ADDPATH_MODES = {"receive": 1, "send": 2, "both": 3}


class Input(Enum):
    """What can happen to a session: administrative, transport, timer and message inputs."""

    START_ACTIVE = auto()
    START_PASSIVE = auto()
    STOP = auto()
    TCP_CONNECTED = auto()
    TCP_FAILED = auto()
    TCP_CLOSED = auto()
    CONNECT_RETRY_EXPIRED = auto()
    HOLD_EXPIRED = auto()
    ERROR = auto()
    OPEN = auto()
    KEEPALIVE = auto()
    UPDATE = auto()
    NOTIFICATION = auto()
    ROUTE_REFRESH = auto()


S = State
I = Input  # noqa: E741 - the table reads better with a one-letter alias

ESTABLISHED = State.ESTABLISHED

# (state, input) -> next state. Anything absent: a message is an FSM error, the rest is ignored.
TRANSITIONS: dict[tuple[State, Input], State] = {
    (S.IDLE, I.START_ACTIVE): S.CONNECT,
    (S.IDLE, I.START_PASSIVE): S.ACTIVE,
    (S.CONNECT, I.TCP_CONNECTED): S.OPENSENT,
    (S.CONNECT, I.TCP_FAILED): S.ACTIVE,
    (S.CONNECT, I.CONNECT_RETRY_EXPIRED): S.CONNECT,
    (S.CONNECT, I.STOP): S.IDLE,
    (S.ACTIVE, I.TCP_CONNECTED): S.OPENSENT,
    (S.ACTIVE, I.CONNECT_RETRY_EXPIRED): S.CONNECT,
    (S.ACTIVE, I.STOP): S.IDLE,
    (S.OPENSENT, I.OPEN): S.OPENCONFIRM,
    (S.OPENSENT, I.TCP_CLOSED): S.ACTIVE,
    (S.OPENSENT, I.HOLD_EXPIRED): S.IDLE,
    (S.OPENSENT, I.NOTIFICATION): S.IDLE,
    (S.OPENSENT, I.ERROR): S.IDLE,
    (S.OPENSENT, I.STOP): S.IDLE,
    (S.OPENCONFIRM, I.KEEPALIVE): S.ESTABLISHED,
    (S.OPENCONFIRM, I.TCP_CLOSED): S.IDLE,
    (S.OPENCONFIRM, I.HOLD_EXPIRED): S.IDLE,
    (S.OPENCONFIRM, I.NOTIFICATION): S.IDLE,
    (S.OPENCONFIRM, I.ERROR): S.IDLE,
    (S.OPENCONFIRM, I.STOP): S.IDLE,
    (S.ESTABLISHED, I.KEEPALIVE): S.ESTABLISHED,
    (S.ESTABLISHED, I.UPDATE): S.ESTABLISHED,
    (S.ESTABLISHED, I.ROUTE_REFRESH): S.ESTABLISHED,
    (S.ESTABLISHED, I.TCP_CLOSED): S.IDLE,
    (S.ESTABLISHED, I.HOLD_EXPIRED): S.IDLE,
    (S.ESTABLISHED, I.NOTIFICATION): S.IDLE,
    (S.ESTABLISHED, I.ERROR): S.IDLE,
    (S.ESTABLISHED, I.STOP): S.IDLE,
}

MESSAGE_INPUTS = {
    MSG_OPEN: I.OPEN,
    MSG_UPDATE: I.UPDATE,
    MSG_NOTIFICATION: I.NOTIFICATION,
    MSG_KEEPALIVE: I.KEEPALIVE,
    MSG_ROUTE_REFRESH: I.ROUTE_REFRESH,
}
MESSAGE_NAMES = {
    MSG_OPEN: "open",
    MSG_UPDATE: "update",
    MSG_NOTIFICATION: "notification",
    MSG_KEEPALIVE: "keepalive",
    MSG_ROUTE_REFRESH: "route_refresh",
}
# RFC 6608: the FSM Error subcode names the state in which the unexpected message came.
UNEXPECTED_SUBCODE = {
    S.OPENSENT: E.FSM_UNEXPECTED_IN_OPENSENT,
    S.OPENCONFIRM: E.FSM_UNEXPECTED_IN_OPENCONFIRM,
    S.ESTABLISHED: E.FSM_UNEXPECTED_IN_ESTABLISHED,
}


@dataclass(frozen=True, slots=True)
class SessionConfig:
    """What one configured neighbor needs from us; built by the daemon from its config file."""

    local_asn: int
    router_id: int
    remote_asn: int
    families: frozenset[Family] = frozenset({IPV4_UNICAST})
    passive: bool = False
    hold_time: int = 90
    connect_retry: float = 2.0
    connect_retry_max: float = 60.0
    idle_hold: float = 1.0
    idle_hold_max: float = 60.0
    add_path: dict[Family, str] = field(default_factory=dict)
    extended_message: bool = True
    extended_nexthop: frozenset[Family] = frozenset()
    graceful_restart: bool = False
    restart_time: int = 120
    restarting: bool = False
    forwarding_preserved: bool = False
    hostname: str = ""
    auto_restart: bool = True

    @property
    def ibgp(self) -> bool:
        return self.local_asn == self.remote_asn


def build_open(cfg: SessionConfig) -> Open:
    """Our OPEN for this neighbor: one capability per negotiable feature we support."""
    caps: list = [Multiprotocol(f) for f in sorted(cfg.families)]
    caps += [RouteRefresh(), EnhancedRouteRefresh(), FourOctetAS(cfg.local_asn)]
    if cfg.extended_message:
        caps.append(ExtendedMessage())
    if cfg.extended_nexthop:
        caps.append(ExtendedNextHop(tuple((f, 2) for f in sorted(cfg.extended_nexthop))))
    if cfg.add_path:
        caps.append(AddPath(tuple((f, ADDPATH_MODES[m]) for f, m in sorted(cfg.add_path.items()))))
    if cfg.graceful_restart:
        caps.append(
            GracefulRestart(
                restart_time=cfg.restart_time,
                restarting=cfg.restarting,
                notification=True,
                families=tuple((f, cfg.forwarding_preserved) for f in sorted(cfg.families)),
            )
        )
    if cfg.hostname:
        caps.append(Hostname(cfg.hostname))
    return Open(
        asn=cfg.local_asn,
        hold_time=cfg.hold_time,
        router_id=cfg.router_id,
        capabilities=tuple(caps),
    )
