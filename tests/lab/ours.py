"""Our own bgpd as a lab peer: a generated bgpd.toml, the daemon in a namespace, CLI queries."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.lab.netns import Lab, Netns
from tests.lab.waiting import wait_for


@dataclass
class Neighbor:
    address: str
    remote_asn: int
    families: Sequence[str] = ("ipv4-unicast",)
    passive: bool = False
    password: str | None = None
    hold_time: int | None = None
    ttl_security: int | None = None
    add_path: str | None = None
    port: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return json.dumps(str(v))


class RoutemeshSpeaker:
    """Runs `bgpd -f` inside ``ns``; ``cli()`` runs `routemesh bgp …` against its socket."""

    def __init__(
        self,
        lab: Lab,
        ns: Netns,
        asn: int,
        router_id: str,
        neighbors: Sequence[Neighbor] = (),
        originate: Sequence[str] = (),
        *,
        listen: Sequence[str] = ("0.0.0.0", "::"),
        listen_port: int = 179,
        extra_global: dict[str, Any] | None = None,
        extra_toml: str = "",
    ) -> None:
        self.lab, self.ns = lab, ns
        self.asn, self.router_id = asn, router_id
        self.neighbors = list(neighbors)
        self.originate = list(originate)
        self.listen, self.listen_port = list(listen), listen_port
        self.extra_global = extra_global or {}
        # Raw TOML appended to the file: [[filter]] tables, [fib], ...
        self.extra_toml = extra_toml
        self.dir = lab.tmpdir("bgpd")
        self.conf = self.dir / "bgpd.toml"
        self.sock = str(self.dir / "bgpd.sock")
        self.log = self.dir / "bgpd.log"
        self.proc: subprocess.Popen[bytes] | None = None
        lab.on_cleanup(self.stop)

    def config_text(self) -> str:
        lines = [
            "[global]",
            f"asn = {self.asn}",
            f'router-id = "{self.router_id}"',
            f"listen-address = {_toml_value(self.listen)}",
            f"listen-port = {self.listen_port}",
            f'control-socket = "{self.sock}"',
            "connect-retry = 1",
        ]
        lines += [f"{k} = {_toml_value(v)}" for k, v in self.extra_global.items()]
        for nb in self.neighbors:
            lines += [
                "",
                "[[neighbor]]",
                f'address = "{nb.address}"',
                f"remote-asn = {nb.remote_asn}",
            ]
            lines.append(f"families = {_toml_value(list(nb.families))}")
            opts = {
                "passive": nb.passive or None,
                "password": nb.password,
                "hold-time": nb.hold_time,
                "ttl-security": nb.ttl_security,
                "add-path": nb.add_path,
                "port": nb.port,
                **nb.extra,
            }
            lines += [f"{k} = {_toml_value(v)}" for k, v in opts.items() if v is not None]
        for prefix in self.originate:
            lines += ["", "[[originate]]", f'prefix = "{prefix}"']
        if self.extra_toml:
            lines += ["", self.extra_toml.strip()]
        return "\n".join(lines) + "\n"

    def start(self) -> RoutemeshSpeaker:
        self.conf.write_text(self.config_text())
        argv = [sys.executable, "-m", "bgpd.cli.main", "bgpd", "-f", str(self.conf)]
        self.proc = self.ns.popen(argv, log=self.log)
        wait_for(
            lambda: Path(self.sock).exists() or self.proc.poll() is not None,
            timeout=15,
            what="bgpd control socket",
        )
        if self.proc.poll() is not None:
            raise RuntimeError(f"bgpd exited with {self.proc.returncode}:\n{self.log.read_text()}")
        return self

    def stop(self) -> int | None:
        """SIGTERM (the daemon sends Cease to every peer) and wait for it to exit."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(10)
        except subprocess.TimeoutExpired:
            return self.lab.kill9(self.proc)

    def kill9(self) -> None:
        if self.proc is not None:
            self.lab.kill9(self.proc)

    def restart(self, *, kill: bool = False) -> RoutemeshSpeaker:
        """Stop (SIGKILL with ``kill``, as a crash) and start again with the same config."""
        if kill:
            self.kill9()
        else:
            self.stop()
        Path(self.sock).unlink(missing_ok=True)
        return self.start()

    def reload(self, extra_toml: str | None = None) -> dict[str, Any]:
        """Rewrite the config (optionally with new extra TOML) and `routemesh bgp reload`."""
        if extra_toml is not None:
            self.extra_toml = extra_toml
        self.conf.write_text(self.config_text())
        return json.loads(self.cli("reload", "-o", "json").stdout)

    def refresh(self, peer: str, direction: str = "both") -> dict[str, Any]:
        return json.loads(self.cli("refresh", peer, direction, "-o", "json").stdout)

    def best(self, prefix: str) -> dict[str, Any] | None:
        """The best path row of ``prefix`` from `routes -o json`, or None."""
        for row in self.routes():
            if row["prefix"] == prefix and row["best"]:
                return row
        return None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "bgpd.cli.main", "bgp", *args, "-s", self.sock]
        return self.ns.run(argv, check=check, timeout=30)

    def status(self) -> list[dict[str, Any]]:
        return json.loads(self.cli("status", "-o", "json").stdout)

    def peer_status(self, address: str) -> dict[str, Any]:
        for row in self.status():
            if row["peer"] == address:
                return row
        raise KeyError(address)

    def routes(self, family: str | None = None) -> list[dict[str, Any]]:
        args = ["routes", "-o", "json"] + (["--family", family] if family else [])
        return json.loads(self.cli(*args).stdout)

    def learned(self, family: str | None = None) -> set[tuple[str, str]]:
        """(prefix, next_hop) of every path received from a peer."""
        return {(r["prefix"], r["next_hop"]) for r in self.routes(family) if r["peer"]}

    def wait_established(self, address: str, timeout: float = 30) -> None:
        wait_for(
            lambda: self.peer_status(address)["state"] == "Established",
            timeout=timeout,
            what=f"routemesh session with {address} Established",
            describe=lambda: self.log_text()[-3000:],
        )

    def log_text(self) -> str:
        return self.log.read_text() if self.log.exists() else ""


# -- the kernel side of our bgpd (its [fib] writer) ------------------------------------------

FIB_PROTOCOL = 80  # bgpd's default rtm_protocol (docs/fib.md)


def kernel_routes(
    ns: Netns, version: int, *, proto: int | str | None = FIB_PROTOCOL, prefix: str | None = None
) -> dict[str, list[str]]:
    """Routes of the main table in ``ns`` (of protocol ``proto``; None = every protocol) as
    prefix → gateways, sorted ('blackhole' / 'dev X' for routes without a gateway)."""
    argv = ["ip", f"-{version}", "-json", "route", "show"]
    if prefix is not None:
        argv.append(prefix)
    if proto is not None:
        argv += ["proto", str(proto)]
    out = ns.ip(*argv[1:]).stdout
    routes: dict[str, list[str]] = {}
    for r in json.loads(out or "[]"):
        dst = r["dst"]
        if dst != "default" and "/" not in dst:
            dst += "/32" if version == 4 else "/128"
        hops = r.get("nexthops") or [r]
        gws = sorted(h.get("gateway") or f"dev {h.get('dev')}" for h in hops)
        if r.get("type") == "blackhole":
            gws = ["blackhole"]
        routes[dst] = gws
    return routes


def kernel_route_count(ns: Netns, version: int, proto: int = FIB_PROTOCOL) -> int:
    """How many routes of ``proto`` the main table in ``ns`` holds (cheap: no JSON)."""
    out = ns.ip(f"-{version}", "route", "show", "proto", str(proto)).stdout
    # A multipath route prints its next hops on indented continuation lines.
    return sum(1 for line in out.splitlines() if line and not line[0].isspace())
