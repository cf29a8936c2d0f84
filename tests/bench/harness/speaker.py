"""A minimal asyncio BGP speaker for the benchmark: OPEN/KEEPALIVE, a hold timer, bulk sends
of pre-encoded buffers, and a cheap count of the prefixes it receives.

It is deliberately not our daemon's FSM: the blaster must cost next to nothing per message,
so that the device under test, not the source, sets the pace.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import struct
import time
from collections.abc import Callable, Iterable, Iterator, Sequence

from bgpd.speaker.capabilities import FourOctetAS, Multiprotocol, RouteRefresh
from bgpd.speaker.context import CodecContext
from bgpd.speaker.messages import Open, decode_open, decode_update, encode_notification, encode_open
from bgpd.speaker.types import IPV4_UNICAST, NLRI
from tests.bench.harness.feeds import MAX_PREFIXES, NLRI_BYTES, POOL_BASE, PREFIX_LEN

KEEPALIVE = b"\xff" * 16 + b"\x00\x13\x04"
MSG_OPEN, MSG_UPDATE, MSG_NOTIFICATION, MSG_KEEPALIVE = 1, 2, 3, 4
CEASE, HOLD_TIMER_EXPIRED = 6, 4
WRITE_HIGH_WATER = 256 * 1024
_CTX = CodecContext()


def count_update(body: bytes) -> tuple[int, int]:
    """(announced, withdrawn) prefix counts of one IPv4 UPDATE body.

    Benchmark feeds use /29s only, so a field of /29 entries is counted from its length; any
    other shape (MP_REACH, other lengths) falls back to the full decoder, which counts only
    the feed's prefixes.
    """
    wlen = (body[0] << 8) | body[1]
    alen = (body[2 + wlen] << 8) | body[3 + wlen]
    nstart = 4 + wlen + alen
    nlen = len(body) - nstart
    withdrawn_ok = wlen == 0 or (wlen % NLRI_BYTES == 0 and body[2] == PREFIX_LEN)
    announced_ok = nlen == 0 or (nlen % NLRI_BYTES == 0 and body[nstart] == PREFIX_LEN)
    if withdrawn_ok and announced_ok and (nlen or not alen):
        return nlen // NLRI_BYTES, wlen // NLRI_BYTES
    upd = decode_update(bytes(body), _CTX)
    return (
        sum(1 for v in upd.announce.values() for n in v if in_feed(n)),
        sum(1 for v in upd.withdraw.values() for n in v if in_feed(n)),
    )


class PrefixTracker:
    """Which feed prefixes a receiver holds now, exactly: one byte per prefix index, so a
    repeated announcement or a withdrawal of a prefix never held does not skew the count."""

    def __init__(self, size: int) -> None:
        self.held = bytearray(size)
        self.count = 0

    def apply(self, body: bytes) -> None:
        wlen = (body[0] << 8) | body[1]
        alen = (body[2 + wlen] << 8) | body[3 + wlen]
        withdrawn = body[2 : 2 + wlen]
        announced = body[4 + wlen + alen :]
        if _all_feed_shaped(withdrawn) and _all_feed_shaped(announced):
            if withdrawn:
                self._mark(_indexes(withdrawn), 0)
            if announced:
                self._mark(_indexes(announced), 1)
            if announced or not alen:
                return
        upd = decode_update(bytes(body), _CTX)
        for nlri in upd.withdraw.values():
            self._mark(((n[0] - POOL_BASE) >> 3 for n in nlri if in_feed(n)), 0)
        for nlri in upd.announce.values():
            self._mark(((n[0] - POOL_BASE) >> 3 for n in nlri if in_feed(n)), 1)

    def _mark(self, indexes: Iterable[int], value: int) -> None:
        held, size, n = self.held, len(self.held), 0
        for i in indexes:
            if 0 <= i < size and held[i] != value:
                held[i] = value
                n += 1
        self.count += n if value else -n


def _all_feed_shaped(field: bytes) -> bool:
    # Every entry a /29 (5 bytes): the length octets are every 5th byte from the first.
    return (
        len(field) % NLRI_BYTES == 0
        and field[::NLRI_BYTES].count(PREFIX_LEN) == len(field) // NLRI_BYTES
    )


def _indexes(field: bytes) -> Iterator[int]:
    for _plen, addr in struct.iter_unpack(">BI", field):
        yield (addr - POOL_BASE) >> 3


def in_feed(nlri: NLRI) -> bool:
    """Whether a prefix is one of the benchmark feed's (a DUT may add its own routes)."""
    addr, plen = nlri[0], nlri[1]
    return plen == PREFIX_LEN and POOL_BASE <= addr < POOL_BASE + (MAX_PREFIXES << 3)


class SessionFailed(Exception):
    """The session was reset: NOTIFICATION, EOF, or a hold timer expiry."""


class Session:
    """One BGP session we open to the DUT. With ``track`` (the feed size) ``received`` is how
    many feed prefixes the DUT has given us; ``failures`` records every reset (a failed run)."""

    def __init__(
        self,
        *,
        local_asn: int,
        peer_asn: int,
        router_id: str,
        hold_time: int = 9,
        on_count: Callable[[Session], None] | None = None,
        track: int = 0,
        name: str = "",
    ) -> None:
        self.local_asn, self.peer_asn = local_asn, peer_asn
        self.router_id = int(ipaddress.IPv4Address(router_id))
        self.hold_time = hold_time
        self.negotiated_hold = hold_time
        self.on_count = on_count
        self.name = name or router_id
        self.tracker = PrefixTracker(track) if track else None
        self.updates_in = 0
        self.failures: list[str] = []
        self.established = asyncio.Event()
        self.t_established: float | None = None
        self.closed = asyncio.Event()
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._last_rx = 0.0

    @property
    def received(self) -> int:
        return self.tracker.count if self.tracker is not None else 0

    async def connect(self, host: str, port: int, local_address: str, timeout: float = 30) -> None:
        """TCP connect from ``local_address``, exchange OPEN/KEEPALIVE; return when Established."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._reader, self._writer = await asyncio.open_connection(
                    host, port, local_addr=(local_address, 0)
                )
                break
            except OSError:
                # The DUT may still be binding its port; retry like a BGP connect-retry would.
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)
        self._writer.transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        caps = (Multiprotocol(IPV4_UNICAST), RouteRefresh(), FourOctetAS(self.local_asn))
        self._writer.write(encode_open(Open(self.local_asn, self.hold_time, self.router_id, caps)))
        self._last_rx = time.monotonic()
        self._tasks.append(asyncio.create_task(self._read_loop()))
        waiters = [
            asyncio.create_task(self.established.wait()),
            asyncio.create_task(self.closed.wait()),
        ]
        await asyncio.wait(
            waiters,
            timeout=max(0.1, deadline - time.monotonic()),
            return_when=asyncio.FIRST_COMPLETED,
        )
        for w in waiters:
            w.cancel()
        if not self.established.is_set():
            reason = "; ".join(self.failures) or "no OPEN/KEEPALIVE from the DUT"
            raise SessionFailed(f"{self.name}: session did not come up: {reason}")
        self._tasks.append(asyncio.create_task(self._timers()))

    async def send(self, buffers: Sequence[bytes]) -> None:
        """Write whole-message buffers as fast as TCP takes them."""
        writer = self._writer
        assert writer is not None
        for buf in buffers:
            if self.closed.is_set():
                raise SessionFailed(f"{self.name}: {'; '.join(self.failures)}")
            writer.write(buf)
            await writer.drain()

    async def close(self) -> None:
        """Cease (administrative shutdown) and close."""
        for task in self._tasks:
            task.cancel()
        if self._writer is not None and not self._writer.is_closing():
            with contextlib.suppress(OSError):
                self._writer.write(encode_notification(CEASE, 2))
                await asyncio.wait_for(self._writer.drain(), 2)
            self._writer.close()
        self.closed.set()

    def _fail(self, reason: str) -> None:
        if not self.closed.is_set():
            self.failures.append(reason)
            self.closed.set()
            if self._writer is not None:
                self._writer.close()

    async def _timers(self) -> None:
        hold = self.negotiated_hold
        if not hold:
            return
        writer = self._writer
        assert writer is not None
        while not self.closed.is_set():
            await asyncio.sleep(hold / 3)
            if time.monotonic() - self._last_rx > hold:
                with contextlib.suppress(OSError):
                    writer.write(encode_notification(HOLD_TIMER_EXPIRED, 0))
                self._fail(f"hold timer expired: nothing from the DUT for {hold}s")
                return
            writer.write(KEEPALIVE)

    async def _read_loop(self) -> None:
        reader = self._reader
        assert reader is not None
        buf = bytearray()
        try:
            while True:
                data = await reader.read(1 << 20)
                if not data:
                    self._fail("connection closed by the DUT")
                    return
                self._last_rx = time.monotonic()
                buf += data
                self._frame(buf)
        except (OSError, ValueError) as exc:
            self._fail(f"read failed: {exc!r}")
        except asyncio.CancelledError:
            raise

    def _frame(self, buf: bytearray) -> None:
        pos, end = 0, len(buf)
        changed = False
        try:
            while end - pos >= 19:
                length = (buf[pos + 16] << 8) | buf[pos + 17]
                if length < 19:
                    self._fail(f"bad message length {length}")
                    return
                if end - pos < length:
                    break
                mtype = buf[pos + 18]
                body = bytes(buf[pos + 19 : pos + length])
                if mtype == MSG_UPDATE:
                    self.updates_in += 1
                    if self.tracker is not None:
                        self.tracker.apply(body)
                        changed = True
                elif mtype == MSG_KEEPALIVE:
                    if not self.established.is_set():
                        self.t_established = time.monotonic()
                        self.established.set()
                elif mtype == MSG_OPEN:
                    peer_open = decode_open(bytes(body))
                    self.negotiated_hold = min(self.hold_time, peer_open.hold_time)
                    if self._writer is not None:
                        self._writer.write(KEEPALIVE)
                elif mtype == MSG_NOTIFICATION:
                    self._fail(f"NOTIFICATION {body[0]}/{body[1]} from the DUT")
                    return
                pos += length
        finally:
            del buf[:pos]
        if changed and self.on_count is not None:
            self.on_count(self)
