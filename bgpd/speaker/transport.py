"""asyncio glue for BGP sessions: sockets, TCP-MD5, GTSM, and timers armed from FSM deadlines.

No protocol logic lives here. A `PeerDriver` moves bytes between sockets and its `Session`,
arms `loop.call_at` at the deadline the session reports, and hands session events to its owner.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from bgpd.speaker import errors as E
from bgpd.speaker.events import (
    CloseConnection,
    ConnectionRejected,
    ConnectRequested,
    Event,
    UpdateReceived,
)
from bgpd.speaker.fsm import Session
from bgpd.speaker.messages import Update, encode_notification

log = logging.getLogger("routemesh.bgp")

TCP_MD5SIG = 14
IP_MINTTL = 21
IPV6_MINHOPCOUNT = 73
TCP_MD5SIG_MAXKEYLEN = 80
READ_LIMIT = 1 << 20


def normalize_addr(addr: str) -> str:
    """Canonical text of an address, with IPv4-mapped IPv6 turned back into IPv4."""
    ip = ipaddress.ip_address(addr.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return str(ip)


def set_md5(sock: socket.socket, peer: str, password: str | None) -> None:
    """Install (or with None remove) the RFC 2385 key for `peer` on this socket."""
    ip = ipaddress.ip_address(peer)
    key = (password or "").encode()
    if len(key) > TCP_MD5SIG_MAXKEYLEN:
        raise ValueError("TCP-MD5 password longer than 80 bytes")
    if ip.version == 4:
        sa = struct.pack("=H", socket.AF_INET) + struct.pack("!H", 0) + ip.packed + b"\0" * 8
    else:
        sa = struct.pack("=H", socket.AF_INET6) + struct.pack("!HI", 0, 0) + ip.packed
        sa += b"\0" * 4
    sa = sa.ljust(128, b"\0")
    # struct tcp_md5sig: sockaddr_storage, flags, prefixlen, keylen, ifindex, key[80]
    blob = sa + struct.pack("=BBHI", 0, 0, len(key), 0) + key.ljust(TCP_MD5SIG_MAXKEYLEN, b"\0")
    sock.setsockopt(socket.IPPROTO_TCP, TCP_MD5SIG, blob)


def set_ttl_security(sock: socket.socket, family: int, hops: int | None) -> None:
    """RFC 5082 GTSM: send with TTL 255 and drop anything that crossed more than `hops` hops."""
    if not hops:
        return
    if family == socket.AF_INET:
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, 255)
        sock.setsockopt(socket.IPPROTO_IP, IP_MINTTL, 256 - hops)
    else:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, 255)
        sock.setsockopt(socket.IPPROTO_IPV6, IPV6_MINHOPCOUNT, 256 - hops)


def listener_gtsm_hops(ttl_security: Mapping[str, int | None], family: int) -> int | None:
    """Hops to enforce on a shared listening socket of ``family``, or None.

    The minimum TTL of a listening socket applies to every peer, so it can only be set when
    every neighbor of that family uses GTSM; then the widest hop count among them is safe.
    Otherwise each accepted socket gets its own peer's limit right after accept.
    """
    v6 = family == socket.AF_INET6
    hops = [h for addr, h in ttl_security.items() if (":" in addr) == v6]
    if not hops or any(not h for h in hops):
        return None
    return max(h for h in hops if h)


@dataclass(frozen=True, slots=True)
class PeerEndpoint:
    """How to reach one neighbor on the wire."""

    address: str
    port: int = 179
    source_address: str | None = None
    password: str | None = None
    ttl_security: int | None = None
    connect_timeout: float = 5.0


def refuse(transport: asyncio.Transport, linger: float = 5.0) -> None:
    """Turn a connection away with Cease/Connection Rejected (RFC 4486) before closing.

    A bare close often becomes an RST (the peer's OPEN is unread), and a firewall that drops
    conntrack-INVALID packets (Calico's rules do) may drop that RST: the peer would then
    sit in OpenSent for the 4-minute OPEN hold time. The NOTIFICATION travels as data in
    the established flow, so the peer learns at once and retries. Our side half-closes and
    reads (and drops) until the peer closes, so that no RST races the NOTIFICATION; a peer
    that never closes is cut off after `linger` seconds.
    """
    transport.write(encode_notification(E.CEASE, E.CEASE_CONNECTION_REJECTED))
    if transport.can_write_eof():
        transport.write_eof()
        asyncio.get_running_loop().call_later(linger, transport.abort)
    else:
        transport.close()


class _Protocol(asyncio.Protocol):
    def __init__(self, driver: PeerDriver | None, conn_id: int | None, router: Listener | None):
        self.driver = driver
        self.conn_id = conn_id
        self.router = router
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        if self.router is not None:
            self.router.dispatch(self, transport)

    def data_received(self, data: bytes) -> None:
        if self.driver is not None and self.conn_id is not None:
            self.driver.on_data(self.conn_id, data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.driver is not None and self.conn_id is not None:
            self.driver.on_lost(self.conn_id, str(exc) if exc else "")


class PeerDriver:
    """Runs one Session on the event loop. `on_event` receives every non-transport event.

    With `on_updates` given, consecutive `UpdateReceived` events are handed to it instead as
    one list of UPDATEs (all that one read completed), so that per-batch work is done once.
    """

    def __init__(
        self,
        session: Session,
        endpoint: PeerEndpoint,
        on_event: Callable[[PeerDriver, Event], None],
        loop: asyncio.AbstractEventLoop | None = None,
        on_updates: Callable[[PeerDriver, list[Update]], None] | None = None,
    ) -> None:
        self.session = session
        self.endpoint = endpoint
        self.on_event = on_event
        self.on_updates = on_updates
        self._in_batch = False
        self.loop = loop or asyncio.get_event_loop()
        self.transports: dict[int, asyncio.Transport] = {}
        self.local_address: str | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._connecting: dict[int, asyncio.Task[None]] = {}

    def now(self) -> float:
        return self.loop.time()

    def start(self) -> None:
        self.session.start(self.now())
        self.pump()

    def stop(self, subcode: int | None = None, message: str = "") -> None:
        if subcode is None:
            self.session.stop(self.now(), message=message)
        else:
            self.session.stop(self.now(), subcode=subcode, message=message)
        self.pump()

    # -- inputs from sockets -----------------------------------------------------------------

    def on_data(self, conn_id: int, data: bytes) -> None:
        self.session.receive_data(conn_id, data, self.now())
        self.pump()

    def on_lost(self, conn_id: int, reason: str) -> None:
        if self.transports.pop(conn_id, None) is None:
            return
        self.session.connection_lost(conn_id, self.now(), reason)
        self.pump()

    def adopt_incoming(self, proto: _Protocol, transport: asyncio.Transport) -> None:
        conn_id = self.session.new_incoming(self.now())
        if conn_id is None:
            refuse(transport)
            self.pump()
            return
        proto.driver, proto.conn_id = self, conn_id
        self.transports[conn_id] = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            set_ttl_security(sock, sock.family, self.endpoint.ttl_security)
            self.local_address = normalize_addr(transport.get_extra_info("sockname")[0])
        self.pump()

    # -- the pump: drain the session after every input --------------------------------------

    def pump(self) -> None:
        if self._in_batch:
            # The owner acted on this session while handling a batch (e.g. stopped it): the
            # pump running the batch drains what that queued, after the batch, in order.
            return
        session = self.session
        on_updates = self.on_updates
        while (event := session.next_event()) is not None:
            if on_updates is not None and type(event) is UpdateReceived:
                updates = [event.update]
                updates += session.take_updates()
                self._in_batch = True
                try:
                    on_updates(self, updates)
                finally:
                    self._in_batch = False
            elif isinstance(event, ConnectRequested):
                self._connect(event.conn_id)
            elif isinstance(event, CloseConnection):
                self._flush()
                self._close(event.conn_id)
            else:
                if isinstance(event, ConnectionRejected):
                    log.info("peer %s: %s", self.endpoint.address, event.reason)
                self.on_event(self, event)
        self._flush()
        self._arm_timer()

    def _flush(self) -> None:
        for conn_id, data in self.session.data_to_send():
            transport = self.transports.get(conn_id)
            if transport is not None and not transport.is_closing():
                transport.write(data)

    def _close(self, conn_id: int) -> None:
        task = self._connecting.pop(conn_id, None)
        if task is not None:
            task.cancel()
        transport = self.transports.pop(conn_id, None)
        if transport is not None:
            transport.close()

    def _arm_timer(self) -> None:
        deadline = self.session.get_timer()
        if self._timer is not None:
            if deadline is not None and self._timer.when() == deadline:
                return
            self._timer.cancel()
            self._timer = None
        if deadline is not None:
            self._timer = self.loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self.session.handle_timer(self.now())
        self.pump()

    # -- outgoing connections ----------------------------------------------------------------

    def _connect(self, conn_id: int) -> None:
        task = self.loop.create_task(self._open_connection(conn_id))
        self._connecting[conn_id] = task

    async def _open_connection(self, conn_id: int) -> None:
        ep = self.endpoint
        family = socket.AF_INET6 if ":" in ep.address else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            if ep.password:
                set_md5(sock, ep.address, ep.password)
            set_ttl_security(sock, family, ep.ttl_security)
            if ep.source_address:
                sock.bind((ep.source_address, 0))
            await asyncio.wait_for(
                self.loop.sock_connect(sock, (ep.address, ep.port)), ep.connect_timeout
            )
            transport, _proto = await self.loop.create_connection(
                lambda: _Protocol(self, conn_id, None), sock=sock
            )
        except (OSError, TimeoutError) as err:
            sock.close()
            self._connecting.pop(conn_id, None)
            reason = err.strerror if isinstance(err, OSError) and err.strerror else "timed out"
            self.session.connection_failed(conn_id, self.now(), reason)
            self.pump()
            return
        except asyncio.CancelledError:
            sock.close()
            raise
        self._connecting.pop(conn_id, None)
        assert isinstance(transport, asyncio.Transport)
        self.transports[conn_id] = transport
        self.local_address = normalize_addr(transport.get_extra_info("sockname")[0])
        self.session.connection_made(conn_id, self.now())
        self.pump()

    def close_all(self) -> None:
        for conn_id in list(self._connecting):
            self._close(conn_id)
        for transport in self.transports.values():
            transport.close()
        self.transports.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class Listener:
    """Accepts BGP connections and hands each to the driver of the neighbor it comes from."""

    def __init__(self, lookup: Callable[[str], PeerDriver | None]) -> None:
        self.lookup = lookup
        self.servers: list[asyncio.Server] = []
        self.sockets: list[socket.socket] = []

    async def listen(
        self,
        address: str,
        port: int,
        md5: Mapping[str, str],
        ttl_security: Mapping[str, int | None] | None = None,
    ) -> None:
        """Listen on one address; ``ttl_security`` maps every configured neighbor to its hops."""
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            # One socket per family keeps MD5 keys and GTSM options unambiguous.
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        for peer, password in md5.items():
            if (":" in peer) == (family == socket.AF_INET6):
                set_md5(sock, peer, password)
        hops = listener_gtsm_hops(ttl_security or {}, family)
        if hops is not None:
            # Accepted sockets inherit IP_MINTTL, so the kernel drops a far-away SYN before
            # any handshake, closing the window in which data could queue before we set it.
            set_ttl_security(sock, family, hops)
        sock.bind((address, port))
        sock.listen(64)
        sock.setblocking(False)
        server = await asyncio.get_running_loop().create_server(
            lambda: _Protocol(None, None, self), sock=sock
        )
        self.servers.append(server)
        self.sockets.append(sock)

    def dispatch(self, proto: _Protocol, transport: asyncio.Transport) -> None:
        peername = transport.get_extra_info("peername")
        remote = normalize_addr(peername[0]) if peername else "?"
        driver = self.lookup(remote)
        if driver is None:
            log.warning("refused BGP connection from unconfigured address %s", remote)
            refuse(transport)
            return
        proto.router = None
        driver.adopt_incoming(proto, transport)

    def set_md5(self, peer: str, password: str | None) -> None:
        for sock in self.sockets:
            if (":" in peer) == (sock.family == socket.AF_INET6):
                set_md5(sock, peer, password)

    async def close(self) -> None:
        for server in self.servers:
            server.close()
        for server in self.servers:
            await server.wait_closed()
        self.servers.clear()
