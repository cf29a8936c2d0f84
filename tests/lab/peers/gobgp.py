"""GoBGP as a lab peer: gobgpd with a TOML config and a per-instance gRPC port for gobgp."""

from __future__ import annotations

import itertools
import json
from typing import Any

from tests.lab.netns import Netns
from tests.lab.peers.base import Family, Peer, Route, RRView, family_of, norm_addr, norm_prefix
from tests.lab.waiting import wait_for

_port_counter = itertools.count(50051)


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
            ]
            if nb.graceful_restart:
                # RFC 4724 with the RFC 8538 N bit, as our own speaker offers it.
                lines += [
                    "  [neighbors.graceful-restart.config]",
                    "    enabled = true",
                    "    restart-time = 60",
                    "    notification-enabled = true",
                ]
            lines += [
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
                if nb.graceful_restart:
                    lines += [
                        "    [neighbors.afi-safis.mp-graceful-restart.config]",
                        "      enabled = true",
                    ]
                if nb.add_paths:
                    lines += [
                        "    [neighbors.afi-safis.add-paths.config]",
                        "      receive = true",
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
            if norm_addr(nb["conf"]["neighbor_address"]) == norm_addr(addr):
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
                    routes.add((norm_prefix(prefix), norm_addr(nh)))
        return routes

    def rr_view(self, prefix: str) -> set[RRView]:
        out = self.gobgp("global", "rib", "-a", family_of(prefix), prefix, "-j", check=False)
        try:
            data = json.loads(out or "{}") or {}
        except json.JSONDecodeError:
            return set()
        views: set[RRView] = set()
        for paths in data.values():
            for path in paths:
                if path.get("neighbor-ip") in (None, "", "<nil>"):
                    continue
                orig, clusters = None, ()
                for attr in path.get("attrs", []):
                    if attr.get("type") == 9:
                        orig = norm_addr(attr["value"])
                    elif attr.get("type") == 10:
                        clusters = tuple(norm_addr(c) for c in attr.get("value") or ())
                nh = _gobgp_next_hop(path)
                if nh:
                    views.add((norm_addr(nh), orig, clusters))
        return views

    def add_path(self, prefix: str, *attrs: str, next_hop: str | None = None) -> None:
        """Originate ``prefix`` with raw ``gobgp global rib add`` attributes (local-pref, med,
        aspath, community, ...); replaces what this peer originated for it before."""
        fam = family_of(prefix)
        nh = next_hop or self.next_hop_for(fam)
        self.gobgp("global", "rib", "del", "-a", fam, prefix, check=False)
        self.gobgp("global", "rib", "add", "-a", fam, prefix, "nexthop", nh, *attrs)
        self.announced[norm_prefix(prefix)] = norm_addr(nh)

    def _apply_announce(self, routes: dict[str, str]) -> None:
        for prefix, nh in routes.items():
            fam = family_of(prefix)
            self.gobgp("global", "rib", "add", "-a", fam, prefix, "nexthop", nh)

    def _apply_withdraw(self, routes: dict[str, str]) -> None:
        for prefix in routes:
            self.gobgp("global", "rib", "del", "-a", family_of(prefix), prefix)


def _gobgp_next_hop(path: dict[str, Any]) -> str | None:
    for attr in path.get("attrs", []):
        # NEXT_HOP (3) for IPv4; MP_REACH_NLRI (14) carries it for other families.
        if attr.get("type") == 3 and attr.get("nexthop"):
            return attr["nexthop"]
        if attr.get("type") == 14 and attr.get("nexthop"):
            return attr["nexthop"]
    return None
