"""`routemesh bgpd` and `routemesh bgp status|routes|refresh|reload`: run the daemon, or ask a
running one."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from bgpd.config import DEFAULT_CONTROL_SOCKET, ConfigError, load_config
from bgpd.control import ControlError, request
from bgpd.logs import setup_logging


def add_daemon_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--config", required=True, metavar="FILE", help="bgpd.toml")
    p.add_argument("--check", action="store_true", help="validate the config and exit")
    p.add_argument("--log-level", help="override [global] log-level")


def run_daemon_cmd(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as err:
        print(f"bgpd: {err}", file=sys.stderr)
        return 2
    if args.check:
        print(f"{args.config}: OK ({len(config.neighbors)} neighbors)")
        return 0
    gl = config.global_
    setup_logging(args.log_level or gl.log_level, gl.log_format)
    from bgpd.allocator import keep_big_blocks_mapped
    from bgpd.daemon import run_daemon

    keep_big_blocks_mapped()

    return run_daemon(config)


def add_bgp_args(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="bgp_cmd", metavar="COMMAND")
    sub.required = True
    for name, helptext in (("status", "session table"), ("routes", "received and local paths")):
        q = sub.add_parser(name, help=helptext)
        q.add_argument("-s", "--socket", default=DEFAULT_CONTROL_SOCKET, help="control socket")
        q.add_argument("-o", "--output", choices=("table", "json"), default="table")
        if name == "routes":
            q.add_argument("--family", choices=("ipv4-unicast", "ipv6-unicast"))
            q.add_argument(
                "--detail", action="store_true", help="why each best path won, LOCAL_PREF, MED"
            )
    q = sub.add_parser("refresh", help="route refresh: ask a peer again (in), resend ours (out)")
    q.add_argument("peer", metavar="PEER", help="neighbor address")
    q.add_argument("direction", nargs="?", choices=("in", "out", "both"), default="both")
    q.add_argument("-s", "--socket", default=DEFAULT_CONTROL_SOCKET, help="control socket")
    q.add_argument("-o", "--output", choices=("table", "json"), default="table")
    q = sub.add_parser("reload", help="re-read the config file (filters, next-hop, max-prefix)")
    q.add_argument("-s", "--socket", default=DEFAULT_CONTROL_SOCKET, help="control socket")
    q.add_argument("-o", "--output", choices=("table", "json"), default="table")


def run_bgp_cmd(args: argparse.Namespace) -> int:
    extra: dict[str, Any] = {"family": args.family} if getattr(args, "family", None) else {}
    if args.bgp_cmd == "refresh":
        extra = {"peer": args.peer, "direction": args.direction}
    try:
        result = request(args.socket, args.bgp_cmd, **extra)
    except ControlError as err:
        print(f"routemesh: {err}", file=sys.stderr)
        return 1
    if args.output == "json":
        print(json.dumps(result, indent=2))
    elif args.bgp_cmd == "status":
        print(format_status(result))
    elif args.bgp_cmd == "refresh":
        parts = [f"{d}: {', '.join(result[d]) or 'nothing'}" for d in ("in", "out") if d in result]
        print(f"refresh {result['peer']}: " + "; ".join(parts))
    elif args.bgp_cmd == "reload":
        print("reloaded; changed neighbors: " + (", ".join(result["changed"]) or "none"))
    else:
        print(format_routes(result, detail=args.detail))
    return 0


def _since(row: dict[str, Any]) -> str:
    """Session age as hh:mm:ss; '-' only when the session is not up (a new one shows 00:00:00)."""
    if row["state"] != "Established":
        return "-"
    h, rem = divmod(int(row["uptime_s"]), 3600)
    m, s = divmod(rem, 60)
    return f"{h:02d}:{m:02d}:{s:02d}"


def table(headers: list[str], rows: list[list[str]]) -> str:
    """A plain bordered table like `calicoctl node status` prints."""
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)
    ]
    line = "+" + "+".join("-" * (w + 2) for w in widths) + "+"
    fmt = "|" + "|".join(f" {{:<{w}}} " for w in widths) + "|"
    out = [line, fmt.format(*headers), line]
    out += [fmt.format(*r) for r in rows]
    out.append(line)
    return "\n".join(out)


def format_status(rows: list[dict[str, Any]]) -> str:
    body = [
        [
            r["peer"],
            str(r["remote_asn"]),
            r.get("type", ""),
            r["state"],
            _since(r),
            f"{r['prefixes_received']}/{r['prefixes_accepted']}/{r['prefixes_advertised']}",
            r["last_error"] or "",
        ]
        for r in rows
    ]
    headers = ["PEER ADDRESS", "AS", "TYPE", "STATE", "SINCE", "RCV/ACC/ADV", "INFO"]
    return table(headers, body)


def _mark(r: dict[str, Any]) -> str:
    """BIRD-like markers before the prefix: * best, = other multipath member."""
    return "*" if r["best"] else "=" if r.get("multipath") else " "


def format_routes(rows: list[dict[str, Any]], detail: bool = False) -> str:
    headers = ["PREFIX", "NEXT HOP", "AS PATH", "FROM", "COMMUNITIES"]
    body = []
    for r in rows:
        row = [
            _mark(r) + " " + r["prefix"] + (" (stale)" if r.get("stale") else ""),
            r["next_hop"] or "self",
            " ".join(str(a) for a in r["as_path"]) or "i",
            r["peer"] or "local",
            " ".join(r.get("communities", [])),
        ]
        if detail:
            row += [
                str(r.get("local_pref", "")),
                str(r.get("med", "")),
                r.get("originator_id", ""),
                " ".join(r.get("cluster_list", [])),
                r.get("reason") or "",
            ]
        body.append(row)
    if detail:
        headers += ["LOCPRF", "MED", "ORIGINATOR", "CLUSTER LIST", "REASON"]
    return table(headers, body)
