"""NetlinkFib: the kernel writer. Hand-packed route messages, hundreds per sendmsg, acks after.

No route asks for an ack (a no-op at the end of each batch does); the kernel still answers
every failed one with an NLMSG_ERROR carrying its sequence number, which maps the error back
to its route. Messages are packed from one template per next-hop set.
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
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from bgpd.fib import messages as m
from bgpd.fib.base import Fib, KernelEvent, LinkEvent, Overrun, RouteEvent
from bgpd.fib.types import (
    DEFAULT_PROTOCOL,
    MAIN_TABLE,
    Hops,
    KernelRoute,
    Prefix,
    RouteError,
    route_of,
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


def attach_echo_filter(
    sock: socket.socket, protocol: int, writer_portid: int = 0
) -> ctypes.Array[ctypes.c_char]:
    """Drop, in the kernel before they are queued, RTM_NEWROUTE messages of ``protocol`` and
    every route message caused by our writer socket (``writer_portid``: the kernel puts the
    requester's port id in each notification's nlmsg_pid).

    Every route we write or delete comes back on the monitor; at 100k+ routes, receiving and
    skipping them in Python cost more than writing them. Deletions of ours by anyone else
    still get through (they are what the monitor repairs). Returns the filter buffer, which
    must outlive the socket.
    """
    ld_b, ld_w, jeq, ret = 0x30, 0x20, 0x15, 0x06  # BPF_LD|BPF_{B,W}|BPF_ABS, JEQ|K, RET
    # Word loads read network byte order; nlmsg_pid is in ours.
    pid = int.from_bytes(struct.pack("=I", writer_portid), "big") if writer_portid else 0
    prog = [
        (ld_b, 0, 0, 4),  # 0: low byte of nlmsg_type (rtnetlink types fit in one byte)
        (jeq, 1, 0, m.RTM_NEWROUTE),  # 1: -> 3
        (jeq, 0, 6, m.RTM_DELROUTE),  # 2: not a route message: accept
        (ld_w, 0, 0, 12),  # 3: nlmsg_pid
        (jeq, 5, 0, pid if pid else 0xFFFFFFFF),  # 4: our writer's doing: drop
        (ld_b, 0, 0, 4),  # 5
        (jeq, 0, 2, m.RTM_NEWROUTE),  # 6: a deletion by someone else: accept
        (ld_b, 0, 0, m.NLMSGHDR.size + 5),  # 7: rtm_protocol
        (jeq, 1, 0, protocol),  # 8: a route of ours (re)written by someone: drop
        (ret, 0, 0, 0xFFFFFFFF),  # 9: accept
        (ret, 0, 0, 0),  # 10: drop
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
        # The kernel refuses (EMSGSIZE) a sendmsg longer than the send buffer: wide ECMP
        # routes or a buffer we could not enlarge must not turn a batch into an error.
        self.send_max = max(1 << 16, self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) // 2)
        self._seq = 1
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="fib-writer")
        self.links: dict[str, int] = {}
        self.ifnames: dict[int, str] = {}
        self._templates: dict[tuple[int, Hops, bool], m.Template] = {}
        self._del_templates = {v: m.delroute_template(v, self.ctx) for v in (4, 6)}
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
        self._templates.clear()  # packed next hops hold ifindexes
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
        self, writes: list[tuple[Prefix, Hops, bool]], deletes: list[Prefix]
    ) -> list[RouteError]:
        # sendmsg runs the kernel's inserts in our thread: one that resizes a big fib trie
        # node held the loop for 0.6 s at 500k routes. In the writer thread the loop (and
        # the keepalives) go on; the owner task awaits, so the socket has one user.
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, self.write_all, writes, deletes)

    def submit(
        self, writes: list[tuple[Prefix, Hops, bool]], deletes: list[Prefix]
    ) -> asyncio.Future[list[RouteError]]:
        loop = asyncio.get_running_loop()
        return loop.run_in_executor(self._thread, self._write_filtered, writes, deletes)

    def _write_filtered(
        self, writes: list[tuple[Prefix, Hops, bool]], deletes: list[Prefix]
    ) -> list[RouteError]:
        errors = self.write_all(writes, deletes)
        return [e for e in errors if not (e.op == "delete" and e.errno == errno.ESRCH)]

    def write_all(
        self, writes: Sequence[tuple[Prefix, Hops, bool]], deletes: Sequence[Prefix]
    ) -> list[RouteError]:
        """Every write and delete, ``batch`` messages per sendmsg, in one go: the writer
        thread goes from one sendmsg to the next without a loop turn in between (while the
        loop is busy, each turn cost the kernel more idle time than a sendmsg takes)."""
        errors: list[RouteError] = []
        step = self.batch
        for i in range(0, len(writes), step):
            errors.extend(self.write_batch(writes[i : i + step], ()))
        for i in range(0, len(deletes), step):
            errors.extend(self.write_batch((), deletes[i : i + step]))
        return errors

    def _template(self, version: int, hops: Hops, replace: bool) -> m.Template | RouteError:
        """The message template for routes with ``hops``, or the error every such route gets
        (a device that does not exist even after re-reading the devices)."""
        key = (version, hops, replace)
        found = self._templates.get(key)
        if found is not None:
            return found
        route = route_of((version, 0, 0), hops)
        try:
            try:
                paths = m.pack_paths(route, self.ctx, self.links)
            except m.PackError:
                self.refresh_links()  # a device (re)created since the last read
                paths = m.pack_paths(route, self.ctx, self.links)
        except m.PackError as exc:
            return RouteError((version, 0, 0), "replace" if replace else "add", exc.errno, str(exc))
        if len(self._templates) >= 4096:
            self._templates.clear()
        made = self._templates[key] = m.newroute_template(version, paths, self.ctx, replace=replace)
        return made

    def write_batch(
        self, writes: Sequence[tuple[Prefix, Hops, bool]], deletes: Sequence[Prefix]
    ) -> list[RouteError]:
        """Send one sendmsg of messages and collect their errors, each naming its route.

        Message k has sequence number seq0 + k (writes first, then deletes); a final no-op
        asks for the only ack, so no route pays for one, yet we know when the kernel is done.
        The kernel answers every failed message with an NLMSG_ERROR carrying its number.
        """
        errors: list[RouteError] = []
        parts: list[bytes] = []
        if self._links_stale:
            self._links_stale = False
            self.refresh_links()
        n = len(writes) + len(deletes)
        seq0 = self._next_seq(n + 1)
        append = parts.append
        to_bytes = int.to_bytes
        last_hops: Hops | None = None
        last_version, last_replace = 0, False
        t: m.Template | RouteError | None = None
        for k, (prefix, hops, replace) in enumerate(writes):
            # Routes in a slice mostly share one interned Hops: skip the lookup (and the
            # tuple hash it needs) while it stays the same.
            if hops is not last_hops or prefix[0] != last_version or replace != last_replace:
                last_hops, last_version, last_replace = hops, prefix[0], replace
                t = self._template(prefix[0], hops, replace)
            if isinstance(t, RouteError):
                errors.append(RouteError(prefix, t.op, t.errno, t.message, route_of(prefix, hops)))
                continue
            assert t is not None
            append(
                t.pack(
                    t.head, seq0 + k, t.family, prefix[2], t.middle,
                    to_bytes(prefix[1], t.alen, "big"), t.body,
                )
            )  # fmt: skip
        base = len(writes)
        dels = self._del_templates
        for k, prefix in enumerate(deletes, base):
            t = dels[prefix[0]]
            append(
                t.pack(
                    t.head, seq0 + k, t.family, prefix[2], t.middle,
                    to_bytes(prefix[1], t.alen, "big"), t.body,
                )
            )  # fmt: skip
        if not parts:
            self.netlink_errors += len(errors)
            return errors
        ack_seq = seq0 + n
        append(m.NLMSGHDR.pack(16, m.NLMSG_NOOP, m.NLM_F_REQUEST | m.NLM_F_ACK, ack_seq, 0))
        data = b"".join(parts)
        if len(data) <= self.send_max:
            self.sock.send(data)
            self.sendmsg_calls += 1
        else:
            self._send_split(parts)
        self.messages_sent += len(parts) - 1
        done = False
        while not done:
            try:
                buf = self.sock.recv(RECV_SIZE)
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise
                # Errors were dropped: we cannot say which routes failed, so say all may have.
                why = "ack lost (ENOBUFS); resync needed"
                errors.extend(
                    RouteError(p, "replace" if r else "add", errno.ENOBUFS, why, route_of(p, h))
                    for p, h, r in writes
                )
                errors.extend(RouteError(p, "delete", errno.ENOBUFS, why) for p in deletes)
                break
            for mtype, flags, seq, start, end in m.iter_messages(buf):
                if mtype != m.NLMSG_ERROR:
                    continue
                code, text = m.parse_error(buf, start, end, flags)
                k = seq - seq0
                if code and 0 <= k < n:
                    if k < base:
                        prefix, hops, replace = writes[k]
                        op = "replace" if replace else "add"
                        errors.append(RouteError(prefix, op, code, text, route_of(prefix, hops)))
                    else:
                        errors.append(RouteError(deletes[k - base], "delete", code, text))
                    if code == errno.ENODEV:
                        self._links_stale = True  # a device was recreated under a new index
                if seq == ack_seq:
                    done = True
        # A delete of a route already gone is not a failure (apply() drops it too).
        self.netlink_errors += sum(
            1 for e in errors if not (e.op == "delete" and e.errno == errno.ESRCH)
        )
        return errors

    def _send_split(self, parts: list[bytes]) -> None:
        """Send ``parts`` (whole messages) in order, as few sendmsgs as ``send_max`` allows.
        The kernel takes each in turn, so sequence numbers and the final ack work as for one."""
        group: list[bytes] = []
        size = 0
        for part in parts:
            if size + len(part) > self.send_max and group:
                self.sock.send(b"".join(group))
                self.sendmsg_calls += 1
                group, size = [], 0
            group.append(part)
            size += len(part)
        if group:
            self.sock.send(b"".join(group))
            self.sendmsg_calls += 1

    # -- monitor ----------------------------------------------------------------------------

    def monitor(self, listener: Callable[[KernelEvent], None]) -> Callable[[], None]:
        """Route and link events of this namespace, from the running loop's reader."""
        sock = open_socket(
            self.netns,
            m.RTMGRP_LINK | m.RTMGRP_IPV4_ROUTE | m.RTMGRP_IPV6_ROUTE,
            rcvbuf=64 << 20,
        )
        sock.setblocking(False)
        self._filter = attach_echo_filter(sock, self.protocol, self.sock.getsockname()[0])
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
                    self._templates.clear()
                if removed:
                    self.links.pop(name, None)
                    self.ifnames.pop(index, None)
                    self.link_up.pop(index, None)
                elif name:
                    self.links[name] = index
                    self.ifnames[index] = name
                    self.link_up[index] = up
                yield LinkEvent(index, name, up and not removed, removed)
