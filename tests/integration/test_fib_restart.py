"""Restart without loss, at the FIB level: the writer is killed with SIGKILL while a ping runs
through the routes it wrote. The routes stay (persist), so the ping loses nothing. The next run
rewrites nothing that is unchanged, and after converged() it removes the route it no longer wants.

The writer runs as its own process (``python -m tests.integration.test_fib_restart``), so that
``kill -9`` is a real crash.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
from pathlib import Path

import pytest

from bgpd.fib.manager import FibManager
from bgpd.fib.netlink import NetlinkFib
from bgpd.fib.types import NextHop, Route, parse_addr, parse_prefix
from tests.lab.require import require_binary, require_root
from tests.lab.waiting import wait_for

pytestmark = pytest.mark.root

PROTO = 80


async def _writer(netns: str, routes: list[str], ready: Path) -> None:
    """Install ``routes`` ("prefix via gateway"), converge, report, then run until killed."""
    mgr = FibManager(NetlinkFib(PROTO, netns=netns))
    await mgr.start()
    found = len(mgr.installed)
    for text in routes:
        prefix, gateway = text.split(" via ")
        mgr.update(Route(parse_prefix(prefix), (NextHop(parse_addr(gateway)[1]),)))
    mgr.converged()
    await mgr.settle()
    fib = mgr.fib
    assert isinstance(fib, NetlinkFib)
    report = {
        "found": found,
        "messages": fib.messages_sent,
        "errors": [str(e) for e in mgr.recent_errors],
    }
    ready.write_text(json.dumps(report))
    await asyncio.Event().wait()


def _routes(ns) -> set[str]:
    return {
        r["dst"]
        for r in json.loads(ns.run(["ip", "-json", "route", "show", "proto", str(PROTO)]).stdout)
    }


def test_kill_9_of_the_writer_loses_no_packet_and_the_next_run_prunes_stale(lab):
    require_root()
    require_binary("ping")
    ws1, r1, r2, ws2 = lab.netns(), lab.netns(), lab.netns(), lab.netns()
    lab.veth(ws1, r1, ["10.244.1.10/26"], ["10.244.1.1/26"])
    lab.veth(r1, r2, ["198.18.0.1/24"], ["198.18.0.2/24"])
    lab.veth(r2, ws2, ["10.244.2.1/26"], ["10.244.2.10/26"])
    ws1.ip("route", "add", "default", "via", "10.244.1.1")
    ws2.ip("route", "add", "default", "via", "10.244.2.1")
    r2.ip("route", "add", "10.244.1.0/26", "via", "198.18.0.1")  # the return path: not ours

    def start(routes: list[str], tag: str):
        ready = lab.tmp / f"ready-{tag}.json"
        proc = lab.popen(
            [
                sys.executable,
                "-m",
                "tests.integration.test_fib_restart",
                r1.name,
                str(ready),
                *routes,
            ],
            log=lab.tmp / f"writer-{tag}.log",
            cwd=Path(__file__).resolve().parents[2],
        )
        report = wait_for(
            lambda: ready.exists() and json.loads(ready.read_text()),
            timeout=30,
            what=f"writer {tag} to converge",
            describe=lambda: (lab.tmp / f"writer-{tag}.log").read_text(),
        )
        return proc, report

    first, report1 = start(["10.244.2.0/26 via 198.18.0.2", "10.244.9.0/26 via 198.18.0.2"], "1")
    assert report1["errors"] == [] and report1["found"] == 0
    assert _routes(r1) == {"10.244.2.0/26", "10.244.9.0/26"}
    assert ws1.ping("10.244.2.10", timeout=2)

    ping_log = lab.tmp / "ping.log"
    ping = ws1.popen(["ping", "-n", "-i", "0.02", "-w", "6", "10.244.2.10"], log=ping_log)
    wait_for(
        lambda: ping_log.exists() and "bytes from" in ping_log.read_text(), timeout=5, what="ping"
    )
    lab.kill9(first)
    assert _routes(r1) == {"10.244.2.0/26", "10.244.9.0/26"}, "persist: routes outlive the crash"

    second, report2 = start(["10.244.2.0/26 via 198.18.0.2"], "2")
    assert report2["found"] == 2, "the new run must find the old routes"
    assert report2["errors"] == []
    assert report2["messages"] == 1, "only the stale route's delete; nothing unchanged rewritten"
    assert _routes(r1) == {"10.244.2.0/26"}

    ping.wait(timeout=15)
    summary = ping_log.read_text()
    m = re.search(r"(\d+) packets transmitted, (\d+) received", summary)
    assert m, summary
    sent, received = int(m.group(1)), int(m.group(2))
    assert sent > 20 and received == sent, summary
    lab.kill9(second)


if __name__ == "__main__":
    netns, ready_path, *route_args = sys.argv[1:]
    asyncio.run(_writer(netns, route_args, Path(ready_path)))
