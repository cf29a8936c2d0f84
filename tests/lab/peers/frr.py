"""FRR as a lab peer: zebra + bgpd in their own pathspace, driven through vtysh."""

from __future__ import annotations

import ipaddress
import json
import shutil
from pathlib import Path
from typing import Any

from tests.lab.netns import LabError, Netns
from tests.lab.peers.base import Family, Peer, Route, RRView, family_of, norm_addr, norm_prefix
from tests.lab.require import find_binary
from tests.lab.waiting import wait_for


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
        info = data.get(peer_addr) or data.get(norm_addr(peer_addr)) or {}
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
                    routes.add((norm_prefix(prefix), norm_addr(nh["ip"])))
        return routes

    def rr_view(self, prefix: str) -> set[RRView]:
        out = self.vtysh(f"show bgp {family_of(prefix)} unicast {prefix} json", check=False)
        try:
            data = json.loads(out or "{}") or {}
        except json.JSONDecodeError:
            return set()
        views: set[RRView] = set()
        for path in data.get("paths") or []:
            if (path.get("peer") or {}).get("peerId") in (None, "(unspec)"):
                continue
            orig = path.get("originatorId")
            clusters = tuple(
                norm_addr(c) for c in ((path.get("clusterList") or {}).get("list") or ())
            )
            for nh in path.get("nexthops", []):
                if nh.get("scope", "global") == "global":
                    views.add((norm_addr(nh["ip"]), norm_addr(orig) if orig else None, clusters))
        return views

    def _af_commands(self, routes: dict[str, str], verb: str) -> None:
        cmds = ["configure terminal", f"router bgp {self.asn}"]
        for fam in ("ipv4", "ipv6"):
            mine = [p for p in routes if family_of(p) == fam]
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
