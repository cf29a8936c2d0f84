"""The blaster process: pre-encodes a feed, opens BGP session(s) to the DUT from the source
namespace and replays the feed as fast as TCP takes it; also the RR clients (K sessions in one
process, one of which announces). The harness drives it over stdin and reads JSON lines.

  python -m tests.bench.harness.blaster ingest --peer A --local B --asn X --peer-asn Y ...
  python -m tests.bench.harness.blaster rr --peer A --locals B,C,... --asn X --prefixes N
  python -m tests.bench.harness.blaster mesh --peer A --locals B,C,... --asn X --prefixes M

Commands on stdin: connect, announce (rr), withdraw, quit. Events on stdout carry
time.monotonic() stamps, which are comparable across processes on Linux (CLOCK_MONOTONIC).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bgpd.speaker.context import CodecContext
from bgpd.speaker.messages import encode_end_of_rib
from bgpd.speaker.types import IPV4_UNICAST
from tests.bench.harness import feeds
from tests.bench.harness.speaker import Session, SessionFailed


def emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


async def _commands() -> asyncio.Queue[str]:
    """stdin lines as an asyncio queue (a reader thread: stdin may be a pipe or a tty)."""
    loop = asyncio.get_running_loop()
    q: asyncio.Queue[str] = asyncio.Queue()

    def pump() -> None:
        for line in sys.stdin:
            loop.call_soon_threadsafe(q.put_nowait, line.strip())
        loop.call_soon_threadsafe(q.put_nowait, "quit")

    threading.Thread(target=pump, daemon=True).start()
    return q


_background: set[asyncio.Task[None]] = set()


def _keep(task: asyncio.Task[Any]) -> None:
    # The loop holds tasks weakly; keep ours until they finish.
    _background.add(task)
    task.add_done_callback(_background.discard)


def _watch(sessions: Sequence[Session]) -> None:
    """Report every session reset the moment it happens (a reset fails the run)."""

    def report(s: Session) -> None:
        if s.failures:
            emit("failure", session=s.name, reason="; ".join(s.failures), t=time.monotonic())

    for s in sessions:
        task = asyncio.create_task(s.closed.wait())
        task.add_done_callback(lambda _t, s=s: report(s))
        _keep(task)


async def run_ingest(args: argparse.Namespace) -> int:
    ctx = CodecContext()
    t0 = time.monotonic()
    nh = int(ipaddress.IPv4Address(args.next_hop or args.local))
    attrs = feeds.base_attributes(args.asn, ebgp=args.asn != args.peer_asn)
    # End-of-RIB closes the initial feed, as every real speaker sends it; a DUT may hold its
    # FIB writes until it sees one (our bgpd does, until its first convergence).
    updates = [
        *feeds.feed(args.feed, ctx, args.prefixes, nh, attrs),
        encode_end_of_rib(IPV4_UNICAST),
    ]
    announce = feeds.chunks(updates)
    withdraw = feeds.chunks(feeds.withdraw_updates(ctx, args.prefixes))
    emit(
        "ready",
        updates=len(updates),
        bytes=feeds.total_bytes(announce),
        encode_s=round(time.monotonic() - t0, 3),
    )
    del updates
    cmds = await _commands()
    session = Session(
        local_asn=args.asn, peer_asn=args.peer_asn, router_id=args.local, hold_time=args.hold
    )
    while (cmd := await cmds.get()) != "quit":
        try:
            if cmd == "connect":
                await session.connect(args.peer, args.port, args.local)
                _watch([session])
                emit("established", t=session.t_established, hold=session.negotiated_hold)
                await session.send(announce)
                emit("sent", t=time.monotonic())
            elif cmd == "withdraw":
                emit("withdraw_start", t=time.monotonic())
                await session.send(withdraw)
                emit("withdraw_sent", t=time.monotonic())
            else:
                emit("error", reason=f"unknown command {cmd!r}")
        except (SessionFailed, OSError) as exc:
            emit("failure", session=session.name, reason=str(exc), t=time.monotonic())
    await session.close()
    emit("summary", failures=session.failures, updates_in=session.updates_in)
    return 0


class _Completion:
    """Fires when every receiving client holds ``target`` prefixes (or zero, for withdraw)."""

    def __init__(self, receivers: int) -> None:
        self.receivers = receivers
        self.target = 0
        self.full: set[str] = set()
        self.all_full = asyncio.Event()
        self.all_empty = asyncio.Event()

    def update(self, s: Session) -> None:
        if s.received >= self.target > 0:
            self.full.add(s.name)
        else:
            self.full.discard(s.name)
        if len(self.full) == self.receivers and not self.all_full.is_set():
            self.all_full.set()
            emit("all_received", t=time.monotonic())
        if s.received <= 0:
            self.full.discard(s.name)


async def run_rr(args: argparse.Namespace) -> int:
    ctx = CodecContext()
    locals_ = args.locals.split(",")
    nh = int(ipaddress.IPv4Address(args.next_hop or locals_[0]))
    attrs = feeds.base_attributes(args.asn, ebgp=False)
    eor = encode_end_of_rib(IPV4_UNICAST)
    announce = feeds.chunks([*feeds.feed(args.feed, ctx, args.prefixes, nh, attrs), eor])
    withdraw = feeds.chunks(feeds.withdraw_updates(ctx, args.prefixes))
    emit("ready", clients=len(locals_), bytes=feeds.total_bytes(announce))
    done = _Completion(len(locals_) - 1)
    done.target = args.prefixes
    sessions = [
        Session(
            local_asn=args.asn,
            peer_asn=args.asn,
            router_id=addr,
            hold_time=args.hold,
            on_count=done.update,
            track=args.prefixes,
            name=addr,
        )
        for addr in locals_
    ]
    source, receivers = sessions[0], sessions[1:]
    cmds = await _commands()
    while (cmd := await cmds.get()) != "quit":
        try:
            if cmd == "connect":
                await asyncio.gather(*(s.connect(args.peer, args.port, s.name) for s in sessions))
                _watch(sessions)
                emit("established", t=max(s.t_established or 0 for s in sessions))
            elif cmd == "announce":
                emit("announce_start", t=time.monotonic())
                await source.send(announce)
                emit("sent", t=time.monotonic())
            elif cmd == "withdraw":
                emit("withdraw_start", t=time.monotonic())
                _keep(asyncio.create_task(_wait_empty(receivers)))
                await source.send(withdraw)
                emit("withdraw_sent", t=time.monotonic())
            elif cmd == "status":
                emit("status", counts={s.name: s.received for s in sessions})
            else:
                emit("error", reason=f"unknown command {cmd!r}")
        except (SessionFailed, OSError) as exc:
            emit("failure", session="", reason=str(exc), t=time.monotonic())
    await asyncio.gather(*(s.close() for s in sessions))
    emit("summary", failures=[f for s in sessions for f in s.failures])
    return 0


async def run_mesh(args: argparse.Namespace) -> int:
    """K iBGP peers of the DUT, each announcing its own ``--prefixes`` (a node's blocks)."""
    ctx = CodecContext()
    locals_ = args.locals.split(",")
    nh = int(ipaddress.IPv4Address(args.next_hop or locals_[0]))
    attrs = feeds.base_attributes(args.asn, ebgp=False)
    m = args.prefixes
    announce = [
        feeds.chunks(
            [*feeds.shared_updates(ctx, m, nh, attrs, first=i * m), encode_end_of_rib(IPV4_UNICAST)]
        )
        for i in range(len(locals_))
    ]
    withdraw = [
        feeds.chunks(feeds.withdraw_updates(ctx, m, first=i * m)) for i in range(len(locals_))
    ]
    emit("ready", peers=len(locals_), prefixes=m * len(locals_))
    sessions = [
        Session(local_asn=args.asn, peer_asn=args.asn, router_id=a, hold_time=args.hold, name=a)
        for a in locals_
    ]
    cmds = await _commands()
    while (cmd := await cmds.get()) != "quit":
        try:
            if cmd == "connect":
                await asyncio.gather(*(s.connect(args.peer, args.port, s.name) for s in sessions))
                _watch(sessions)
                emit("established", t=max(s.t_established or 0 for s in sessions))
            elif cmd in ("announce", "withdraw"):
                feed = announce if cmd == "announce" else withdraw
                emit(f"{cmd}_start", t=time.monotonic())
                await asyncio.gather(*(s.send(f) for s, f in zip(sessions, feed)))
                emit(f"{cmd}_sent", t=time.monotonic())
            else:
                emit("error", reason=f"unknown command {cmd!r}")
        except (SessionFailed, OSError) as exc:
            emit("failure", session="", reason=str(exc), t=time.monotonic())
    await asyncio.gather(*(s.close() for s in sessions))
    emit("summary", failures=[f for s in sessions for f in s.failures])
    return 0


async def _wait_empty(receivers: Sequence[Session]) -> None:
    while any(s.received > 0 for s in receivers):
        await asyncio.sleep(0.01)
    emit("all_withdrawn", t=time.monotonic())


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="blaster", description=__doc__)
    sub = p.add_subparsers(dest="mode", required=True)
    for name in ("ingest", "rr", "mesh"):
        q = sub.add_parser(name)
        q.add_argument("--peer", required=True, help="the DUT's address")
        q.add_argument("--port", type=int, default=179)
        q.add_argument("--asn", type=int, required=True)
        q.add_argument("--prefixes", type=int, required=True)
        q.add_argument("--feed", choices=("shared", "unique"), default="shared")
        q.add_argument("--hold", type=int, default=9)
    ing = sub.choices["ingest"]
    ing.add_argument("--local", required=True, help="our source address")
    ing.add_argument("--peer-asn", type=int, required=True)
    ing.add_argument("--next-hop", help="default: --local")
    for name in ("rr", "mesh"):
        q = sub.choices[name]
        q.add_argument("--locals", required=True, help="speaker addresses, a,b,c")
        q.add_argument("--next-hop", help="default: the first speaker's address")
    args = p.parse_args(argv)
    runner = {"ingest": run_ingest, "rr": run_rr, "mesh": run_mesh}[args.mode]
    return asyncio.run(runner(args))


# --- the harness side -----------------------------------------------------------------------


class BlasterError(RuntimeError):
    """The blaster did not report what the harness waited for."""


class BlasterProcess:
    """Runs the blaster in a namespace; ``command()`` writes a line, ``wait()`` an event."""

    def __init__(self, ns: Any, args: Sequence[str], log: Path) -> None:
        argv = ns.argv([sys.executable, "-m", "tests.bench.harness.blaster", *args])
        self.log = log
        self._err = open(log, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._err,
            start_new_session=True,
            cwd=Path(__file__).resolve().parents[3],
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        ns.lab.procs.append(self.proc)
        self.failures: list[dict[str, Any]] = []
        self.history: list[dict[str, Any]] = []
        self._unread: list[dict[str, Any]] = []
        self._cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with contextlib.suppress(json.JSONDecodeError):
                self._add(json.loads(line))
        self._add({"event": "exited", "rc": self.proc.wait()})

    def _add(self, ev: dict[str, Any]) -> None:
        with self._cond:
            self.history.append(ev)
            if ev.get("event") == "failure":
                self.failures.append(ev)
            self._unread.append(ev)
            self._cond.notify_all()

    def command(self, cmd: str) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write((cmd + "\n").encode())
            self.proc.stdin.flush()
        except BrokenPipeError as exc:
            raise BlasterError(f"blaster gone before {cmd!r}: {self.tail()}") from exc

    def wait(self, event: str, timeout: float) -> dict[str, Any]:
        """The oldest unread ``event``; BlasterError on a failure, exit, or timeout.

        Other events stay unread, so waiting for one never loses another."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for i, ev in enumerate(self._unread):
                    if ev["event"] == event:
                        del self._unread[i]
                        return ev
                bad = [e for e in self._unread if e["event"] in ("failure", "exited", "error")]
                if bad:
                    raise BlasterError(f"waiting for {event!r}: {bad[0]} {self.tail()}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise BlasterError(f"no {event!r} from the blaster within {timeout:.0f}s")
                self._cond.wait(left)

    def tail(self) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return text[-2000:]

    def quit(self, timeout: float = 10) -> dict[str, Any] | None:
        """Cease the session(s) and return the summary event (None if the process died)."""
        if self.proc.poll() is not None:
            return None
        try:
            self.command("quit")
            return self.wait("summary", timeout)
        except BlasterError:
            return None
        finally:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(5)
            self._err.close()


if __name__ == "__main__":
    raise SystemExit(main())
