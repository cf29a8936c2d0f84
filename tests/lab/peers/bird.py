"""BIRD 2 as a lab peer: generated config, birdc control socket, static-route origination."""

from __future__ import annotations

import ipaddress
import re
from typing import Any

from tests.lab.netns import LabError, Netns
from tests.lab.peers.base import (
    Family,
    Neighbor,
    Peer,
    Route,
    RRView,
    family_of,
    norm_addr,
    norm_prefix,
)
from tests.lab.waiting import wait_for


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
        return "n_" + re.sub(r"[^0-9a-zA-Z]", "_", norm_addr(addr))

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
        if nb.remote_asn == self.asn:
            # Lab iBGP peers share a segment. As multihop, BIRD would resolve a reflected next
            # hop recursively in a table that has no device routes, and hide the route.
            out.append("  direct;")
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
            if nb.add_paths:
                body.append("add paths rx;")
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

    def rr_view(self, prefix: str) -> set[RRView]:
        table = "master4" if family_of(prefix) == "ipv4" else "master6"
        out = self.birdc("show", "route", prefix, "table", table, "all")
        return _parse_bird_rr(out)

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


def _parse_bird_routes(out: str) -> set[Route]:
    """Parse ``show route ... all``: a net line, then 'via <gw> on <if>' per next hop."""
    routes: set[Route] = set()
    net: str | None = None
    for line in out.splitlines():
        m = _BIRD_NET_RE.match(line)
        if m:
            net = norm_prefix(m.group(1))
            continue
        if net is None:
            continue
        m = _BIRD_VIA_RE.match(line)
        if m:
            routes.add((net, norm_addr(m.group(1).split("%", 1)[0])))
    return routes


def _parse_bird_rr(out: str) -> set[RRView]:
    """(next hop, originator, cluster list) per BGP path in ``show route <net> all``."""
    views: set[RRView] = set()
    cur: dict[str, object] | None = None

    def flush() -> None:
        if cur is not None and cur.get("nh") and cur.get("bgp"):
            views.add((cur["nh"], cur.get("orig"), tuple(cur.get("cl", ()))))  # type: ignore[arg-type]

    for line in out.splitlines():
        s = line.strip()
        # Each path starts on a line of its own ("<net> unicast [..." or indented "unicast [...");
        # its details follow on tab-indented lines.
        if not line.startswith("\t") and "[" in s:
            flush()
            cur = {}
            continue
        if cur is None:
            continue
        m = _BIRD_VIA_RE.match(line)
        if m:
            cur["nh"] = norm_addr(m.group(1).split("%", 1)[0])
        elif s.startswith("BGP.origin:"):
            cur["bgp"] = True
        elif s.startswith("BGP.originator_id:"):
            cur["orig"] = norm_addr(s.split(":", 1)[1].strip())
        elif s.startswith("BGP.cluster_list:"):
            cur["cl"] = [norm_addr(x) for x in s.split(":", 1)[1].split()]
    flush()
    return views
