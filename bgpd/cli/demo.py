"""`routemesh demo`: our speaker and a BIRD 2 peer in two namespaces, sessions and routes shown.

This is the interim demo of the speaker issue; the cluster demo (three hosts, tenants, policy)
replaces it once the node and policy work lands. Everything it creates is named `rmdemo-*`,
and `--down` (or the end of a run without `--keep`) removes exactly that.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bgpd.cli.bgp import format_routes, format_status
from bgpd.control import ControlError, request

NS_OURS, NS_BIRD = "rmdemo-host1", "rmdemo-bird"
STATE = Path("/run/routemesh-demo")
OUR_V4, BIRD_V4 = "198.18.0.1", "198.18.0.2"
OUR_V6, BIRD_V6 = "fd00:198:18::1", "fd00:198:18::2"
OUR_PREFIXES = ["10.244.1.0/26", "10.244.1.64/26", "fd00:10:244:1::/64"]
BIRD_PREFIXES = ["10.244.2.0/26", "10.244.3.0/26", "fd00:10:244:2::/64"]


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--keep", action="store_true", help="leave the lab running to explore")
    p.add_argument("--down", action="store_true", help="remove a lab left by --keep")


def _sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=check)


def _step(text: str) -> None:
    print(f"==> {text}", flush=True)


def down() -> None:
    """Stop the demo's daemons and delete its namespaces and files."""
    for pidfile in STATE.glob("*.pid") if STATE.exists() else []:
        try:
            pid = int(pidfile.read_text().strip())
            subprocess.run(["kill", "-TERM", str(pid)], capture_output=True)
        except (ValueError, OSError):
            pass
    time.sleep(0.3)
    for ns in (NS_OURS, NS_BIRD):
        pids = _sh("ip", "netns", "pids", ns, check=False).stdout.split()
        for pid in pids:
            subprocess.run(["kill", "-KILL", pid], capture_output=True)
        _sh("ip", "netns", "del", ns, check=False)
    shutil.rmtree(STATE, ignore_errors=True)


def _bird_config() -> str:
    statics4 = "\n".join(f"  route {p} blackhole;" for p in BIRD_PREFIXES if ":" not in p)
    statics6 = "\n".join(f"  route {p} blackhole;" for p in BIRD_PREFIXES if ":" in p)
    return f"""router id {BIRD_V4};
protocol device {{ }}
protocol static s4 {{ ipv4;
{statics4}
}}
protocol static s6 {{ ipv6;
{statics6}
}}
protocol bgp host1 {{
  local {BIRD_V4} as 64513;
  neighbor {OUR_V4} as 64512;
  hold time 9; connect retry time 2; error wait time 1, 4;
  ipv4 {{ import all; export where proto = "s4"; }};
  ipv6 {{ import all; export where proto = "s6"; next hop address {BIRD_V6}; }};
}}
"""


def _our_config(sock: str) -> str:
    lines = [
        "[global]",
        "asn = 64512",
        f'router-id = "{OUR_V4}"',
        f'listen-address = ["{OUR_V4}"]',
        f'control-socket = "{sock}"',
        "connect-retry = 1",
        "",
        "[[neighbor]]",
        f'address = "{BIRD_V4}"',
        "remote-asn = 64513",
        'families = ["ipv4-unicast", "ipv6-unicast"]',
        "hold-time = 9",
    ]
    for prefix in OUR_PREFIXES:
        lines += ["", "[[originate]]", f'prefix = "{prefix}"']
    return "\n".join(lines) + "\n"


def _start(argv: list[str], log: Path, pidfile: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    pidfile.write_text(str(proc.pid))
    return proc


def up() -> tuple[str, Path]:
    """Build the two namespaces, start BIRD and our bgpd; returns our control socket."""
    if shutil.which("bird") is None:
        raise RuntimeError("BIRD 2 is not installed: run `make setup` first")
    down()
    STATE.mkdir(parents=True, exist_ok=True)
    _step("creating namespaces rmdemo-host1 and rmdemo-bird joined by a veth")
    for ns in (NS_OURS, NS_BIRD):
        _sh("ip", "netns", "add", ns)
        _sh("ip", "-n", ns, "link", "set", "lo", "up")
    _sh(
        "ip",
        "-n",
        NS_OURS,
        "link",
        "add",
        "eth0",
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        NS_BIRD,
    )
    for ns, v4, v6 in ((NS_OURS, OUR_V4, OUR_V6), (NS_BIRD, BIRD_V4, BIRD_V6)):
        _sh("ip", "-n", ns, "addr", "add", f"{v4}/24", "dev", "eth0")
        _sh("ip", "-n", ns, "addr", "add", f"{v6}/64", "dev", "eth0", "nodad")
        _sh("ip", "-n", ns, "link", "set", "eth0", "up")
    _step("starting BIRD 2 (AS 64513) announcing " + ", ".join(BIRD_PREFIXES))
    (STATE / "bird.conf").write_text(_bird_config())
    _start(
        [
            "ip",
            "netns",
            "exec",
            NS_BIRD,
            "bird",
            "-f",
            "-c",
            str(STATE / "bird.conf"),
            "-s",
            str(STATE / "bird.ctl"),
        ],
        STATE / "bird.log",
        STATE / "bird.pid",
    )
    sock = str(STATE / "bgpd.sock")
    _step("starting routemesh bgpd (AS 64512) announcing " + ", ".join(OUR_PREFIXES))
    (STATE / "bgpd.toml").write_text(_our_config(sock))
    _start(
        [
            "ip",
            "netns",
            "exec",
            NS_OURS,
            sys.executable,
            "-m",
            "bgpd.cli.main",
            "bgpd",
            "-f",
            str(STATE / "bgpd.toml"),
        ],
        STATE / "bgpd.log",
        STATE / "bgpd.pid",
    )
    return sock, STATE


def _wait(sock: str, timeout: float = 40.0) -> list[dict]:
    deadline = time.monotonic() + timeout
    status: list[dict] = []
    while time.monotonic() < deadline:
        try:
            status = request(sock, "status")
            routes = request(sock, "routes")
            learned = {r["prefix"] for r in routes if r["peer"]}
            if status and status[0]["state"] == "Established" and learned >= set(BIRD_PREFIXES):
                return status
        except ControlError:
            pass
        time.sleep(0.5)
    raise RuntimeError("the session did not come up in time; see " + str(STATE / "bgpd.log"))


def run(args: argparse.Namespace) -> int:
    if args.down:
        down()
        print("demo removed")
        return 0
    try:
        sock, state = up()
        _step("waiting for the session and the routes")
        status = _wait(sock)
    except (RuntimeError, subprocess.CalledProcessError, OSError) as err:
        detail = getattr(err, "stderr", "") or ""
        print(f"routemesh demo: {err} {detail}".strip(), file=sys.stderr)
        down()
        return 1
    print("\nBGP sessions of host1 (routemesh bgp status):")
    print(format_status(status))
    print("\nRoutes of host1 (routemesh bgp routes):")
    print(format_routes(request(sock, "routes")))
    bird = _sh(
        "ip",
        "netns",
        "exec",
        NS_BIRD,
        "birdc",
        "-s",
        str(state / "bird.ctl"),
        "show",
        "route",
        check=False,
    )
    print("\nRoutes BIRD learned from routemesh (birdc show route):")
    print(bird.stdout.strip())
    if args.keep:
        print(
            "\nThe lab is still running. Try:\n"
            f"  routemesh bgp status -s {sock}\n"
            f"  routemesh bgp routes -s {sock} -o json\n"
            f"  ip netns exec {NS_BIRD} birdc -s {state / 'bird.ctl'} show protocols all\n"
            "  routemesh demo --down"
        )
        return 0
    _step("removing the lab")
    down()
    return 0
