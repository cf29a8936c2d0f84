"""Events the session FSM reports to its owner: frozen, so tests compare them with `==`."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bgpd.speaker.capabilities import Negotiated
    from bgpd.speaker.messages import Update
    from bgpd.speaker.types import Family


class State(Enum):
    """RFC 4271 §8.2.2 session states; the value is the name operators see."""

    IDLE = "Idle"
    CONNECT = "Connect"
    ACTIVE = "Active"
    OPENSENT = "OpenSent"
    OPENCONFIRM = "OpenConfirm"
    ESTABLISHED = "Established"


@dataclass(frozen=True, slots=True)
class ConnectRequested:
    """The glue must open an outgoing TCP connection and report it under this id."""

    conn_id: int


@dataclass(frozen=True, slots=True)
class CloseConnection:
    """The glue must flush what is queued for this connection, then close it."""

    conn_id: int


@dataclass(frozen=True, slots=True)
class StateChanged:
    old: State
    new: State


@dataclass(frozen=True, slots=True)
class SessionEstablished:
    negotiated: Negotiated


@dataclass(frozen=True, slots=True)
class SessionDown:
    """A connection that reached OpenSent or later failed. `reason` names the cause for logs.

    notification is (code, subcode) when one was sent or received; `sent` says which. The
    owner decides from these and the negotiated GR capability whether the peer's routes are
    kept stale (RFC 4724, RFC 8538) or flushed.
    """

    reason: str
    was_established: bool
    notification: tuple[int, int] | None = None
    sent: bool = False
    hold_timer_expired: bool = False


@dataclass(frozen=True, slots=True)
class UpdateReceived:
    update: Update


@dataclass(frozen=True, slots=True)
class RouteRefreshReceived:
    family: Family
    subtype: int = 0


@dataclass(frozen=True, slots=True)
class ConnectionRejected:
    """An incoming connection was refused (peer administratively down, or a collision loser)."""

    conn_id: int
    reason: str


Event = (
    ConnectRequested
    | CloseConnection
    | StateChanged
    | SessionEstablished
    | SessionDown
    | UpdateReceived
    | RouteRefreshReceived
    | ConnectionRejected
)
