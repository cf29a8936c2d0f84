"""Real BGP peers for tests: BIRD 2, GoBGP, FRR and ExaBGP run inside a lab namespace.

Each peer writes its own config and keeps its sockets and state in a lab temp dir, so several
instances run at once; state and routes are read back through the daemon's own CLI or API.
"""

from __future__ import annotations

import abc
import asyncio
import ipaddress
import itertools
import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from tests.lab.netns import LabError, Netns
from tests.lab.require import find_binary, require_binary, require_module
from tests.lab.waiting import wait_for

Family = Literal["ipv4", "ipv6"]
Route = tuple[str, str]  # (prefix, next hop), both in Python's compressed text form

_port_counter = itertools.count(50051)


@dataclass(frozen=True)
class Neighbor:
    """One configured BGP session, as seen from the peer that owns it.

    ``local_address`` is the session's source address; by default the peer's own address of
    the neighbor's family. ``graceful_restart`` is honoured by BirdPeer only.
    """

    address: str
    remote_asn: int
    password: str | None = None
    passive: bool = False
    hold_time: int = 9
    families: tuple[Family, ...] = ("ipv4", "ipv6")
    graceful_restart: bool = False
    local_address: str | None = None

    @property
    def version(self) -> int:
        return ipaddress.ip_address(self.address).version


def _norm_prefix(prefix: str) -> str:
    return ipaddress.ip_network(prefix, strict=False).compressed


def _norm_addr(addr: str) -> str:
    return ipaddress.ip_address(addr).compressed


def _family_of(prefix: str) -> Family:
    return "ipv4" if ipaddress.ip_network(prefix, strict=False).version == 4 else "ipv6"


class Peer(abc.ABC):
    """Common API of all lab peers. Subclasses fill in config, process start and CLI reads.

    Announced prefixes are remembered, so a restarted peer announces them again.
    """

    kind: ClassVar[str]
    binaries: ClassVar[tuple[str, ...]]

    def __init__(
        self,
        ns: Netns,
        *,
        asn: int,
        router_id: str,
        local_addresses: Sequence[str],
        neighbors: Sequence[Neighbor] = (),
    ) -> None:
        self.ns = ns
        self.lab = ns.lab
        self.asn = asn
        self.router_id = router_id
        # Accept CIDRs too, since tests often have them at hand from veth().
        self.local_addresses = [_norm_addr(a.split("/", 1)[0]) for a in local_addresses]
        self.neighbors = list(neighbors)
        self.dir = self.lab.tmpdir(self.kind)
        self.log_path = self.dir / f"{self.kind}.log"
        self.announced: dict[str, str] = {}  # prefix -> next hop
        self.procs: list[subprocess.Popen[bytes]] = []
        # Stop before the lab kills processes, so daemons close sessions and sockets cleanly.
        self.lab.on_cleanup(self.close)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.ns.name}, AS{self.asn}, {self.router_id})"

    # -- helpers for tests ------------------------------------------------------------------

    @classmethod
    def require(cls) -> None:
        """Skip (or fail under CI) unless this peer's binaries are installed."""
        for name in cls.binaries:
            require_binary(name)

    def local_address(self, version: int) -> str | None:
        """This peer's first configured address of IP ``version``."""
        for a in self.local_addresses:
            if ipaddress.ip_address(a).version == version:
                return a
        return None

    def session_source(self, nb: Neighbor) -> str:
        src = nb.local_address or self.local_address(nb.version)
        if src is None:
            raise ValueError(f"{self}: no IPv{nb.version} local address for {nb.address}")
        return src

    def next_hop_for(self, family: Family) -> str:
        nh = self.local_address(4 if family == "ipv4" else 6)
        if nh is None:
            raise ValueError(f"{self}: no local address to use as {family} next hop")
        return nh

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the daemon log(s), for failure messages."""
        out = []
        for path in sorted(self.dir.glob("*.log")):
            text = path.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"--- {path.name} ---\n" + "\n".join(text))
        return "\n".join(out) or "(no log)"

    # -- lifecycle --------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return bool(self.procs) and all(p.poll() is None for p in self.procs)

    @abc.abstractmethod
    def start(self) -> None:
        """Write the config and start the daemon(s); return once the CLI answers."""

    def stop(self) -> None:
        """SIGTERM the daemon(s) and wait; a no-op when not running."""
        for proc in reversed(self.procs):
            self.lab.kill(proc)
        self.procs.clear()

    def close(self) -> None:
        """Stop and remove state kept outside the lab temp dir (the Lab calls this)."""
        self.stop()
        self._remove_external_state()

    def _remove_external_state(self) -> None:
        """Hook: delete sockets/pipes a daemon needs outside our temp dir."""
        return None

    def kill9(self) -> None:
        """SIGKILL the daemon(s): sessions drop without a NOTIFICATION, as after a crash."""
        for proc in reversed(self.procs):
            self.lab.kill9(proc)
        self.procs.clear()

    def restart(self) -> None:
        """Stop and start again with the same config and announcements."""
        self.stop()
        self.start()

    # -- sessions and routes ----------------------------------------------------------------

    @abc.abstractmethod
    def is_established(self, peer_addr: str) -> bool:
        """Whether the session to ``peer_addr`` is Established, per the daemon's own view."""

    def wait_established(self, peer_addr: str, timeout: float = 30.0) -> None:
        """Poll the daemon's CLI until the session to ``peer_addr`` is Established."""
        wait_for(
            lambda: self.running and self.is_established(peer_addr),
            timeout=timeout,
            what=f"{self} session to {peer_addr} Established",
            describe=self.log_tail,
        )

    @abc.abstractmethod
    def routes(self, family: Family = "ipv4") -> set[Route]:
        """Routes learned from BGP neighbors (not our own announcements): {(prefix, nh)}."""

    def wait_routes(self, expected: Iterable[Route], timeout: float = 30.0) -> set[Route]:
        """Wait until every expected (prefix, next hop) is learned; return the full set."""
        want = {(_norm_prefix(p), _norm_addr(nh)) for p, nh in expected}
        families = {_family_of(p) for p, _ in want}

        def probe() -> set[Route] | None:
            have: set[Route] = set()
            for fam in families:
                have |= self.routes(fam)
            return have if want <= have else None

        return wait_for(
            probe,
            timeout=timeout,
            what=f"{self} to learn {sorted(want)}",
            describe=lambda: self._describe_routes(families),
        )

    def wait_no_routes(self, prefixes: Iterable[str], timeout: float = 30.0) -> None:
        """Wait until none of ``prefixes`` is learned any more (after a withdraw)."""
        gone = {_norm_prefix(p) for p in prefixes}
        families = {_family_of(p) for p in gone}
        wait_for(
            lambda: not any(p in gone for f in families for p, _ in self.routes(f)),
            timeout=timeout,
            what=f"{self} to drop {sorted(gone)}",
            describe=lambda: self._describe_routes(families),
        )

    # Async twins: the blocking waits above would freeze an event loop that runs our own
    # speaker in the same test, so these poll from a worker thread instead.

    async def wait_established_async(self, peer_addr: str, timeout: float = 30.0) -> None:
        """wait_established() without blocking the running event loop."""
        await asyncio.to_thread(self.wait_established, peer_addr, timeout)

    async def wait_routes_async(
        self, expected: Iterable[Route], timeout: float = 30.0
    ) -> set[Route]:
        """wait_routes() without blocking the running event loop."""
        return await asyncio.to_thread(self.wait_routes, list(expected), timeout)

    async def wait_no_routes_async(self, prefixes: Iterable[str], timeout: float = 30.0) -> None:
        """wait_no_routes() without blocking the running event loop."""
        await asyncio.to_thread(self.wait_no_routes, list(prefixes), timeout)

    def _describe_routes(self, families: Iterable[Family]) -> str:
        parts = []
        for fam in sorted(families):
            try:
                parts.append(f"{fam} routes now: {sorted(self.routes(fam))}")
            except Exception as exc:
                parts.append(f"{fam} routes unreadable: {exc!r}")
        return "\n".join(parts) + "\n" + self.log_tail()

    def announce(self, prefixes: Iterable[str], next_hop: str | None = None) -> None:
        """Originate ``prefixes`` (next hop: our own address of each prefix's family)."""
        new = {}
        for p in prefixes:
            p = _norm_prefix(p)
            new[p] = _norm_addr(next_hop) if next_hop else self.next_hop_for(_family_of(p))
        self.announced.update(new)
        if self.running:
            self._apply_announce(new)

    def withdraw(self, prefixes: Iterable[str]) -> None:
        """Stop originating ``prefixes``."""
        gone = {}
        for p in prefixes:
            p = _norm_prefix(p)
            if p in self.announced:
                gone[p] = self.announced.pop(p)
        if self.running and gone:
            self._apply_withdraw(gone)

    @abc.abstractmethod
    def _apply_announce(self, routes: dict[str, str]) -> None: ...

    @abc.abstractmethod
    def _apply_withdraw(self, routes: dict[str, str]) -> None: ...

    def _check_alive(self) -> None:
        for proc in self.procs:
            if proc.poll() is not None:
                raise LabError(f"{self} exited with {proc.returncode}\n{self.log_tail()}")


# ------------------------------------------------------------------------------------------
# BIRD 2


class BirdPeer(Peer):
    """BIRD 2: ``bird -f -c conf -s sock -P pid``; routes originate from static protocols
    that ``announce`` rewrites and applies with ``birdc configure``."""

    kind = "bird"
    binaries = ("bird", "birdc")

    def __init__(self, ns: Netns, *, kernel_export: bool = False, **kw: Any) -> None:
        super().__init__(ns, **kw)
        # Install learned routes into the namespace's kernel FIB (off: tests read the RIB).
        self.kernel_export = kernel_export
        self.conf = self.dir / "bird.conf"
        self.sock = self.dir / "bird.ctl"
        self.pidfile = self.dir / "bird.pid"

    @staticmethod
    def proto_name(addr: str) -> str:
        """BIRD protocol name used for the session to ``addr``."""
        return "n_" + re.sub(r"[^0-9a-zA-Z]", "_", _norm_addr(addr))

    def config_text(self) -> str:
        lines = [
            f"router id {self.router_id};",
            "log stderr all;",
            # Make session and reconfiguration events visible in the log when a test fails.
            "debug protocols { states, events };",
            "protocol device { scan time 5; }",
        ]
        if self.kernel_export:
            for fam in ("ipv4", "ipv6"):
                lines.append(f"protocol kernel {{ {fam} {{ import none; export all; }}; }}")
        for fam, ver in (("ipv4", 4), ("ipv6", 6)):
            statics = [
                f"  route {p} blackhole;"
                for p in sorted(self.announced)
                if ipaddress.ip_network(p).version == ver
            ]
            lines += [f"protocol static st{ver} {{", f"  {fam};", *statics, "}"]
        for nb in self.neighbors:
            lines += self._neighbor_block(nb)
        return "\n".join(lines) + "\n"

    def _neighbor_block(self, nb: Neighbor) -> list[str]:
        src = self.session_source(nb)
        out = [
            f"protocol bgp {self.proto_name(nb.address)} {{",
            f"  local {src} as {self.asn};",
            f"  neighbor {nb.address} as {nb.remote_asn};",
            f"  hold time {nb.hold_time};",
            f"  keepalive time {max(1, nb.hold_time // 3)};",
            # Defaults (5s first connect, 120s retry, 60s+ error backoff) would dominate
            # test time; tests restart peers and expect sessions back within seconds.
            "  connect delay time 1;",
            "  connect retry time 2;",
            "  error wait time 1, 4;",
        ]
        if nb.passive:
            out.append("  passive on;")
        if nb.password:
            out.append(f'  password "{nb.password}";')
        if nb.graceful_restart:
            out += ["  graceful restart on;", "  graceful restart time 60;"]
        for fam in nb.families:
            ver = 4 if fam == "ipv4" else 6
            body = ["import all;", "export where proto = " + f'"st{ver}";']
            if ver != nb.version:
                # Over the other family's transport the session address cannot be the next
                # hop; BIRD refuses to start the channel unless we name one.
                body.append(f"next hop address {self.next_hop_for(fam)};")
            out.append(f"  {fam} {{ {' '.join(body)} }};")
        out.append("}")
        return out

    def birdc(self, *cmd: str, check: bool = True) -> str:
        """Run one birdc command against this instance's control socket."""
        res = self.ns.run(["birdc", "-s", str(self.sock), *cmd], check=check, timeout=15)
        return res.stdout

    def start(self, *, recovery: bool = False) -> None:
        """Start BIRD; ``recovery`` passes -R (graceful-restart recovery after a kill9)."""
        if self.running:
            return
        self.conf.write_text(self.config_text())
        self.sock.unlink(missing_ok=True)
        argv = ["bird", "-f", "-c", str(self.conf), "-s", str(self.sock), "-P", str(self.pidfile)]
        if recovery:
            argv.append("-R")
        self.procs = [self.ns.popen(argv, log=self.log_path)]

        def ready() -> bool:
            self._check_alive()
            return self.sock.exists() and "Daemon is up" in self.birdc("show", "status")

        wait_for(ready, timeout=15, what=f"{self} control socket", describe=self.log_tail)

    def restart(self, *, kill: bool = False, recovery: bool = False) -> None:
        """Stop (or SIGKILL with ``kill``) and start again, optionally with -R."""
        if kill:
            self.kill9()
        else:
            self.stop()
        self.start(recovery=recovery)

    def is_established(self, peer_addr: str) -> bool:
        out = self.birdc("show", "protocols", self.proto_name(peer_addr), check=False)
        return "Established" in out

    def routes(self, family: Family = "ipv4") -> set[Route]:
        table = "master4" if family == "ipv4" else "master6"
        out = self.birdc("show", "route", "table", table, "where", "source", "=", "RTS_BGP", "all")
        return _parse_bird_routes(out)

    def _reconfigure(self) -> None:
        self.conf.write_text(self.config_text())
        out = self.birdc("configure")
        if "Reconfigured" not in out and "Reconfiguration in progress" not in out:
            raise LabError(f"{self}: birdc configure failed:\n{out}")

    def _apply_announce(self, routes: dict[str, str]) -> None:
        # Static routes are blackholes; BGP export rewrites the next hop to our session
        # address (eBGP) or the channel's "next hop address", which is what tests expect.
        self._reconfigure()

    def _apply_withdraw(self, routes: dict[str, str]) -> None:
        self._reconfigure()


_BIRD_NET_RE = re.compile(r"^([0-9a-fA-F.:]+/\d+)\s+\S+\s+\[")
_BIRD_VIA_RE = re.compile(r"^\s+via\s+(\S+)")
_BIRD_CONT_RE = re.compile(r"^\s{2,}\S+\s+\[")  # another route for the same net


def _parse_bird_routes(out: str) -> set[Route]:
    """Parse ``show route ... all``: a net line, then 'via <gw> on <if>' per next hop."""
    routes: set[Route] = set()
    net: str | None = None
    for line in out.splitlines():
        m = _BIRD_NET_RE.match(line)
        if m:
            net = _norm_prefix(m.group(1))
            continue
        if net is None:
            continue
        m = _BIRD_VIA_RE.match(line)
        if m:
            routes.add((net, _norm_addr(m.group(1).split("%", 1)[0])))
    return routes


# ------------------------------------------------------------------------------------------
# GoBGP


class GobgpPeer(Peer):
    """GoBGP: ``gobgpd -f conf --api-hosts 127.0.0.1:<port>`` (port unique per instance, on
    the namespace's own loopback); routes via ``gobgp global rib add/del``."""

    kind = "gobgp"
    binaries = ("gobgpd", "gobgp")

    def __init__(self, ns: Netns, **kw: Any) -> None:
        super().__init__(ns, **kw)
        self.conf = self.dir / "gobgpd.toml"
        self.api_port = next(_port_counter)

    def config_text(self) -> str:
        q = json.dumps  # TOML basic strings accept JSON string escapes
        lines = [
            "[global.config]",
            f"  as = {self.asn}",
            f"  router-id = {q(self.router_id)}",
            "  port = 179",
        ]
        if self.local_addresses:
            lines.append(
                f"  local-address-list = [{', '.join(q(a) for a in self.local_addresses)}]"
            )
        for nb in self.neighbors:
            if nb.graceful_restart:
                raise NotImplementedError("graceful restart is only wired up for BirdPeer")
            lines += [
                "",
                "[[neighbors]]",
                "  [neighbors.config]",
                f"    neighbor-address = {q(nb.address)}",
                f"    peer-as = {nb.remote_asn}",
            ]
            if nb.password:
                lines.append(f"    auth-password = {q(nb.password)}")
            lines += [
                "  [neighbors.timers.config]",
                f"    hold-time = {nb.hold_time}",
                f"    keepalive-interval = {max(1, nb.hold_time // 3)}",
                # Default 120s retry and idle hold would make restarts slow.
                "    connect-retry = 1",
                "    idle-hold-time-after-reset = 1",
                "  [neighbors.transport.config]",
                f"    local-address = {q(self.session_source(nb))}",
                f"    passive-mode = {'true' if nb.passive else 'false'}",
            ]
            for fam in nb.families:
                lines += [
                    "  [[neighbors.afi-safis]]",
                    "    [neighbors.afi-safis.config]",
                    f'      afi-safi-name = "{fam}-unicast"',
                ]
        return "\n".join(lines) + "\n"

    def gobgp(self, *args: str, check: bool = True) -> str:
        """Run one ``gobgp`` CLI command against this instance's API."""
        argv = ["gobgp", "-u", "127.0.0.1", "-p", str(self.api_port), *args]
        return self.ns.run(argv, check=check, timeout=15).stdout

    def start(self) -> None:
        if self.running:
            return
        self.conf.write_text(self.config_text())
        argv = [
            "gobgpd",
            "-f",
            str(self.conf),
            "-t",
            "toml",
            "-p",
            "-l",
            "info",
            "--api-hosts",
            f"127.0.0.1:{self.api_port}",
            "--pprof-disable",
        ]
        self.procs = [self.ns.popen(argv, log=self.log_path)]

        def ready() -> bool:
            self._check_alive()
            self.gobgp("global")
            # gobgpd serves the API before it has read the config; wait for our neighbors.
            return all(self._neighbor(nb.address) is not None for nb in self.neighbors)

        wait_for(ready, timeout=15, what=f"{self} API", describe=self.log_tail)
        if self.announced:
            self._apply_announce(dict(self.announced))

    def _neighbor(self, addr: str) -> dict[str, Any] | None:
        out = self.gobgp("neighbor", "-j", check=False)
        try:
            data = json.loads(out or "[]")
        except json.JSONDecodeError:
            return None
        for nb in data or []:
            if _norm_addr(nb["conf"]["neighbor_address"]) == _norm_addr(addr):
                return nb
        return None

    def is_established(self, peer_addr: str) -> bool:
        nb = self._neighbor(peer_addr)
        # session_state is an enum; ESTABLISHED is 6 in GoBGP's API.
        return nb is not None and nb.get("state", {}).get("session_state") in (6, "established")

    def routes(self, family: Family = "ipv4") -> set[Route]:
        out = self.gobgp("global", "rib", "-a", family, "-j")
        data = json.loads(out or "{}") or {}
        routes: set[Route] = set()
        for prefix, paths in data.items():
            for path in paths:
                # Locally originated paths have no neighbor-ip; we report learned routes only.
                if path.get("neighbor-ip") in (None, "", "<nil>"):
                    continue
                nh = _gobgp_next_hop(path)
                if nh:
                    routes.add((_norm_prefix(prefix), _norm_addr(nh)))
        return routes

    def _apply_announce(self, routes: dict[str, str]) -> None:
        for prefix, nh in routes.items():
            fam = _family_of(prefix)
            self.gobgp("global", "rib", "add", "-a", fam, prefix, "nexthop", nh)

    def _apply_withdraw(self, routes: dict[str, str]) -> None:
        for prefix in routes:
            self.gobgp("global", "rib", "del", "-a", _family_of(prefix), prefix)


def _gobgp_next_hop(path: dict[str, Any]) -> str | None:
    for attr in path.get("attrs", []):
        # NEXT_HOP (3) for IPv4; MP_REACH_NLRI (14) carries it for other families.
        if attr.get("type") == 3 and attr.get("nexthop"):
            return attr["nexthop"]
        if attr.get("type") == 14 and attr.get("nexthop"):
            return attr["nexthop"]
    return None


# ------------------------------------------------------------------------------------------
# FRR


class FrrPeer(Peer):
    """FRR: zebra + bgpd with pathspace ``-N <unique>`` (sockets in /run/frr/<name>/) and
    configs from our temp dir; vtysh talks to them with the same ``-N``."""

    kind = "frr"
    binaries = ("zebra", "bgpd", "vtysh")

    def __init__(self, ns: Netns, **kw: Any) -> None:
        super().__init__(ns, **kw)
        # The pathspace name carries our pid so the lab sweeper can remove stale state.
        self.pathspace = self.lab.unique_name("frr")
        self.rundir = Path("/run/frr") / self.pathspace
        self.zebra_conf = self.dir / "zebra.conf"
        self.bgpd_conf = self.dir / "bgpd.conf"

    def _remove_external_state(self) -> None:
        if self.rundir.is_dir():
            for p in self.rundir.iterdir():
                p.unlink(missing_ok=True)
            self.rundir.rmdir()

    def bgpd_config_text(self) -> str:
        lines = [
            "frr defaults traditional",
            f"hostname {self.pathspace}",
            f"log file {self.dir / 'bgpd-frr.log'} informational",
            "!",
            f"router bgp {self.asn}",
            f" bgp router-id {self.router_id}",
            # FRR 8 drops all eBGP routes unless a policy is set; tests announce bare prefixes
            # that have no RIB entry, so import-check must be off too.
            " no bgp ebgp-requires-policy",
            " no bgp network import-check",
            " no bgp default ipv4-unicast",
        ]
        for nb in self.neighbors:
            if nb.graceful_restart:
                raise NotImplementedError("graceful restart is only wired up for BirdPeer")
            a = nb.address
            lines += [
                f" neighbor {a} remote-as {nb.remote_asn}",
                f" neighbor {a} timers {max(1, nb.hold_time // 3)} {nb.hold_time}",
                f" neighbor {a} timers connect 1",
                f" neighbor {a} update-source {self.session_source(nb)}",
            ]
            if nb.password:
                lines.append(f" neighbor {a} password {nb.password}")
            if nb.passive:
                lines.append(f" neighbor {a} passive")
        for fam in ("ipv4", "ipv6"):
            ver = 4 if fam == "ipv4" else 6
            lines.append(f" address-family {fam} unicast")
            for nb in self.neighbors:
                if fam in nb.families:
                    lines.append(f"  neighbor {nb.address} activate")
            for p in sorted(self.announced):
                if ipaddress.ip_network(p).version == ver:
                    lines.append(f"  network {p}")
            lines.append(" exit-address-family")
        return "\n".join(lines) + "\n"

    def _daemon_argv(self, daemon: str, conf: Path) -> list[str]:
        binary = find_binary(daemon) or daemon
        # -P 0: no TCP vty, so instances never compete for a port; no -d: stay in the
        # foreground so the Lab owns the process.
        return [
            binary,
            "-N",
            self.pathspace,
            "-f",
            str(conf),
            "-i",
            str(self.rundir / f"{daemon}.pid"),
            "-P",
            "0",
            "--log",
            f"file:{self.dir / (daemon + '.log')}",
        ]

    def vtysh(self, *commands: str, check: bool = True) -> str:
        """Run vtysh commands (each a -c) against this instance."""
        argv = ["vtysh", "-N", self.pathspace]
        for c in commands:
            argv += ["-c", c]
        return self.ns.run(argv, check=check, timeout=15).stdout

    def start(self) -> None:
        if self.running:
            return
        self.rundir.mkdir(parents=True, exist_ok=True)
        # FRR daemons drop to the frr user (running them as root is refused: root is not in
        # the compiled-in frrvty group), so that user must own its state and log dirs.
        for d in (self.rundir, self.dir):
            shutil.chown(d, "frr", "frr")
        self.zebra_conf.write_text(f"hostname {self.pathspace}\n")
        self.bgpd_conf.write_text(self.bgpd_config_text())
        zebra = self.ns.popen(self._daemon_argv("zebra", self.zebra_conf), log=self.log_path)
        self.procs = [zebra]
        zserv = self.rundir / "zserv.api"
        wait_for(
            lambda: self._check_alive() or zserv.exists(),
            timeout=15,
            what=f"{self} zebra socket",
            describe=self.log_tail,
        )
        bgpd = self.ns.popen(self._daemon_argv("bgpd", self.bgpd_conf), log=self.log_path)
        self.procs.append(bgpd)
        wait_for(
            lambda: (
                self._check_alive() or "BGP router identifier" in self.vtysh("show bgp summary")
            ),
            timeout=15,
            what=f"{self} bgpd vty",
            describe=self.log_tail,
        )

    def is_established(self, peer_addr: str) -> bool:
        data = json.loads(self.vtysh(f"show bgp neighbors {peer_addr} json") or "{}")
        info = data.get(peer_addr) or data.get(_norm_addr(peer_addr)) or {}
        return info.get("bgpState") == "Established"

    def routes(self, family: Family = "ipv4") -> set[Route]:
        data = json.loads(self.vtysh(f"show bgp {family} unicast json") or "{}")
        routes: set[Route] = set()
        for prefix, paths in (data.get("routes") or {}).items():
            for path in paths:
                # Our own "network" routes have peerId "(unspec)"; report learned only.
                if path.get("peerId") in (None, "(unspec)"):
                    continue
                for nh in path.get("nexthops", []):
                    if nh.get("scope", "global") != "global":
                        continue  # skip the IPv6 link-local copy of the next hop
                    routes.add((_norm_prefix(prefix), _norm_addr(nh["ip"])))
        return routes

    def _af_commands(self, routes: dict[str, str], verb: str) -> None:
        cmds = ["configure terminal", f"router bgp {self.asn}"]
        for fam in ("ipv4", "ipv6"):
            mine = [p for p in routes if _family_of(p) == fam]
            if mine:
                cmds.append(f"address-family {fam} unicast")
                cmds += [f"{verb}network {p}" for p in mine]
                cmds.append("exit-address-family")
        out = self.vtysh(*cmds)
        if "%" in out:  # vtysh reports config errors on stdout with rc 0
            raise LabError(f"{self}: vtysh refused {cmds}:\n{out}")

    def _apply_announce(self, routes: dict[str, str]) -> None:
        # FRR sets the next hop itself (our session address on eBGP), so routes' nh unused.
        self._af_commands(routes, "")

    def _apply_withdraw(self, routes: dict[str, str]) -> None:
        self._af_commands(routes, "no ")


# ------------------------------------------------------------------------------------------
# ExaBGP

# ExaBGP's API process: copies every JSON message ExaBGP sends it to a file we parse.
_EXABGP_RECORDER = """\
import sys
with open(sys.argv[1], "a", buffering=1) as out:
    for line in sys.stdin:
        out.write(line)
"""

_EXABGP_PIPE_DIR = Path("/run/exabgp")


class ExabgpPeer(Peer):
    """ExaBGP 5: ``python -m exabgp server conf`` as root, JSON encoder into an events file,
    commands through its named-pipe CLI (unique ``exabgp_api_pipename`` per instance)."""

    kind = "exabgp"
    binaries = ()

    @classmethod
    def require(cls) -> None:
        require_module("exabgp")

    def __init__(self, ns: Netns, **kw: Any) -> None:
        super().__init__(ns, **kw)
        self.conf = self.dir / "exabgp.conf"
        self.events = self.dir / "events.jsonl"
        self.recorder = self.dir / "recorder.py"
        # Pipe names must be unique on the host: ExaBGP looks for them in fixed dirs.
        self.pipename = self.lab.unique_name("exabgp")

    def _pipes(self) -> tuple[Path, Path]:
        return (
            _EXABGP_PIPE_DIR / f"{self.pipename}.in",
            _EXABGP_PIPE_DIR / f"{self.pipename}.out",
        )

    def _remove_external_state(self) -> None:
        for p in self._pipes():
            p.unlink(missing_ok=True)

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {
                # Listen only on our namespace addresses (empty would disable listening).
                "exabgp_tcp_bind": " ".join(self.local_addresses),
                "exabgp_tcp_port": "179",
                "exabgp_api_pipename": self.pipename,
                "exabgp_api_cli": "true",
                "exabgp_api_ack": "true",
                # MD5 (setsockopt TCP_MD5SIG) and port 179 need root; keep it.
                "exabgp_daemon_user": "root",
                "exabgp_daemon_drop": "false",
                "exabgp_daemon_daemonize": "false",
                "exabgp_log_destination": "stdout",
                "exabgp_log_level": "INFO",
            }
        )
        return env

    def config_text(self) -> str:
        q = json.dumps
        lines = [
            "process recorder {",
            f"  run {shlex.quote(sys.executable)} {self.recorder} {self.events};",
            "  encoder json;",
            "}",
        ]
        for nb in self.neighbors:
            if nb.graceful_restart:
                raise NotImplementedError("graceful restart is only wired up for BirdPeer")
            lines += [
                f"neighbor {nb.address} {{",
                f"  router-id {self.router_id};",
                f"  local-address {self.session_source(nb)};",
                f"  local-as {self.asn};",
                f"  peer-as {nb.remote_asn};",
                f"  hold-time {nb.hold_time};",
            ]
            if nb.password:
                lines.append(f"  md5-password {q(nb.password)};")
            if nb.passive:
                lines.append("  passive true;")
            lines.append("  family {")
            lines += [f"    {fam} unicast;" for fam in nb.families]
            lines += [
                "  }",
                "  api {",
                "    processes [ recorder ];",
                "    neighbor-changes;",
                "    receive { parsed; update; }",
                "  }",
            ]
            statics = [
                f"    route {p} next-hop {nh};"
                for p, nh in sorted(self.announced.items())
                if _family_of(p) in nb.families
            ]
            if statics:
                lines += ["  static {", *statics, "  }"]
            lines.append("}")
        return "\n".join(lines) + "\n"

    def start(self) -> None:
        if self.running:
            return
        _EXABGP_PIPE_DIR.mkdir(mode=0o755, exist_ok=True)
        for p in self._pipes():
            if p.exists() and not stat.S_ISFIFO(p.stat().st_mode):
                p.unlink()
            if not p.exists():
                os.mkfifo(p, 0o600)
        self.recorder.write_text(_EXABGP_RECORDER)
        self.conf.write_text(self.config_text())
        self.events.write_text("")
        argv = [sys.executable, "-m", "exabgp", "server", str(self.conf)]
        self.procs = [self.ns.popen(argv, log=self.log_path, env=self.env())]
        # ExaBGP has no readiness signal short of the CLI answering.
        wait_for(
            lambda: self._check_alive() or self._cli_ok(),
            timeout=20,
            what=f"{self} CLI",
            describe=self.log_tail,
        )

    def cli(self, command: str, *, timeout: float = 10.0) -> str:
        """Send one API command through ExaBGP's named-pipe CLI and return its answer."""
        argv = [sys.executable, "-m", "exabgp", "cli", "--pipename", self.pipename, command]
        res = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.env(),
            stdin=subprocess.DEVNULL,
        )
        if res.returncode != 0:
            raise LabError(f"{self}: exabgp cli {command!r} failed: {res.stdout}{res.stderr}")
        return res.stdout

    def _cli_ok(self) -> bool:
        try:
            self.cli("version", timeout=5)
        except (LabError, subprocess.TimeoutExpired):
            return False
        return True

    def _messages(self) -> list[dict[str, Any]]:
        msgs = []
        for line in self.events.read_text(errors="replace").splitlines():
            line = line.strip()
            if line.startswith("{"):
                try:
                    msgs.append(json.loads(line))
                except json.JSONDecodeError:
                    continue  # a line still being written
        return msgs

    def is_established(self, peer_addr: str) -> bool:
        # The recorder sees ExaBGP's own neighbor-change notifications; the last one wins.
        want = _norm_addr(peer_addr)
        state = None
        for msg in self._messages():
            if msg.get("type") != "state":
                continue
            nb = msg.get("neighbor", {})
            if _norm_addr(nb.get("address", {}).get("peer", "0.0.0.0")) == want:
                state = nb.get("state")
        return state == "up"

    def routes(self, family: Family = "ipv4") -> set[Route]:
        key = f"{family} unicast"
        rib: dict[tuple[str, str], str] = {}  # (neighbor, prefix) -> next hop
        for msg in self._messages():
            nb = msg.get("neighbor", {})
            peer = nb.get("address", {}).get("peer", "")
            if msg.get("type") == "state" and nb.get("state") != "up":
                rib = {k: v for k, v in rib.items() if k[0] != peer}
                continue
            if msg.get("type") != "update":
                continue
            update = nb.get("message", {}).get("update", {})
            for prefix_entry in update.get("withdraw", {}).get(key, []):
                rib.pop((peer, _norm_prefix(prefix_entry["nlri"])), None)
            for nh, entries in update.get("announce", {}).get(key, {}).items():
                for entry in entries:
                    rib[(peer, _norm_prefix(entry["nlri"]))] = _norm_addr(nh)
        return {(prefix, nh) for (_, prefix), nh in rib.items()}

    def _apply_announce(self, routes: dict[str, str]) -> None:
        for prefix, nh in routes.items():
            self._command(f"announce route {prefix} next-hop {nh}")

    def _apply_withdraw(self, routes: dict[str, str]) -> None:
        for prefix, nh in routes.items():
            self._command(f"withdraw route {prefix} next-hop {nh}")

    def _command(self, command: str) -> None:
        out = self.cli(command)
        if "error" in out.lower():
            raise LabError(f"{self}: {command!r} -> {out}")
        # The CLI acks before the UPDATE leaves; a short pause keeps announce order stable.
        time.sleep(0.05)
