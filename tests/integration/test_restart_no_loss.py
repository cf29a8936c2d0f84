"""Restart without loss, end to end (issue 4, acceptance 3): two routers run our `bgpd -f` with
`[fib]` and graceful restart, each with a workload namespace behind it. A ping runs between
the workloads while one router's bgpd is killed with SIGKILL and started again: the kernel
routes stay, the peer keeps ours as stale, and not one packet is lost. The new run wants less
than the old one, and the routes it no longer wants go, on both sides, once it has converged.
"""

from __future__ import annotations

import re
import signal
import time
from pathlib import Path

import pytest

from tests.lab.netns import Lab
from tests.lab.ours import Neighbor, RoutemeshSpeaker, kernel_routes
from tests.lab.require import require_binary, require_root
from tests.lab.waiting import wait_for

pytestmark = pytest.mark.root

R1, R2 = "198.18.46.1", "198.18.46.2"
WS1, WS2 = "10.244.1.10", "10.244.2.10"
R1_BLOCK, R1_DROPPED = "10.244.1.0/26", "10.244.3.0/26"
R2_BLOCK, R2_FILTERED = "10.244.2.0/26", "10.244.4.0/26"
# The second run of r1 refuses R2_FILTERED from r2: its own kernel route for it is stale then.
FILTER = f"""
[[filter]]
name = "no-{R2_FILTERED.split("/")[0]}"
[[filter.rule]]
cidr = "{R2_FILTERED}"
action = "Reject"
"""
GR = {"graceful-restart-time": 60, "select-defer-time": 30}
_REPLY = re.compile(r"^\[(\d+\.\d+)\] \d+ bytes from [^:]+: icmp_seq=(\d+) ")


def _router(lab: Lab, ns, asn: int, me: str, peer: str, peer_asn: int, blocks: list[str]):
    return RoutemeshSpeaker(
        lab,
        ns,
        asn,
        me,
        [Neighbor(peer, peer_asn, hold_time=9, extra={"graceful-restart": True})],
        blocks,
        listen=[me],
        extra_global=GR,
        extra_toml="[fib]\nenabled = true\npersist = true\nscan-time = 5\n",
    )


def _replies(log: Path) -> dict[int, float]:
    """icmp_seq → wall-clock time of its reply, from `ping -D` output."""
    out: dict[int, float] = {}
    for line in log.read_text().splitlines():
        m = _REPLY.match(line)
        if m:
            out[int(m.group(2))] = float(m.group(1))
    return out


def test_kill_9_and_restart_of_a_router_loses_no_ping_and_prunes_what_it_no_longer_wants(
    lab: Lab,
) -> None:
    require_root()
    require_binary("ping")
    ws1, r1ns, r2ns, ws2 = lab.netns(), lab.netns(), lab.netns(), lab.netns()
    lab.veth(ws1, r1ns, [f"{WS1}/26"], ["10.244.1.1/26"])
    lab.veth(r1ns, r2ns, [f"{R1}/24"], [f"{R2}/24"])
    lab.veth(r2ns, ws2, ["10.244.2.1/26"], [f"{WS2}/26"])
    ws1.ip("route", "add", "default", "via", "10.244.1.1")
    ws2.ip("route", "add", "default", "via", "10.244.2.1")
    r1 = _router(lab, r1ns, 65001, R1, R2, 65002, [R1_BLOCK, R1_DROPPED])
    r2 = _router(lab, r2ns, 65002, R2, R1, 65001, [R2_BLOCK, R2_FILTERED])
    r1.start()
    r2.start()

    r1_before = {R2_BLOCK: [R2], R2_FILTERED: [R2]}
    r2_before = {R1_BLOCK: [R1], R1_DROPPED: [R1]}
    wait_for(
        lambda: kernel_routes(r1ns, 4) == r1_before and kernel_routes(r2ns, 4) == r2_before,
        timeout=60,
        what="each router's kernel routes to the other's blocks",
        describe=lambda: (
            f"r1 {kernel_routes(r1ns, 4)}\nr2 {kernel_routes(r2ns, 4)}\n"
            + r1.log_text()[-2000:]
            + r2.log_text()[-2000:]
        ),
    )
    assert ws1.ping(WS2, count=3, timeout=5)

    ping_log = lab.tmp / "ping.log"
    ping = ws1.popen(["ping", "-n", "-D", "-i", "0.05", WS2], log=ping_log)
    time.sleep(1.0)  # a baseline of replies before the crash (ping's output is buffered)
    assert ping.poll() is None, ping_log.read_text()

    t_kill = time.time()
    r1.kill9()
    wait_for(
        lambda: r2.peer_status(R1)["state"] != "Established",
        timeout=30,
        what="r2 to notice r1 is gone",
    )
    # A crash removes nothing: r1's routes are in its kernel, r2 keeps r1's as stale.
    assert kernel_routes(r1ns, 4) == r1_before
    assert kernel_routes(r2ns, 4) == r2_before
    assert r2.peer_status(R1)["stale"] == ["ipv4-unicast"]

    # The new run: one block less to originate, and r2's R2_FILTERED refused on import.
    r1.originate = [R1_BLOCK]
    r1.extra_toml += FILTER
    r1.neighbors[0].extra["import-filter"] = f"no-{R2_FILTERED.split('/')[0]}"
    converged_before = r1.log_text().count("fib: converged")
    Path(r1.sock).unlink(missing_ok=True)
    r1.start()
    r1.wait_established(R2)
    wait_for(
        lambda: r1.log_text().count("fib: converged") > converged_before,
        timeout=60,
        what="r1's FIB converged after the restart",
        describe=lambda: r1.log_text()[-3000:],
    )
    r1_after, r2_after = {R2_BLOCK: [R2]}, {R1_BLOCK: [R1]}
    wait_for(
        lambda: kernel_routes(r1ns, 4) == r1_after and kernel_routes(r2ns, 4) == r2_after,
        timeout=60,
        what="the routes nobody wants any more pruned on both routers",
        describe=lambda: (
            f"r1 {kernel_routes(r1ns, 4)}\nr2 {kernel_routes(r2ns, 4)}\n"
            + r1.log_text()[-2000:]
            + r2.log_text()[-2000:]
        ),
    )
    t_done = time.time()
    time.sleep(1.0)  # replies after the restart is over, too
    assert ping.poll() is None, ping_log.read_text()[-2000:]
    ping.send_signal(signal.SIGINT)
    ping.wait(10)

    replies = _replies(ping_log)
    assert replies, ping_log.read_text()[-2000:]
    last = max(replies)
    # The ping spanned the crash and the whole restart...
    assert min(replies.values()) < t_kill < t_done < replies[last]
    # ...and every request up to the last answered one got its reply.
    lost = sorted(set(range(1, last + 1)) - set(replies))
    assert lost == [], f"{len(lost)} of {last} pings lost: {lost[:20]}"
    assert r1.alive() and r2.alive()
