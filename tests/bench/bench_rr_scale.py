"""Reflector scale: our bgpd as a dedicated reflector for 100 clients (our own speakers, all in
one process, on addresses of one namespace's loopback); one client announces 10k prefixes.

Prints `name: value` lines: the seconds until every client holds all 10k routes, the same for
clients that connect only once the reflector holds them (`late_seconds`: their syncs, and the
update group they have to join), and the reflector's peak RSS. Never asserts a number
(DESIGN.md, Performance).

Run: sudo .venv/bin/python -m tests.bench.bench_rr_scale [--clients N] [--prefixes N]
or:  sudo .venv/bin/pytest -m slow tests/bench/bench_rr_scale.py -s
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

import pytest

ASN = 64512
BASE = 0xC6126400  # 198.18.100.0: the reflector is .1, clients from .2 up


def addr(i: int) -> str:
    n = BASE + i
    return ".".join(str((n >> s) & 255) for s in (24, 16, 8, 0))


async def run_clients(clients: int, prefixes: int, tmp: Path) -> dict[str, float]:
    """Inside the namespace: start the clients, wait for sessions, originate, time the spread."""
    from bgpd.config import parse_config
    from bgpd.daemon import Daemon
    from bgpd.speaker.types import IPV4_UNICAST

    daemons = []
    for i in range(clients):
        daemons.append(Daemon(parse_config(client_config(i, tmp), f"client{i}")))
    tasks = [asyncio.create_task(d.run()) for d in daemons]
    t0 = time.perf_counter()
    while not all(d.peers and all(p.out is not None for p in d.peers.values()) for d in daemons):
        await asyncio.sleep(0.2)
        if time.perf_counter() - t0 > 300:
            raise RuntimeError("sessions did not all come up in 300 s")
    t_sessions = time.perf_counter() - t0
    batch = [(0x0A000000 | (k << 8), 24) for k in range(prefixes)]  # 10.0.0.0/24 upward
    t1 = time.perf_counter()
    daemons[0].originate(IPV4_UNICAST, batch)
    others = daemons[1:]
    await _all_hold(others, prefixes, t1)
    t_spread = time.perf_counter() - t1
    # Late joiners: every client but 0 and 1 restarts and connects to a reflector that holds
    # the routes already, as nodes joining a running cluster do.
    late = daemons[2:]
    for d in late:
        d.request_stop()
    await asyncio.gather(*tasks[2:], return_exceptions=True)
    late = [Daemon(parse_config(client_config(i, tmp, "l"), f"late{i}")) for i in range(2, clients)]
    t2 = time.perf_counter()
    tasks[2:] = [asyncio.create_task(d.run()) for d in late]
    await _all_hold(late, prefixes, t2)
    t_late = time.perf_counter() - t2
    for d in [*daemons[:2], *late]:
        d.request_stop()
    await asyncio.gather(*tasks, return_exceptions=True)
    return {
        "sessions_up_s": round(t_sessions, 2),
        "seconds": round(t_spread, 2),
        "late_seconds": round(t_late, 2),
    }


async def _all_hold(daemons: list, prefixes: int, since: float) -> None:
    while not all(d.loc_rib.count() >= prefixes for d in daemons):
        await asyncio.sleep(0.1)
        if time.perf_counter() - since > 600:
            raise RuntimeError("routes did not reach every client in 600 s")


def client_config(i: int, tmp: Path, tag: str = "c") -> str:
    me = addr(2 + i)
    return f"""
[global]
asn = {ASN}
router-id = "{me}"
listen-address = []
control-socket = "{tmp}/{tag}{i}.sock"
connect-retry = 1
hold-time = 90
[[neighbor]]
address = "{addr(1)}"
remote-asn = {ASN}
source-address = "{me}"
"""


def cpu_seconds(pid: int) -> float:
    """utime + stime of a live process, from /proc (clock ticks of 1/100 s)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100


def rss_peak_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def bench(clients: int = 100, prefixes: int = 10_000) -> dict[str, float]:
    """Build the namespace, start the reflector bgpd and the client process; return figures."""
    from tests.lab.netns import Lab
    from tests.lab.ours import Neighbor, RoutemeshSpeaker
    from tests.lab.require import require_netns, require_root

    require_root()
    require_netns()
    with Lab() as lab:
        ns = lab.netns()
        for i in range(1, clients + 2):
            ns.add_address("lo", f"{addr(i)}/32")
        rr = RoutemeshSpeaker(
            lab,
            ns,
            asn=ASN,
            router_id=addr(1),
            neighbors=[
                Neighbor(addr(2 + i), ASN, passive=True, extra={"route-reflector-client": True})
                for i in range(clients)
            ],
            listen=[addr(1)],
            extra_global={"cluster-id": "244.0.0.1"},
        ).start()
        assert rr.proc is not None
        tmp = lab.tmpdir("clients")
        argv = [sys.executable, "-m", "tests.bench.bench_rr_scale", "--inside",
                "--clients", str(clients), "--prefixes", str(prefixes), "--tmp", str(tmp)]  # fmt: skip
        cpu0 = cpu_seconds(rr.proc.pid)
        out = ns.run(argv, check=True, timeout=1200).stdout
        figures = json.loads(out.strip().splitlines()[-1])
        figures["reflector_cpu_s"] = round(cpu_seconds(rr.proc.pid) - cpu0, 2)
        figures["reflector_peak_rss_mib"] = round(rss_peak_kib(rr.proc.pid) / 1024, 1)
        figures["clients"] = clients
        figures["prefixes"] = prefixes
        return figures


def report(figures: dict[str, float]) -> None:
    names = ("clients", "prefixes", "sessions_up_s", "seconds", "late_seconds",
             "reflector_cpu_s", "reflector_peak_rss_mib")  # fmt: skip
    for name in names:
        print(f"rr_scale_{name}: {figures[name]}")


@pytest.mark.slow
def test_rr_scale_100_clients_10k_prefixes() -> None:
    report(bench())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--prefixes", type=int, default=10_000)
    ap.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--tmp", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.inside:
        print(json.dumps(asyncio.run(run_clients(args.clients, args.prefixes, Path(args.tmp)))))
        return
    report(bench(args.clients, args.prefixes))


if __name__ == "__main__":
    main()
