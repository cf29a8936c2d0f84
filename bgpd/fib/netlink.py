"""NetlinkFib: the kernel writer. Hand-packed route messages, hundreds per sendmsg, acks after.

Only the last message of each batch asks for an ack; the kernel still answers every failed
one with an NLMSG_ERROR carrying its sequence number, which maps the error back to its route.
Dumps and the route/link monitor parse with messages.py, skipping other tables early: at 100k+
routes that is what keeps a dump or a burst of echoed events cheap (docs/fib.md has numbers).
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import os
import socket
import struct
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from bgpd.fib import messages as m
from bgpd.fib.base import Fib, KernelEvent, LinkEvent, Overrun, RouteEvent
from bgpd.fib.types import (
    DEFAULT_PROTOCOL,
    MAIN_TABLE,
    KernelRoute,
    NextHop,
    Prefix,
    Route,
    RouteError,
)

T = TypeVar("T")

NETLINK_ADD_MEMBERSHIP = 1
NETLINK_CAP_ACK = 10
NETLINK_EXT_ACK = 11
SO_RCVBUFFORCE = 33
SO_SNDBUFFORCE = 32
SO_ATTACH_FILTER = 26
CLONE_NEWNET = 0x40000000
RECV_SIZE = 1 << 20
SOL_NETLINK = 270


def in_netns(netns: str | None, fn: Callable[[], T]) -> T:
    """Run ``fn`` in network namespace ``netns`` (an ``ip netns`` name; None = ours).

    Sockets keep the namespace they were created in, so this is only needed to open them.
    It runs in a throwaway thread because setns() changes only the calling thread.
    """
    if netns is None:
        return fn()
    box: dict[str, object] = {}

    def target() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(f"/run/netns/{netns}", os.O_RDONLY | os.O_CLOEXEC)
            try:
                if libc.setns(fd, CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns({netns}): {os.strerror(err)}")
            finally:
                os.close(fd)
            box["value"] = fn()
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=target, name=f"setns-{netns}")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["value"]  # type: ignore[return-value]


def attach_echo_filter(sock: socket.socket, protocol: int) -> ctypes.Array[ctypes.c_char]:
    """Drop RTM_NEWROUTE messages of ``protocol`` in the kernel, before they are queued.

    Every route we write comes back on the monitor; at 100k+ routes, receiving and skipping
    them in Python cost more than writing them. Deletions of ours still get through (they
    are what the monitor repairs). Returns the filter buffer, which must outlive the socket.
    """
    ld_b, jeq, ret = 0x30, 0x15, 0x06  # BPF_LD|BPF_B|BPF_ABS, BPF_JMP|BPF_JEQ|BPF_K, BPF_RET
    prog = [
        (ld_b, 0, 0, 4),  # low byte of nlmsg_type (rtnetlink types fit in one byte)
        (jeq, 0, 3, m.RTM_NEWROUTE),  # not a new route: accept
        (ld_b, 0, 0, m.NLMSGHDR.size + 5),  # rtm_protocol
        (jeq, 0, 1, protocol),
        (ret, 0, 0, 0),  # ours: drop
        (ret, 0, 0, 0xFFFFFFFF),  # accept
    ]
    code = b"".join(struct.pack("=HBBI", *insn) for insn in prog)
    buf = ctypes.create_string_buffer(code, len(code))
    fprog = struct.pack("HP", len(prog), ctypes.addressof(buf))  # native: pointer-aligned
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
    return buf


def open_socket(netns: str | None = None, groups: int = 0, rcvbuf: int = 32 << 20) -> socket.socket:
    """A NETLINK_ROUTE socket (in ``netns``) with capped, extended acks and a large buffer."""

    def make() -> socket.socket:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, 0)
        try:
            sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
            sock.setsockopt(SOL_NETLINK, NETLINK_EXT_ACK, 1)
            for opt, fallback, size in (
                (SO_RCVBUFFORCE, socket.SO_RCVBUF, rcvbuf),
                (SO_SNDBUFFORCE, socket.SO_SNDBUF, 4 << 20),
            ):
                try:
                    sock.setsockopt(socket.SOL_SOCKET, opt, size)
                except PermissionError:
                    sock.setsockopt(socket.SOL_SOCKET, fallback, size)
            sock.bind((0, groups))
        except BaseException:
            sock.close()
            raise
        return sock

    return in_netns(netns, make)


class NetlinkFib(Fib):
    """Routes of protocol ``protocol`` in ``table`` of the current (or the named) namespace."""

    def __init__(
        self,
        protocol: int = DEFAULT_PROTOCOL,
        table: int = MAIN_TABLE,
        metric: int = 0,
        *,
        netns: str | None = None,
        batch: int = 512,
    ) -> None:
        super().__init__(protocol, table, metric)
        self.ctx = m.RouteContext(protocol, table, metric)
        self.netns = netns
        self.batch = batch
        self.sock = open_socket(netns)
        self.sock.settimeout(10.0)
        self._seq = 1
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="fib-writer")
        self.links: dict[str, int] = {}
        self.ifnames: dict[int, str] = {}
        self._paths: dict[tuple[int, tuple[NextHop, ...], bool], m.PathBytes] = {}
        self._links_stale = False
        self.link_up: dict[int, bool] = {}  # as of the last device dump
        # Counters, exported as metrics by whoever owns us.
        self.messages_sent = 0
        self.sendmsg_calls = 0
        self.netlink_errors = 0
        self.refresh_links()

    def close(self) -> None:
        self._thread.shutdown(wait=True)
        self.sock.close()

    # -- requests --------------------------------------------------------------------------

    def _next_seq(self, n: int = 1) -> int:
        seq = self._seq
        self._seq = (self._seq + n) & 0x7FFFFFFF or 1
        if self._seq < seq:  # wrapped: restart so one batch's seqs stay increasing
            seq, self._seq = 1, 1 + n
        return seq

    def _dump_request(self, request: bytes, seq: int) -> Iterable[tuple[int, bytes, int, int]]:
        """Yield (type, buffer, start, end) of each reply to a dump request until DONE."""
        self.sock.send(request)
        while True:
            buf = self.sock.recv(RECV_SIZE)
            for mtype, flags, mseq, start, end in m.iter_messages(buf):
                if mseq != seq:
                    continue
                if mtype == m.NLMSG_DONE:
                    return
                if mtype == m.NLMSG_ERROR:
                    code, text = m.parse_error(buf, start, end, flags)
                    if code:
                        raise OSError(code, f"netlink dump: {text}")
                    return
                if flags & 0x10:  # NLM_F_DUMP_INTR: the table changed under the dump
                    raise InterruptedError("netlink dump interrupted")
                yield mtype, buf, start, end

    def refresh_links(self) -> None:
        """Re-read device names and indexes (a write naming an unknown device does this)."""
        self._paths.clear()  # packed next hops hold ifindexes
        links: dict[str, int] = {}
        seq = self._next_seq()
        for mtype, buf, start, end in self._dump_request(m.pack_link_dump(seq), seq):
            if mtype == m.RTM_NEWLINK:
                index, name, up = m.parse_link(buf, start, end)
                links[name] = index
                self.link_up[index] = up
        self.links = links
        self.ifnames = {i: n for n, i in links.items()}

    async def _dump(self, table: int) -> list[KernelRoute]:
        for attempt in range(5):
            try:
                out: list[KernelRoute] = []
                for n, chunk in enumerate(self._dump_chunks(table)):
                    out.extend(chunk)
                    if n % 8 == 7:
                        # A 500k-route dump takes seconds to parse: let keepalives through.
                        await asyncio.sleep(0)
                return out
            except InterruptedError:
                await asyncio.sleep(0.01 * (attempt + 1))
        return self.dump_sync(table)

    def dump_sync(self, table: int | None = None) -> list[KernelRoute]:
        """Every IPv4 and IPv6 route in ``table`` (default ours), every protocol."""
        return [kr for chunk in self._dump_chunks(table) for kr in chunk]

    def _dump_chunks(self, table: int | None) -> Iterable[list[KernelRoute]]:
        """The routes of ``table``, one list per received datagram (a few hundred)."""
        table = self.table if table is None else table
        table8 = table if table < 256 else 252  # RT_TABLE_COMPAT: the real id is in RTA_TABLE
        for version in (4, 6):
            seq = self._next_seq()
            chunk: list[KernelRoute] = []
            last_buf: bytes | None = None
            for mtype, buf, start, end in self._dump_request(m.pack_route_dump(version, seq), seq):
                if buf is not last_buf and chunk:
                    yield chunk
                    chunk = []
                last_buf = buf
                if mtype != m.RTM_NEWROUTE or buf[start + 4] != table8:
                    continue
                kr = m.parse_route(buf, start, end, self.ifnames)
                if kr is not None and kr.table == table:
                    chunk.append(kr)
            if chunk:
                yield chunk

    # -- writes ------------------------------------------------------------------------------

    async def _write(
        self, writes: list[tuple[Route, bool]], deletes: list[Prefix]
    ) -> list[RouteError]:
        errors: list[RouteError] = []
        ops: list[tuple[str, Route | None, Prefix]] = [
            ("replace" if replace else "add", route, route.prefix) for route, replace in writes
        ]
        ops.extend(("delete", None, prefix) for prefix in deletes)
        loop = asyncio.get_running_loop()
        for i in range(0, len(ops), self.batch):
            # sendmsg runs the kernel's inserts in our thread: one that resizes a big fib trie
            # node held the loop for 0.6 s at 500k routes. In the writer thread the loop (and
            # the keepalives) go on; the owner task awaits, so the socket has one user.
            batch = ops[i : i + self.batch]
            errors.extend(await loop.run_in_executor(self._thread, self.write_batch, batch))
        return errors

    def write_batch(self, ops: list[tuple[str, Route | None, Prefix]]) -> list[RouteError]:
        """Send one sendmsg of messages and collect their errors, each naming its route."""
        errors: list[RouteError] = []
        parts: list[bytes] = []
        sent: list[tuple[str, Route | None, Prefix]] = []
        if self._links_stale:
            self._links_stale = False
            self.refresh_links()
        seq0 = self._next_seq(len(ops))
        last = len(ops) - 1
        refreshed = False
        cache = self._paths
        for i, (op, route, prefix) in enumerate(ops):
            seq = seq0 + len(sent)
            try:
                if route is None:
                    parts.append(m.pack_delroute(prefix, self.ctx, seq, ack=i == last))
                else:
                    key = (route.prefix[0], route.nexthops, route.blackhole)
                    paths = cache.get(key)
                    if paths is None:
                        try:
                            paths = m.pack_paths(route, self.ctx, self.links)
                        except m.PackError:
                            if refreshed:
                                raise
                            refreshed = True
                            self.refresh_links()
                            paths = m.pack_paths(route, self.ctx, self.links)
                        if len(cache) >= 4096:
                            cache.clear()
                        cache[key] = paths
                    parts.append(
                        m.pack_newroute(
                            route,
                            self.ctx,
                            seq,
                            self.links,
                            replace=op == "replace",
                            ack=i == last,
                            paths=paths,
                        )
                    )
            except m.PackError as exc:
                errors.append(RouteError(prefix, op, exc.errno, str(exc), route))
                continue
            sent.append((op, route, prefix))
        if not sent:
            self.netlink_errors += len(errors)
            return errors
        # The message that asks for the ack may have been dropped by a pack error: ask on a
        # final no-op instead, so we always know when the kernel is done with the batch.
        ack_seq = seq0 + len(sent) - 1
        if len(sent) < len(ops) and sent:
            ack_seq = seq0 + len(sent)
            parts.append(
                m.NLMSGHDR.pack(16, m.NLMSG_NOOP, m.NLM_F_REQUEST | m.NLM_F_ACK, ack_seq, 0)
            )
        self.sock.send(b"".join(parts))
        self.sendmsg_calls += 1
        self.messages_sent += len(sent)
        done = False
        while not done:
            try:
                buf = self.sock.recv(RECV_SIZE)
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise
                # Errors were dropped: we cannot say which routes failed, so say all may have.
                errors.extend(
                    RouteError(p, op, errno.ENOBUFS, "ack lost (ENOBUFS); resync needed", r)
                    for op, r, p in sent
                )
                break
            for mtype, flags, seq, start, end in m.iter_messages(buf):
                if mtype != m.NLMSG_ERROR:
                    continue
                code, text = m.parse_error(buf, start, end, flags)
                k = seq - seq0
                if code and 0 <= k < len(sent):
                    op, route, prefix = sent[k]
                    errors.append(RouteError(prefix, op, code, text, route))
                    if code == errno.ENODEV:
                        self._links_stale = True  # a device was recreated under a new index
                if seq == ack_seq:
                    done = True
        # A delete of a route already gone is not a failure (apply() drops it too).
        self.netlink_errors += sum(
            1 for e in errors if not (e.op == "delete" and e.errno == errno.ESRCH)
        )
        return errors

    # -- monitor ----------------------------------------------------------------------------

    def monitor(self, listener: Callable[[KernelEvent], None]) -> Callable[[], None]:
        """Route and link events of this namespace, from the running loop's reader."""
        sock = open_socket(
            self.netns,
            m.RTMGRP_LINK | m.RTMGRP_IPV4_ROUTE | m.RTMGRP_IPV6_ROUTE,
            rcvbuf=64 << 20,
        )
        sock.setblocking(False)
        self._filter = attach_echo_filter(sock, self.protocol)
        loop = asyncio.get_running_loop()
        tables = {self.table, MAIN_TABLE}

        def readable() -> None:
            for _ in range(4096):  # bounded, so a burst of events cannot hog the loop
                try:
                    buf = sock.recv(RECV_SIZE)
                except BlockingIOError:
                    return
                except OSError as exc:
                    if exc.errno == errno.ENOBUFS:
                        listener(Overrun())
                        continue
                    raise
                for event in self._events(buf, tables):
                    listener(event)

        loop.add_reader(sock.fileno(), readable)

        def close() -> None:
            loop.remove_reader(sock.fileno())
            sock.close()

        return close

    def _events(self, buf: bytes, tables: set[int]) -> Iterable[KernelEvent]:
        for mtype, _flags, _seq, start, end in m.iter_messages(buf):
            if mtype in (m.RTM_NEWROUTE, m.RTM_DELROUTE):
                if end - start < m.RTMSG.size:
                    continue
                if mtype == m.RTM_NEWROUTE and buf[start + 5] == self.protocol:
                    # Our own routes come back as echoes of every write (the socket filter
                    # drops most). Like BIRD, only their removal is news here; a route of
                    # ours changed in place is left to the periodic scan.
                    continue
                prefix, table, proto, rtype = m.route_key(buf, start, end)
                if table not in tables or prefix[0] == 0:
                    continue
                if proto == self.protocol:
                    if mtype == m.RTM_DELROUTE and table == self.table:
                        kr = KernelRoute(prefix, proto, table, 0, rtype)
                        yield RouteEvent(kr, deleted=True)
                    continue
                kr = m.parse_route(buf, start, end, self.ifnames)
                if kr is not None:
                    yield RouteEvent(kr, deleted=mtype == m.RTM_DELROUTE)
            elif mtype in (m.RTM_NEWLINK, m.RTM_DELLINK):
                index, name, up = m.parse_link(buf, start, end)
                removed = mtype == m.RTM_DELLINK
                if removed or self.links.get(name, index) != index:
                    self._paths.clear()
                if removed:
                    self.links.pop(name, None)
                    self.ifnames.pop(index, None)
                    self.link_up.pop(index, None)
                elif name:
                    self.links[name] = index
                    self.ifnames[index] = name
                    self.link_up[index] = up
                yield LinkEvent(index, name, up and not removed, removed)
