"""The BGP session FSM of RFC 4271 §8, sans-IO: bytes and `now` in; events, bytes, deadlines out.

Rule (after h11's `_state.py`): every change of `Session.state` goes through `_enter`, and the
state that follows an input is looked up in `TRANSITIONS`, the one table (in fsm_table.py). Inputs
that the table does not list for the current state are protocol errors (RFC 6608 FSM Error) when
they are messages, and are ignored otherwise.

One `Session` serves one configured peer. It may hold two TCP connections at once while a
collision (§6.8) is being resolved: the primary one, whose state is the session's state, and a
candidate (a second incoming connection, or our own attempt that completed after the peer's
connection arrived) that has sent OPEN but whose fate waits on the remote BGP Identifier. The
collision is resolved as soon as that identifier is known on either connection, and both ends
resolve it the same way whatever order the OPENs and NOTIFICATIONs arrive in.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, field

from bgpd.speaker import errors as E
from bgpd.speaker.capabilities import (
    Multiprotocol,
    Negotiated,
    encode_capability,
    negotiate,
)
from bgpd.speaker.context import DEFAULT_CONTEXT, CodecContext
from bgpd.speaker.errors import NotificationError
from bgpd.speaker.events import (
    CloseConnection,
    ConnectionRejected,
    ConnectRequested,
    Event,
    RouteRefreshReceived,
    SessionDown,
    SessionEstablished,
    State,
    StateChanged,
    UpdateReceived,
)

# The tables and per-neighbor configuration live in fsm_table (module size); re-exported so
# that `from bgpd.speaker.fsm import SessionConfig, build_open, TRANSITIONS, ...` keeps working.
from bgpd.speaker.fsm_table import (
    ADDPATH_MODES,
    AS_TRANS,
    ESTABLISHED,
    MESSAGE_INPUTS,
    MESSAGE_NAMES,
    OPEN_HOLD_TIME,
    TRANSITIONS,
    UNEXPECTED_SUBCODE,
    I,
    Input,
    S,
    SessionConfig,
    build_open,
)
from bgpd.speaker.messages import (
    AttrCache,
    Keepalive,
    Notification,
    Open,
    Update,
    decode_message,
    decode_update,
    encode_keepalive,
    encode_message,
    encode_notification,
    split_messages,
)
from bgpd.speaker.messages import (
    RouteRefresh as RouteRefreshMsg,
)
from bgpd.speaker.types import (
    MSG_UPDATE,
    Family,
)

__all__ = [
    "ADDPATH_MODES",
    "AS_TRANS",
    "ESTABLISHED",
    "MESSAGE_INPUTS",
    "MESSAGE_NAMES",
    "OPEN_HOLD_TIME",
    "TRANSITIONS",
    "UNEXPECTED_SUBCODE",
    "I",
    "Input",
    "S",
    "Session",
    "SessionConfig",
    "build_open",
]


class _UpdateRun(deque):  # type: ignore[type-arg]
    """Consecutive decoded UPDATEs, queued as one event-queue entry: `next_event` hands them out
    one `UpdateReceived` at a time, `take_updates` all at once without wrapping each."""

    __slots__ = ()


@dataclass(slots=True)
class _Conn:
    conn_id: int
    outgoing: bool
    rx: bytearray = field(default_factory=bytearray)
    remote_open: Open | None = None


class Session:
    """One neighbor's FSM. Feed it with the methods below; drain `next_event`/`data_to_send`."""

    def __init__(self, config: SessionConfig, rng: random.Random | None = None) -> None:
        self.config = config
        self.state = State.IDLE
        self.negotiated: Negotiated | None = None
        self.context: CodecContext = DEFAULT_CONTEXT
        self.local_open = build_open(config)
        self.last_error = ""
        self.established_at: float | None = None
        self.messages_in: dict[str, int] = dict.fromkeys(MESSAGE_NAMES.values(), 0)
        self.messages_out: dict[str, int] = dict.fromkeys(MESSAGE_NAMES.values(), 0)
        self.established_count = 0
        self.hold_expiries = 0
        self.last_notification: tuple[int, int] | None = None
        self._rng = rng or random.Random()
        self._cache = AttrCache()
        self._events: deque[Event | _UpdateRun] = deque()
        self._out: dict[int, bytearray] = {}
        self._primary: _Conn | None = None
        self._candidate: _Conn | None = None
        self._pending_connect: int | None = None
        self._next_conn_id = 1
        self._enabled = False
        self._retries = 0
        self._failures = 0
        self._connect_retry_at: float | None = None
        self._idle_hold_at: float | None = None
        self._hold_at: float | None = None
        self._keepalive_at: float | None = None
        self._hold_time = float(config.hold_time)

    # ---- administrative inputs -------------------------------------------------------------

    def start(self, now: float) -> None:
        """ManualStart: begin connecting (or listening only, for a passive neighbor)."""
        self._enabled = True
        if self.state is State.IDLE:
            self._start(now)

    def stop(self, now: float, subcode: int = E.CEASE_ADMIN_SHUTDOWN, message: str = "") -> None:
        """ManualStop: Cease every connection and stay Idle until started again."""
        self._enabled = False
        data = b""
        if message:
            # RFC 9003 shutdown communication: a length-prefixed UTF-8 text.
            text = message.encode()[:255]
            data = bytes([len(text)]) + text
        self._teardown(now, I.STOP, "administratively stopped", (E.CEASE, subcode, data))

    # ---- transport inputs ------------------------------------------------------------------

    def new_incoming(self, now: float) -> int | None:
        """A peer connected to us. Returns the connection id to use, or None to refuse it."""
        conn_id = self._alloc_conn_id()
        if not self._enabled:
            self._events.append(ConnectionRejected(conn_id, "neighbor is administratively down"))
            return None
        if self.state in (State.IDLE, State.CONNECT, State.ACTIVE):
            # Our own attempt may already be accepted at the far end (crossed SYNs): closing
            # it here would close the far end's primary. It lives on; should it complete, the
            # two connections are a collision that §6.8 settles identically on both sides.
            if self.state is State.IDLE:
                self._enter(State.ACTIVE)
            self._attach_primary(_Conn(conn_id, outgoing=False), now)
            return conn_id
        if self.state is State.ESTABLISHED or self._candidate is not None:
            # §6.8: a collision with an Established session always keeps the existing one.
            self._out[conn_id] = bytearray(
                encode_notification(E.CEASE, E.CEASE_COLLISION_RESOLUTION)
            )
            self._events.append(CloseConnection(conn_id))
            self._events.append(ConnectionRejected(conn_id, "collision with existing session"))
            return conn_id
        # OpenSent/OpenConfirm: hold the newcomer until the remote identifier is known.
        self._add_candidate(_Conn(conn_id, outgoing=False), now)
        return conn_id

    def connection_made(self, conn_id: int, now: float) -> None:
        """Our outgoing connection (from ConnectRequested) is up."""
        if conn_id != self._pending_connect:
            self._events.append(CloseConnection(conn_id))
            return
        self._pending_connect = None
        if self.state in (State.CONNECT, State.ACTIVE):
            self._attach_primary(_Conn(conn_id, outgoing=True), now)
        elif self.state in (State.OPENSENT, State.OPENCONFIRM) and self._candidate is None:
            # The peer's connection arrived first; ours is the other half of a collision.
            self._add_candidate(_Conn(conn_id, outgoing=True), now)
        else:
            self._events.append(CloseConnection(conn_id))

    def connection_failed(self, conn_id: int, now: float, reason: str = "") -> None:
        """Our outgoing connection attempt failed (refused, unreachable, timed out)."""
        if conn_id != self._pending_connect:
            return
        self._pending_connect = None
        self.last_error = f"connect failed: {reason}" if reason else "connect failed"
        if self.state is State.CONNECT:
            self._transition(I.TCP_FAILED, now)

    def connection_lost(self, conn_id: int, now: float, reason: str = "") -> None:
        """A connection closed under us (EOF or error)."""
        self._out.pop(conn_id, None)
        if self._candidate is not None and self._candidate.conn_id == conn_id:
            self._candidate = None
            return
        if self._primary is None or self._primary.conn_id != conn_id:
            return
        self._primary = None
        text = f"connection closed: {reason}" if reason else "connection closed by peer"
        if self._candidate is not None:
            # The peer kept the other connection (its §6.8 verdict reached us first).
            self._lose_primary_to_candidate(text, None, now)
            return
        if self._fall_back_to_pending(text, None, now):
            return
        text = f"connection closed: {reason}" if reason else "connection closed by peer"
        self._session_down(text, None, sent=False)
        self._transition(I.TCP_CLOSED, now)

    def receive_data(self, conn_id: int, data: bytes, now: float) -> None:
        """Bytes arrived on a connection; decodes whole messages and acts on each in order."""
        conn = self._conn(conn_id)
        if conn is None:
            return
        conn.rx += data
        # Framing is only about lengths; each message is decoded with the context current when
        # its turn comes, so UPDATEs that trail the OPEN in one read see the negotiated options.
        ctx = self.context if self.state is State.ESTABLISHED else self._framing_context()
        try:
            frames = split_messages(conn.rx, ctx)
        except NotificationError as err:
            self._protocol_error(conn, err, now)
            return
        # UPDATEs on an Established primary connection are the bulk of all input: they take a
        # direct path (no per-message dispatch) while the state and connection hold; anything
        # else, or a decoding error, goes through `_on_message` as before. Every message of
        # one read shares `now`, so the hold timer restarts once for the first UPDATE.
        events = self._events
        run: _UpdateRun | None = None
        counted = 0
        restarted = False
        # Only a message handled by `_on_message` can change these: looked up again after one.
        direct = conn is self._primary and self.state is ESTABLISHED
        uctx, cache = self.context, self._cache
        try:
            for msg_type, body in frames:
                if direct and msg_type == MSG_UPDATE:
                    counted += 1
                    try:
                        msg = decode_update(body, uctx, cache)
                    except NotificationError as err:
                        self._protocol_error(conn, err, now)
                        return
                    if not restarted:
                        self._restart_hold(now)
                        restarted = True
                    if run is None:
                        last = events[-1] if events else None
                        if type(last) is _UpdateRun:
                            run = last
                        else:
                            run = _UpdateRun()
                            events.append(run)
                    run.append(msg)
                    continue
                if self._conn(conn_id) is not conn:
                    return
                restarted = False
                run = None
                self._on_message(conn, msg_type, body, now)
                direct = conn is self._primary and self.state is ESTABLISHED
                uctx, cache = self.context, self._cache
        finally:
            if counted:
                self.messages_in["update"] += counted

    # ---- timers ----------------------------------------------------------------------------

    def get_timer(self) -> float | None:
        """The earliest deadline at which `handle_timer` must be called, if any."""
        deadlines = [
            t
            for t in (self._connect_retry_at, self._idle_hold_at, self._hold_at, self._keepalive_at)
            if t is not None
        ]
        return min(deadlines) if deadlines else None

    def handle_timer(self, now: float) -> None:
        """Fire every deadline that is due at `now`."""
        if self._hold_at is not None and now >= self._hold_at:
            self._hold_at = None
            self.hold_expiries += 1
            self._teardown(
                now, I.HOLD_EXPIRED, "hold timer expired", (E.HOLD_TIMER_EXPIRED, 0, b"")
            )
        if self._keepalive_at is not None and now >= self._keepalive_at:
            self._send_keepalive(now)
        if self._connect_retry_at is not None and now >= self._connect_retry_at:
            self._connect_retry_at = None
            if not self.config.passive:
                self._transition(I.CONNECT_RETRY_EXPIRED, now)
        if self._idle_hold_at is not None and now >= self._idle_hold_at:
            self._idle_hold_at = None
            if self.state is State.IDLE and self._enabled:
                self._start(now)

    # ---- outputs ---------------------------------------------------------------------------

    def next_event(self) -> Event | None:
        events = self._events
        if not events:
            return None
        first = events[0]
        if type(first) is _UpdateRun:
            update = first.popleft()
            if not first:
                events.popleft()
            return UpdateReceived(update)
        return events.popleft()

    def take_updates(self) -> list[Update]:
        """Pop the UPDATE events at the front of the queue; their UPDATEs, in order."""
        events = self._events
        out: list[Update] = []
        while events:
            first = events[0]
            if type(first) is _UpdateRun:
                out += first
            elif type(first) is UpdateReceived:
                out.append(first.update)
            else:
                break
            events.popleft()
        return out

    def data_to_send(self) -> list[tuple[int, bytes]]:
        """Everything queued per connection since the last call, coalesced into one write."""
        out = [(cid, bytes(buf)) for cid, buf in self._out.items() if buf]
        for buf in self._out.values():
            buf.clear()
        return out

    def send_updates(self, messages: list[bytes], now: float) -> None:
        """Queue pre-encoded UPDATE messages on the established connection."""
        if self.state is not State.ESTABLISHED or self._primary is None:
            return
        buf = self._out.setdefault(self._primary.conn_id, bytearray())
        for msg in messages:
            buf += msg
        self.messages_out["update"] += len(messages)
        if messages:
            self._restart_keepalive(now)

    def send_route_refresh(self, family: Family, now: float, subtype: int = 0) -> bool:
        """Ask the peer to re-send a family (RFC 2918), or mark BoRR/EoRR (RFC 7313)."""
        neg = self.negotiated
        if self.state is not State.ESTABLISHED or neg is None or self._primary is None:
            return False
        if not neg.route_refresh or family not in neg.families:
            return False
        if subtype and not neg.enhanced_route_refresh:
            return False
        self._send(self._primary.conn_id, RouteRefreshMsg(family, subtype))
        return True

    # ---- internals -------------------------------------------------------------------------

    def _alloc_conn_id(self) -> int:
        cid = self._next_conn_id
        self._next_conn_id += 1
        return cid

    def _conn(self, conn_id: int) -> _Conn | None:
        for conn in (self._primary, self._candidate):
            if conn is not None and conn.conn_id == conn_id:
                return conn
        return None

    def _framing_context(self) -> CodecContext:
        # Accepting large messages as soon as we have offered extended message is harmless,
        # and spares a race where the peer's first big UPDATE trails its KEEPALIVE.
        return CodecContext(extended_message=self.config.extended_message)

    def _start(self, now: float) -> None:
        self._transition(I.START_PASSIVE if self.config.passive else I.START_ACTIVE, now)

    def _transition(self, inp: Input, now: float) -> None:
        nxt = TRANSITIONS.get((self.state, inp))
        if nxt is None:
            return
        prev = self.state
        self._enter(nxt)
        if nxt is State.CONNECT:
            self._connect(now)
        elif nxt is State.ACTIVE and not (prev is State.CONNECT and self._connect_retry_at):
            # A failed attempt waits out the deadline armed when it began: one back-off step
            # per attempt, however fast the refusal came.
            self._arm_connect_retry(now)
        elif nxt is State.IDLE and prev is not State.IDLE:
            self._enter_idle(now)

    def _enter(self, new: State) -> None:
        if new is not self.state:
            old, self.state = self.state, new
            self._events.append(StateChanged(old, new))

    def _connect(self, now: float) -> None:
        if self._pending_connect is not None:
            self._events.append(CloseConnection(self._pending_connect))
        self._pending_connect = self._alloc_conn_id()
        self._events.append(ConnectRequested(self._pending_connect))
        self._arm_connect_retry(now)

    def _arm_connect_retry(self, now: float) -> None:
        if self.config.passive:
            self._connect_retry_at = None
            return
        base = min(self.config.connect_retry * (2**self._retries), self.config.connect_retry_max)
        self._retries = min(self._retries + 1, 16)
        # RFC 4271 §10: jitter timers by 0.75..1.0 so that peers do not retry in lockstep.
        self._connect_retry_at = now + base * self._rng.uniform(0.75, 1.0)

    def _enter_idle(self, now: float) -> None:
        self._connect_retry_at = None
        self._hold_at = None
        self._keepalive_at = None
        self.negotiated = None
        self.context = DEFAULT_CONTEXT
        self._cache = AttrCache()
        if self._pending_connect is not None:
            self._events.append(CloseConnection(self._pending_connect))
            self._pending_connect = None
        if self._enabled and self.config.auto_restart:
            delay = min(self.config.idle_hold * (2**self._failures), self.config.idle_hold_max)
            self._failures = min(self._failures + 1, 16)
            self._idle_hold_at = now + delay * self._rng.uniform(0.75, 1.0)

    def _attach_primary(self, conn: _Conn, now: float) -> None:
        self._primary = conn
        self._connect_retry_at = None
        self._send(conn.conn_id, self.local_open)
        self._hold_at = now + OPEN_HOLD_TIME
        self._transition(I.TCP_CONNECTED, now)

    def _send(self, conn_id: int, msg: object) -> None:
        wire = encode_message(msg, self.context)
        self._out.setdefault(conn_id, bytearray()).extend(wire)
        name = _message_name(msg)
        self.messages_out[name] += 1

    def _send_keepalive(self, now: float) -> None:
        if self._primary is not None and self.state in (State.OPENCONFIRM, State.ESTABLISHED):
            self._out.setdefault(self._primary.conn_id, bytearray()).extend(encode_keepalive())
            self.messages_out["keepalive"] += 1
        self._restart_keepalive(now)

    def _restart_keepalive(self, now: float) -> None:
        if self._hold_time > 0 and self.state in (State.OPENCONFIRM, State.ESTABLISHED):
            self._keepalive_at = now + self._hold_time / 3
        else:
            self._keepalive_at = None

    def _restart_hold(self, now: float) -> None:
        self._hold_at = now + self._hold_time if self._hold_time > 0 else None

    def _close(self, conn: _Conn, notify: tuple[int, int, bytes] | None) -> None:
        if notify is not None:
            code, subcode, data = notify
            self._out.setdefault(conn.conn_id, bytearray()).extend(
                encode_notification(code, subcode, data)
            )
            self.messages_out["notification"] += 1
        self._events.append(CloseConnection(conn.conn_id))

    def _session_down(
        self,
        reason: str,
        notification: tuple[int, int] | None,
        sent: bool,
        hold_expired: bool = False,
    ) -> None:
        self.last_error = reason
        if notification is not None:
            self.last_notification = notification
        if self.state in (State.OPENSENT, State.OPENCONFIRM, State.ESTABLISHED):
            self._events.append(
                SessionDown(
                    reason=reason,
                    was_established=self.state is State.ESTABLISHED,
                    notification=notification,
                    sent=sent,
                    hold_timer_expired=hold_expired,
                )
            )
        if self.state is State.ESTABLISHED:
            self.established_at = None

    def _teardown(
        self, now: float, inp: Input, reason: str, notify: tuple[int, int, bytes] | None
    ) -> None:
        """Close every connection (with a NOTIFICATION when given) and apply `inp`."""
        if self._candidate is not None:
            self._close(self._candidate, notify)
            self._candidate = None
        if self._primary is not None:
            conn, self._primary = self._primary, None
            self._close(conn, notify)
            code = (notify[0], notify[1]) if notify else None
            self._session_down(reason, code, sent=True, hold_expired=inp is I.HOLD_EXPIRED)
        elif self._pending_connect is not None:
            self._events.append(CloseConnection(self._pending_connect))
            self._pending_connect = None
        if inp is I.STOP and self.state is not State.IDLE:
            self._enter(State.IDLE)
            self._enter_idle(now)
        else:
            self._transition(inp, now)

    def _protocol_error(self, conn: _Conn, err: NotificationError, now: float) -> None:
        if conn is self._candidate:
            self._close(conn, (err.code, err.subcode, err.data))
            self._candidate = None
            return
        self._teardown(now, I.ERROR, f"sent {err}", (err.code, err.subcode, err.data))

    def _on_message(self, conn: _Conn, msg_type: int, body: bytes, now: float) -> None:
        name = MESSAGE_NAMES.get(msg_type, "unknown")
        self.messages_in[name] = self.messages_in.get(name, 0) + 1
        try:
            msg = decode_message(msg_type, body, self.context, self._cache)
        except NotificationError as err:
            self._protocol_error(conn, err, now)
            return
        if conn is self._candidate:
            self._on_candidate_message(conn, msg, now)
            return
        inp = MESSAGE_INPUTS[msg_type]
        if isinstance(msg, Notification):
            self._on_notification(msg, now)
            return
        if (self.state, inp) not in TRANSITIONS:
            subcode = UNEXPECTED_SUBCODE.get(self.state, E.FSM_UNSPECIFIED)
            err = NotificationError(
                E.FSM_ERROR, subcode, reason=f"unexpected {name} in {self.state.value}"
            )
            self._protocol_error(conn, err, now)
            return
        if isinstance(msg, Open):
            self._on_open(conn, msg, now)
        elif isinstance(msg, Keepalive):
            self._restart_hold(now)
            if self.state is State.OPENCONFIRM:
                self._establish(now)
        elif isinstance(msg, Update):
            self._restart_hold(now)
            # RFC 7606 treat-as-withdraw is already applied by the decoder.
            self._events.append(UpdateReceived(msg))
        elif isinstance(msg, RouteRefreshMsg):
            self._restart_hold(now)
            neg = self.negotiated
            if neg is not None and msg.family in neg.families:
                # RFC 2918: a refresh for a family we did not negotiate is ignored.
                self._events.append(RouteRefreshReceived(msg.family, msg.subtype))

    def _on_notification(self, msg: Notification, now: float) -> None:
        self.last_notification = (msg.code, msg.subcode)
        reason = f"received {NotificationError(msg.code, msg.subcode)}"
        if self._primary is not None:
            conn, self._primary = self._primary, None
            self._events.append(CloseConnection(conn.conn_id))
            code = (msg.code, msg.subcode)
            if self._candidate is not None:
                # Typically Cease/Collision Resolution: the peer chose the other connection.
                self._lose_primary_to_candidate(reason, code, now)
                return
            if code == (E.CEASE, E.CEASE_COLLISION_RESOLUTION) and self._fall_back_to_pending(
                reason, code, now
            ):
                return
            self._session_down(reason, code, sent=False)
        self._transition(I.NOTIFICATION, now)

    def _check_open(self, msg: Open) -> None:
        cfg = self.config
        if msg.asn != cfg.remote_asn:
            raise NotificationError(
                E.OPEN_MESSAGE_ERROR,
                E.BAD_PEER_AS,
                reason=f"peer AS {msg.asn}, expected {cfg.remote_asn}",
            )
        if msg.router_id == cfg.router_id and cfg.ibgp:
            raise NotificationError(
                E.OPEN_MESSAGE_ERROR,
                E.BAD_BGP_IDENTIFIER,
                reason="peer router-id equals ours on an iBGP session",
            )
        neg = negotiate(self.local_open, msg)
        if not neg.families:
            # RFC 5492 §3: the data is the list of capabilities (code, length, value) we need,
            # without the optional-parameter framing that encode_optional_parameters adds.
            ours = b"".join(encode_capability(Multiprotocol(f)) for f in sorted(cfg.families))
            raise NotificationError(
                E.OPEN_MESSAGE_ERROR,
                E.UNSUPPORTED_CAPABILITY,
                data=ours,
                reason="no address family in common",
            )

    def _on_open(self, conn: _Conn, msg: Open, now: float) -> None:
        try:
            self._check_open(msg)
        except NotificationError as err:
            self._protocol_error(conn, err, now)
            return
        conn.remote_open = msg
        if self._candidate is not None and self._resolve_collision(msg.router_id, now):
            return
        self._accept_open(conn, msg, now)

    def _accept_open(self, conn: _Conn, msg: Open, now: float) -> None:
        neg = negotiate(self.local_open, msg)
        self.negotiated = neg
        self.context = neg.context
        self._hold_time = float(neg.hold_time)
        self._transition(I.OPEN, now)
        self._send(conn.conn_id, Keepalive())
        self._restart_keepalive(now)
        self._restart_hold(now)

    def _on_candidate_message(self, conn: _Conn, msg: object, now: float) -> None:
        if isinstance(msg, Open):
            try:
                self._check_open(msg)
            except NotificationError as err:
                self._protocol_error(conn, err, now)
                return
            conn.remote_open = msg
            self._resolve_collision(msg.router_id, now)
        elif isinstance(msg, Notification):
            self._events.append(CloseConnection(conn.conn_id))
            self._candidate = None
        else:
            self._protocol_error(
                conn,
                NotificationError(E.FSM_ERROR, E.FSM_UNEXPECTED_IN_OPENSENT, reason="candidate"),
                now,
            )

    def _add_candidate(self, conn: _Conn, now: float) -> None:
        self._candidate = conn
        self._send(conn.conn_id, self.local_open)

    def _resolve_collision(self, remote_id: int, now: float) -> bool:
        """§6.8: keep the connection opened by the side with the higher BGP Identifier.

        Both ends apply the same rule to the same pair of connections, so whichever of them
        decides first, they agree. Returns True when the candidate replaced the primary.
        """
        cand, primary = self._candidate, self._primary
        assert cand is not None
        self._candidate = None
        keep_outgoing = self.config.router_id > remote_id
        # Two connections of the same direction (a peer reconnecting) keep the primary.
        if (
            primary is None
            or self.state is State.ESTABLISHED
            or primary.outgoing == keep_outgoing
            or cand.outgoing != keep_outgoing
        ):
            self._close(cand, (E.CEASE, E.CEASE_COLLISION_RESOLUTION, b""))
            self._events.append(ConnectionRejected(cand.conn_id, "lost collision resolution"))
            return False
        # The candidate wins: the old connection ends with the same Cease, and the session
        # carries on over the candidate without going down.
        self._close(primary, (E.CEASE, E.CEASE_COLLISION_RESOLUTION, b""))
        self._primary = None
        self._candidate = cand
        self._promote_candidate(now)
        return True

    def _fall_back_to_pending(
        self, reason: str, notification: tuple[int, int] | None, now: float
    ) -> bool:
        """The primary is gone while our own attempt is in flight: that attempt is the
        connection the peer kept (crossed SYNs), so wait for it in Connect instead of Idle."""
        if self._pending_connect is None:
            return False
        self._note_lost_primary(reason, notification)
        self._enter(State.CONNECT)
        self._forget_negotiation(hold_at=None)
        self._arm_connect_retry(now)
        return True

    def _lose_primary_to_candidate(
        self, reason: str, notification: tuple[int, int] | None, now: float
    ) -> None:
        self._note_lost_primary(reason, notification)
        self._promote_candidate(now)

    def _note_lost_primary(self, reason: str, notification: tuple[int, int] | None) -> None:
        if self.state is State.ESTABLISHED:
            # Both ends raced to different verdicts; routes learnt on the old connection go.
            self._session_down(reason, notification, sent=False)
        else:
            # Not a session loss: the handshake carries on over the other connection.
            self.last_error = reason
            if notification is not None:
                self.last_notification = notification

    def _promote_candidate(self, now: float) -> None:
        """The primary connection is gone: carry on over the candidate, which sent our OPEN."""
        cand = self._candidate
        assert cand is not None
        self._candidate = None
        self._primary = cand
        self._connect_retry_at = None
        if self.state is not State.OPENSENT:
            self._enter(State.OPENSENT)
        if cand.remote_open is not None:
            self._accept_open(cand, cand.remote_open, now)
            return
        self._forget_negotiation(hold_at=now + OPEN_HOLD_TIME)

    def _forget_negotiation(self, hold_at: float | None) -> None:
        """Whatever the old connection negotiated does not hold for the next one: back to the
        default codec context, no keepalives until a new OPEN, the hold timer at `hold_at`."""
        self.negotiated = None
        self.context = DEFAULT_CONTEXT
        self._keepalive_at = None
        self._hold_at = hold_at

    def _establish(self, now: float) -> None:
        self._transition(I.KEEPALIVE, now)
        self.established_at = now
        self.established_count += 1
        self._retries = 0
        self._failures = 0
        self.last_error = ""
        assert self.negotiated is not None
        self._events.append(SessionEstablished(self.negotiated))


def _message_name(msg: object) -> str:
    if isinstance(msg, Open):
        return "open"
    if isinstance(msg, Keepalive):
        return "keepalive"
    if isinstance(msg, Notification):
        return "notification"
    if isinstance(msg, RouteRefreshMsg):
        return "route_refresh"
    return "update"
