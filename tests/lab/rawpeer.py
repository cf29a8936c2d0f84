"""A raw BGP test peer: blocking TCP from inside a lab namespace, bytes in and out, no FSM.

Tests use it to drive our daemon with exact (often malformed) bytes and to read back the exact
NOTIFICATION it sends. Only the OPEN and UPDATEs it sends on purpose are built with the codec;
what it reads is framed by the small independent reader below.
"""

from __future__ import annotations

import ctypes
import ipaddress
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar

from bgpd.speaker.attributes import PathAttributes
from bgpd.speaker.capabilities import (
    Capability,
    EnhancedRouteRefresh,
    ExtendedMessage,
    FourOctetAS,
    Multiprotocol,
    RouteRefresh,
)
from bgpd.speaker.context import CodecContext
from bgpd.speaker.messages import Open, encode_open, encode_updates, encode_withdrawals
from bgpd.speaker.types import IPV4_UNICAST, IPV6_UNICAST, Family

T = TypeVar("T")

MSG_OPEN, MSG_UPDATE, MSG_NOTIFICATION, MSG_KEEPALIVE = 1, 2, 3, 4
KEEPALIVE = b"\xff" * 16 + b"\x00\x13\x04"
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


class RawPeerError(AssertionError):
    """The daemon did not answer as the test expected (an AssertionError so pytest shows it)."""


def in_netns(ns_name: str | None, fn: Callable[[], T]) -> T:
    """Run ``fn`` in a throwaway thread that has joined network namespace ``ns_name``.

    Sockets keep the namespace they were created in, so a socket made here can be used from
    any thread afterwards; the test process itself never leaves the host namespace.
    """
    if ns_name is None:
        return fn()
    box: dict[str, object] = {}

    def target() -> None:
        try:
            fd = os.open(f"/run/netns/{ns_name}", os.O_RDONLY)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns({ns_name}): {os.strerror(err)}")
            finally:
                os.close(fd)
            box["value"] = fn()
        except BaseException as exc:  # handed back to the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=target, name=f"netns-{ns_name}")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["value"]  # type: ignore[return-value]


@dataclass(frozen=True)
class Message:
    """One message read off the wire: its type and body (header stripped)."""

    type: int
    body: bytes

    @property
    def notification(self) -> tuple[int, int, bytes]:
        assert self.type == MSG_NOTIFICATION, self
        return self.body[0], self.body[1], self.body[2:]


def build_open(
    asn: int,
    router_id: str,
    *,
    hold_time: int = 90,
    families: Iterable[Family] = (IPV4_UNICAST, IPV6_UNICAST),
    asn4: bool = True,
    extended_message: bool = False,
) -> bytes:
    """Our OPEN, encoded by the codec: MP per family, route refresh, and the options asked."""
    caps: list[Capability] = [Multiprotocol(f) for f in families]
    caps += [RouteRefresh(), EnhancedRouteRefresh()]
    if asn4:
        caps.append(FourOctetAS(asn))
    if extended_message:
        caps.append(ExtendedMessage())
    rid = int(ipaddress.IPv4Address(router_id))
    return encode_open(Open(asn=asn, hold_time=hold_time, router_id=rid, capabilities=tuple(caps)))


def build_announce(
    prefixes: Iterable[str],
    next_hop: str,
    as_path: tuple[int, ...],
    *,
    asn4: bool = True,
) -> list[bytes]:
    """Valid IPv4 UPDATEs announcing ``prefixes`` with ORIGIN IGP and the given AS_SEQUENCE."""
    nlri = []
    for p in prefixes:
        net = ipaddress.IPv4Network(p)
        nlri.append((int(net.network_address), net.prefixlen, 0))
    attrs = PathAttributes(origin=0, as_path=((2, as_path),))
    nh = (int(ipaddress.IPv4Address(next_hop)),)
    return encode_updates(CodecContext(asn4=asn4), IPV4_UNICAST, attrs, nlri, nh)


def build_withdraw(prefixes: Iterable[str]) -> list[bytes]:
    """Valid IPv4 UPDATEs withdrawing ``prefixes``."""
    nlri = []
    for p in prefixes:
        net = ipaddress.IPv4Network(p)
        nlri.append((int(net.network_address), net.prefixlen, 0))
    return encode_withdrawals(CodecContext(), IPV4_UNICAST, nlri)


class RawPeer:
    """One TCP connection to a BGP speaker, with blocking reads bounded by deadlines."""

    def __init__(
        self,
        remote: str,
        *,
        port: int = 179,
        netns: str | None = None,
        source: str | None = None,
        timeout: float = 5.0,
        ttl: int | None = None,
    ) -> None:
        self.remote, self.port, self.netns, self.source = remote, port, netns, source
        self.timeout = timeout
        self.ttl = ttl
        self.sock: socket.socket | None = None
        self._rx = bytearray()
        self.eof = False

    # -- connection -------------------------------------------------------------------------

    def connect(self) -> RawPeer:
        family = socket.AF_INET6 if ":" in self.remote else socket.AF_INET

        def make() -> socket.socket:
            sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                sock.settimeout(self.timeout)
                if self.ttl is not None:
                    # For GTSM tests: the TTL (hop limit) every segment we send leaves with.
                    if family == socket.AF_INET:
                        sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, self.ttl)
                    else:
                        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, self.ttl)
                if self.source:
                    sock.bind((self.source, 0))
                sock.connect((self.remote, self.port))
            except BaseException:
                sock.close()
                raise
            return sock

        self.sock = in_netns(self.netns, make)
        # Small writes must leave at once: a case is often one short message.
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return self

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def __enter__(self) -> RawPeer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, data: bytes) -> None:
        assert self.sock is not None, "not connected"
        self.sock.sendall(data)

    # -- reading ----------------------------------------------------------------------------

    def _fill(self, deadline: float) -> bool:
        """Read more bytes before ``deadline``; False on EOF (a reset counts as EOF)."""
        assert self.sock is not None, "not connected"
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        self.sock.settimeout(remaining)
        try:
            chunk = self.sock.recv(65536)
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            self.eof = True
            return False
        self._rx += chunk
        return True

    def read_message(self, timeout: float | None = None) -> Message | None:
        """The next whole message, or None at EOF; TimeoutError if none came in time."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            if len(self._rx) >= 19:
                if self._rx[:16] != b"\xff" * 16:
                    raise RawPeerError(f"daemon sent a bad marker: {bytes(self._rx[:19]).hex()}")
                length = int.from_bytes(self._rx[16:18], "big")
                if length < 19:
                    raise RawPeerError(f"daemon sent length {length}")
                if len(self._rx) >= length:
                    msg = Message(self._rx[18], bytes(self._rx[19:length]))
                    del self._rx[:length]
                    return msg
            if self.eof or not self._fill(deadline):
                if self._rx:
                    raise RawPeerError(f"EOF inside a message: {bytes(self._rx).hex()}")
                return None

    def expect(
        self, mtype: int, *, skip: Iterable[int] = (), timeout: float | None = None
    ) -> Message:
        """Read until a message of ``mtype``, skipping the types in ``skip``; anything else fails."""
        skipping = set(skip)
        while True:
            msg = self.read_message(timeout)
            if msg is None:
                raise RawPeerError(f"connection closed while waiting for message type {mtype}")
            if msg.type == mtype:
                return msg
            if msg.type not in skipping:
                raise RawPeerError(f"expected message type {mtype}, got {msg}")

    def expect_notification(self, timeout: float | None = None) -> tuple[int, int, bytes]:
        """Skip OPEN/UPDATE/KEEPALIVE until a NOTIFICATION arrives; return (code, subcode, data)."""
        skip = (MSG_OPEN, MSG_UPDATE, MSG_KEEPALIVE)
        return self.expect(MSG_NOTIFICATION, skip=skip, timeout=timeout).notification

    def expect_closed(self, timeout: float | None = None) -> None:
        """The daemon closes the connection without sending anything further."""
        msg = self.read_message(timeout)
        if msg is not None:
            raise RawPeerError(f"expected the connection to close, got {msg}")

    def drain(self, quiet: float = 0.2) -> list[Message]:
        """Every message that arrives until ``quiet`` seconds pass with none (EOF ends it too)."""
        out: list[Message] = []
        while True:
            try:
                msg = self.read_message(quiet)
            except TimeoutError:
                return out
            if msg is None:
                return out
            out.append(msg)

    # -- a whole handshake ------------------------------------------------------------------

    def handshake(self, open_bytes: bytes) -> Message:
        """Send ``open_bytes``, read the daemon's OPEN and KEEPALIVE, answer with KEEPALIVE.

        Returns the daemon's OPEN; the session is Established on its side afterwards.
        """
        self.send(open_bytes)
        their_open = self.expect(MSG_OPEN)
        self.expect(MSG_KEEPALIVE)
        self.send(KEEPALIVE)
        return their_open
