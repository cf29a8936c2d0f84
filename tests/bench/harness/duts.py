"""Devices under test: BIRD 2, FRR, GoBGP, ExaBGP and routemesh in the receiving slot.

Each adapter writes its daemon's config for the same role (eBGP receiver of the blaster, or
route reflector of K iBGP clients), starts it in the DUT namespace through the lab peers, and
answers "how many prefixes in the RIB now" from the daemon's own CLI or API. Kernel counts come
from /proc/<pid>/net/fib_triestat (procstat.py) for the adapters that write the FIB.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import io
import json
import re
import shlex
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from tests.lab.netns import LabError, Netns
from tests.lab.ours import Neighbor as OurNeighbor
from tests.lab.ours import RoutemeshSpeaker
from tests.lab.peers import BirdPeer, ExabgpPeer, FrrPeer, GobgpPeer
from tests.lab.require import find_binary
from tests.lab.waiting import wait_for

HOLD_TIME = 9


@dataclass(frozen=True)
class DutNeighbor:
    address: str
    asn: int
    rr_client: bool = False


class DutUnavailable(Exception):
    """This DUT cannot run this scenario (e.g. a config key it rejects); reported as n/a."""


class Dut:
    """The adapter contract every DUT fulfils."""

    name: ClassVar[str]
    writes_fib: ClassVar[bool] = False
    can_reflect: ClassVar[bool] = False

    def __init__(
        self,
        ns: Netns,
        *,
        asn: int,
        address: str,
        neighbors: Sequence[DutNeighbor],
        export: bool = False,
        cluster_id: str | None = None,
        fib: bool = True,
    ) -> None:
        self.ns, self.asn, self.address = ns, asn, address
        self.neighbors = list(neighbors)
        self.export = export  # eBGP ingest: False, so no DUT spends time sending routes back
        self.cluster_id = cluster_id
        self.fib = fib and self.writes_fib

    def start(self) -> None:
        raise NotImplementedError

    def pids(self) -> list[int]:
        """The daemon processes whose memory and CPU we charge to this DUT."""
        raise NotImplementedError

    def fib_pid(self) -> int:
        return self.pids()[0]

    def rib_count(self, peer: str) -> int:
        """Prefixes received from ``peer`` that are in the RIB now."""
        raise NotImplementedError

    def rib_total(self) -> int:
        """Prefixes received from all peers that are in the RIB now."""
        raise NotImplementedError

    def log_tail(self) -> str:
        raise NotImplementedError

    def poke(self) -> None:
        """Called while waiting on the DUT's peers; BIRD needs it (see BirdDut.poke)."""
        return None

    @staticmethod
    def version() -> str:
        raise NotImplementedError


def _first_line(argv: Sequence[str]) -> str:
    try:
        res = subprocess.run(list(argv), capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unknown ({exc})"
    return (res.stdout or res.stderr).strip().splitlines()[0] if (res.stdout or res.stderr) else ""


# --- BIRD -----------------------------------------------------------------------------------


class _BirdDaemon(BirdPeer):
    def __init__(self, dut: BirdDut) -> None:
        super().__init__(dut.ns, asn=dut.asn, router_id=dut.address, local_addresses=[dut.address])
        self.dut = dut

    def config_text(self) -> str:
        d = self.dut
        lines = [f"router id {d.address};", "log stderr { warning, error, fatal };"]
        lines.append("protocol device { scan time 60; }")
        # Connected routes let BIRD resolve iBGP next hops (reflected routes) recursively.
        lines.append("protocol direct { ipv4; }")
        if d.fib:
            lines.append("protocol kernel { ipv4 { import none; export all; }; scan time 60; }")
        # Only BGP routes: the connected routes of `protocol direct` are not part of the feed.
        export = "where source = RTS_BGP" if d.export else "none"
        for nb in d.neighbors:
            rr = nb.rr_client and d.cluster_id
            lines += [
                f"protocol bgp {self.proto_name(nb.address)} {{",
                f"  local {d.address} as {d.asn};",
                f"  neighbor {nb.address} as {nb.asn};",
                f"  hold time {HOLD_TIME}; keepalive time {HOLD_TIME // 3};",
                "  passive on;",
                *([f"  rr client; rr cluster id {d.cluster_id};"] if rr else []),
                f"  ipv4 {{ import all; export {export}; }};",
                "}",
            ]
        return "\n".join(lines) + "\n"


class BirdDut(Dut):
    name = "bird"
    writes_fib = True
    can_reflect = True

    def start(self) -> None:
        self.daemon = _BirdDaemon(self)
        self.daemon.start()

    def pids(self) -> list[int]:
        return [p.pid for p in self.daemon.procs]

    def rib_count(self, peer: str) -> int:
        out = self.daemon.birdc("show", "protocols", "all", BirdPeer.proto_name(peer))
        m = re.search(r"Routes:\s+(\d+) imported", out)
        return int(m.group(1)) if m else 0

    def rib_total(self) -> int:
        out = self.daemon.birdc("show", "route", "count", "where", "source", "=", "RTS_BGP")
        m = re.search(r"(\d+) of \d+ routes for \d+ networks in table master4", out)
        return int(m.group(1)) if m else 0

    def log_tail(self) -> str:
        return self.daemon.log_tail()

    def poke(self) -> None:
        # BIRD 2.0.12 can sit on its last partial UPDATE for seconds until its CLI is used
        # (issue 9's pitfalls); the figures of issue 9 were taken with the CLI being poked.
        self.daemon.birdc("show", "status", check=False)

    @staticmethod
    def version() -> str:
        return _first_line(["bird", "--version"])


# --- FRR ------------------------------------------------------------------------------------


class _FrrDaemon(FrrPeer):
    def __init__(self, dut: FrrDut) -> None:
        super().__init__(dut.ns, asn=dut.asn, router_id=dut.address, local_addresses=[dut.address])
        self.dut = dut

    def bgpd_config_text(self) -> str:
        d = self.dut
        lines = [
            "frr defaults traditional",
            f"hostname {self.pathspace}",
            f"log file {self.dir / 'bgpd-frr.log'} warnings",
            "!",
            "route-map BENCH-DENY deny 10",
            "!",
            f"router bgp {d.asn}",
            f" bgp router-id {d.address}",
            " no bgp ebgp-requires-policy",
            " no bgp network import-check",
            " no bgp default ipv4-unicast",
        ]
        if d.cluster_id:
            lines.append(f" bgp cluster-id {d.cluster_id}")
        for nb in d.neighbors:
            a = nb.address
            lines += [
                f" neighbor {a} remote-as {nb.asn}",
                f" neighbor {a} timers {HOLD_TIME // 3} {HOLD_TIME}",
                f" neighbor {a} passive",
            ]
        lines.append(" address-family ipv4 unicast")
        for nb in d.neighbors:
            lines.append(f"  neighbor {nb.address} activate")
            if nb.rr_client:
                lines.append(f"  neighbor {nb.address} route-reflector-client")
            if not d.export:
                lines.append(f"  neighbor {nb.address} route-map BENCH-DENY out")
        lines.append(" exit-address-family")
        return "\n".join(lines) + "\n"


class FrrDut(Dut):
    name = "frr"
    writes_fib = True

    def start(self) -> None:
        self.daemon = _FrrDaemon(self)
        self.daemon.start()

    def pids(self) -> list[int]:
        return [p.pid for p in self.daemon.procs]  # zebra, bgpd

    def fib_pid(self) -> int:
        return self.pids()[0]

    def rib_count(self, peer: str) -> int:
        data = json.loads(self.daemon.vtysh("show bgp ipv4 unicast summary json") or "{}")
        info = (data.get("peers") or {}).get(peer) or {}
        return int(info.get("pfxRcd", 0))

    def rib_total(self) -> int:
        data = json.loads(self.daemon.vtysh("show bgp ipv4 unicast summary json") or "{}")
        return sum(int(p.get("pfxRcd", 0)) for p in (data.get("peers") or {}).values())

    def log_tail(self) -> str:
        return self.daemon.log_tail()

    @staticmethod
    def version() -> str:
        return "FRR " + _first_line([find_binary("bgpd") or "/usr/lib/frr/bgpd", "--version"])


# --- GoBGP ----------------------------------------------------------------------------------


class _GobgpDaemon(GobgpPeer):
    def __init__(self, dut: GobgpDut) -> None:
        super().__init__(dut.ns, asn=dut.asn, router_id=dut.address, local_addresses=[dut.address])
        self.dut = dut

    def config_text(self) -> str:
        d = self.dut
        q = json.dumps
        lines = [
            "[global.config]",
            f"  as = {d.asn}",
            f"  router-id = {q(d.address)}",
            "  port = 179",
            f"  local-address-list = [{q(d.address)}]",
        ]
        for nb in d.neighbors:
            lines += [
                "",
                "[[neighbors]]",
                "  [neighbors.config]",
                f"    neighbor-address = {q(nb.address)}",
                f"    peer-as = {nb.asn}",
                "  [neighbors.timers.config]",
                f"    hold-time = {HOLD_TIME}",
                f"    keepalive-interval = {HOLD_TIME // 3}",
                "  [neighbors.transport.config]",
                f"    local-address = {q(d.address)}",
                "    passive-mode = true",
                "  [[neighbors.afi-safis]]",
                "    [neighbors.afi-safis.config]",
                '      afi-safi-name = "ipv4-unicast"',
            ]
            if nb.rr_client and d.cluster_id:
                lines += [
                    "  [neighbors.route-reflector.config]",
                    "    route-reflector-client = true",
                    f"    route-reflector-cluster-id = {q(d.cluster_id)}",
                ]
            if not d.export:
                lines += [
                    "  [neighbors.apply-policy.config]",
                    '    default-export-policy = "reject-route"',
                ]
        return "\n".join(lines) + "\n"

    def neighbor_count(self) -> int:
        out = self.gobgp("neighbor", "-j", check=False)
        try:
            return len(json.loads(out or "[]") or [])
        except json.JSONDecodeError:
            return 0


class GobgpDut(Dut):
    name = "gobgp"
    can_reflect = True

    def start(self) -> None:
        self.daemon = _GobgpDaemon(self)
        self.daemon.start()
        # gobgpd answers its API before it has read the neighbors out of its config.
        want = len(self.neighbors)
        wait_for(lambda: self.daemon.neighbor_count() >= want, timeout=30, what="gobgp neighbors")

    def pids(self) -> list[int]:
        return [p.pid for p in self.daemon.procs]

    def rib_count(self, peer: str) -> int:
        # Loc-RIB destinations ("Destination: N, Path: M"); the neighbor's adj_table counters
        # are not filled in by gobgpd 3.10.
        out = self.daemon.gobgp("global", "rib", "summary", "-a", "ipv4")
        m = re.search(r"Destination:\s+(\d+)", out)
        return int(m.group(1)) if m else 0

    def rib_total(self) -> int:
        return self.rib_count("")

    def log_tail(self) -> str:
        return self.daemon.log_tail()

    @staticmethod
    def version() -> str:
        return _first_line(["gobgpd", "--version"])


# --- ExaBGP ---------------------------------------------------------------------------------

# ExaBGP hands each parsed UPDATE to an API process as JSON; this one keeps a running count
# (announced minus withdrawn) and writes it to a file every 20 ms for the harness to read.
_EXABGP_COUNTER = """\
import json, os, sys, threading, time
path = sys.argv[1]
count = [0]
def flush():
    last = None
    while True:
        if count[0] != last:
            last = count[0]
            with open(path + ".tmp", "w") as f:
                f.write(str(last))
            os.replace(path + ".tmp", path)
        time.sleep(0.02)
threading.Thread(target=flush, daemon=True).start()
for line in sys.stdin:
    if '"update"' not in line:
        continue
    try:
        msg = json.loads(line)
    except ValueError:
        continue
    upd = msg.get("neighbor", {}).get("message", {}).get("update", {})
    for per_nh in upd.get("announce", {}).get("ipv4 unicast", {}).values():
        count[0] += len(per_nh)
    count[0] -= len(upd.get("withdraw", {}).get("ipv4 unicast", []))
"""


class _ExabgpDaemon(ExabgpPeer):
    def __init__(self, dut: ExabgpDut) -> None:
        super().__init__(dut.ns, asn=dut.asn, router_id=dut.address, local_addresses=[dut.address])
        self.dut = dut
        self.counter = self.dir / "counter.py"
        self.count_file = self.dir / "count"

    def config_text(self) -> str:
        d = self.dut
        self.counter.write_text(_EXABGP_COUNTER)
        lines = [
            "process counter {",
            f"  run {shlex.quote(sys.executable)} {self.counter} {self.count_file};",
            "  encoder json;",
            "}",
        ]
        for nb in d.neighbors:
            lines += [
                f"neighbor {nb.address} {{",
                f"  router-id {d.address};",
                f"  local-address {d.address};",
                f"  local-as {d.asn};",
                f"  peer-as {nb.asn};",
                f"  hold-time {HOLD_TIME};",
                "  passive true;",
                "  adj-rib-in false;",
                "  family { ipv4 unicast; }",
                "  api { processes [ counter ]; receive { parsed; update; } }",
                "}",
            ]
        return "\n".join(lines) + "\n"


class ExabgpDut(Dut):
    name = "exabgp"

    def start(self) -> None:
        self.daemon = _ExabgpDaemon(self)
        self.daemon.start()

    def pids(self) -> list[int]:
        # ExaBGP itself plus its API process: without the API nothing reads the routes out.
        main = [p.pid for p in self.daemon.procs]
        return main + [c for p in main for c in _children(p)]

    def rib_count(self, peer: str) -> int:
        try:
            return int(self.daemon.count_file.read_text() or 0)
        except (OSError, ValueError):
            return 0

    def rib_total(self) -> int:
        return self.rib_count("")

    def log_tail(self) -> str:
        return self.daemon.log_tail()

    @staticmethod
    def version() -> str:
        return "ExaBGP " + importlib.metadata.version("exabgp")


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return out


# --- routemesh ------------------------------------------------------------------------------


class _OurDaemon(RoutemeshSpeaker):
    def __init__(self, dut: RoutemeshDut) -> None:
        neighbors = [
            OurNeighbor(
                address=nb.address,
                remote_asn=nb.asn,
                passive=True,
                hold_time=HOLD_TIME,
                extra={"route-reflector-client": True} if nb.rr_client else {},
            )
            for nb in dut.neighbors
        ]
        extra_global: dict[str, Any] = {"hold-time": HOLD_TIME}
        if dut.cluster_id:
            extra_global["cluster-id"] = dut.cluster_id
        super().__init__(
            dut.ns.lab,
            dut.ns,
            dut.asn,
            dut.address,
            neighbors,
            listen=[dut.address],
            extra_global=extra_global,
        )
        self.dut = dut

    def start(self) -> RoutemeshSpeaker:
        if RoutemeshDut.profile_dir is None:
            return super().start()
        # The same daemon under cProfile; SIGTERM makes it return, and cProfile then writes.
        RoutemeshDut.profile_dir.mkdir(parents=True, exist_ok=True)
        RoutemeshDut.profiles += 1
        out = RoutemeshDut.profile_dir / f"bgpd-{RoutemeshDut.profiles}.prof"
        self.conf.write_text(self.config_text())
        argv = [sys.executable, "-m", "cProfile", "-o", str(out), "-m", "bgpd.cli.main", "bgpd",
                "-f", str(self.conf)]  # fmt: skip
        self.proc = self.ns.popen(argv, log=self.log)
        wait_for(
            lambda: Path(self.sock).exists() or self.proc.poll() is not None,
            timeout=30,
            what="bgpd control socket",
        )
        if self.proc.poll() is not None:
            raise RuntimeError(f"bgpd exited with {self.proc.returncode}:\n{self.log_text()}")
        return self

    def config_text(self) -> str:
        text = super().config_text()
        # Explicit both ways: the FIB is on by default for a non-reflector bgpd, and a DUT
        # measured without it must not write half a million kernel routes anyway.
        text += f"\n[fib]\nenabled = {'true' if self.dut.fib else 'false'}\n"
        return text


class RoutemeshDut(Dut):
    name = "routemesh"
    writes_fib = True  # when the daemon has its FIB writer; otherwise measured as n/a
    can_reflect = True
    # Set by `--profile DIR`: every daemon start writes DIR/bgpd-<n>.prof.
    profile_dir: ClassVar[Path | None] = None
    profiles: ClassVar[int] = 0

    def start(self) -> None:
        self.daemon = _OurDaemon(self)
        self.daemon.conf.write_text(self.daemon.config_text())
        check = self.ns.run(
            [sys.executable, "-m", "bgpd.cli.main", "bgpd", "-f", str(self.daemon.conf), "--check"],
            check=False,
        )
        if check.returncode != 0:
            raise DutUnavailable(f"bgpd rejects the config: {check.stderr.strip()}")
        try:
            self.daemon.start()
        except RuntimeError as exc:
            raise DutUnavailable(str(exc)) from exc
        self.rib_count(self.address)  # imports the CLI now, not inside the first timed poll

    def pids(self) -> list[int]:
        return [self.daemon.proc.pid] if self.daemon.proc else []

    def rib_count(self, peer: str) -> int:
        try:
            rows = json.loads(routemesh_cli("bgp", "status", "-o", "json", "-s", self.daemon.sock))
        except (LabError, json.JSONDecodeError):
            return 0
        return sum(int(r.get("prefixes_accepted", 0)) for r in rows if r["peer"] == peer)

    def rib_total(self) -> int:
        try:
            rows = json.loads(routemesh_cli("bgp", "status", "-o", "json", "-s", self.daemon.sock))
        except (LabError, json.JSONDecodeError):
            return 0
        return sum(int(r.get("prefixes_accepted", 0)) for r in rows)

    def log_tail(self) -> str:
        return self.daemon.log_text()[-3000:]

    @staticmethod
    def version() -> str:
        repo = str(Path(__file__).resolve().parents[3])
        rev = _first_line(["git", "-C", repo, "rev-parse", "--short", "HEAD"])
        # The DUT runs the bgpd/ of the working tree, which may hold uncommitted work.
        dirty = _first_line(["git", "-C", repo, "status", "--porcelain", "--", "bgpd"])
        state = f"{rev}{' + uncommitted bgpd/ changes' if dirty else ''}"
        py = sys.version.split()[0]
        return f"routemesh {importlib.metadata.version('routemesh')} ({state}), Python {py}"


def routemesh_cli(*argv: str) -> str:
    """Run one `routemesh` command in this process and return its stdout.

    The same code path as the `routemesh` command over the daemon's control socket, minus
    the interpreter start (1-4 s on a loaded machine), which would otherwise swamp the
    poll's resolution; birdc, vtysh and gobgp are compiled and start in milliseconds.
    """
    from bgpd.cli.main import main as cli_main

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()) as err:
        rc = cli_main(list(argv))
    if rc != 0:
        raise LabError(f"routemesh {' '.join(argv)}: rc={rc}: {err.getvalue().strip()}")
    return out.getvalue()


DUTS: dict[str, type[Dut]] = {
    cls.name: cls for cls in (BirdDut, FrrDut, GobgpDut, ExabgpDut, RoutemeshDut)
}
