"""ExaBGP 5 as a lab peer: JSON API output recorded to a file, commands via its CLI pipes."""

from __future__ import annotations

import json
import os
import shlex
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.lab.netns import LabError, Netns
from tests.lab.peers.base import Family, Peer, Route, family_of, norm_addr, norm_prefix
from tests.lab.require import require_module
from tests.lab.waiting import wait_for

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
                if family_of(p) in nb.families
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
        want = norm_addr(peer_addr)
        state = None
        for msg in self._messages():
            if msg.get("type") != "state":
                continue
            nb = msg.get("neighbor", {})
            if norm_addr(nb.get("address", {}).get("peer", "0.0.0.0")) == want:
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
                rib.pop((peer, norm_prefix(prefix_entry["nlri"])), None)
            for nh, entries in update.get("announce", {}).get(key, {}).items():
                for entry in entries:
                    rib[(peer, norm_prefix(entry["nlri"]))] = norm_addr(nh)
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
