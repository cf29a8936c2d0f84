"""`routemesh node run|status|diags`: run this host's node, or ask a running one.

`status` prints what `calicoctl node status` prints (the BGP session table) plus the node's
blocks, endpoints, tunnels and FIB state; `diags` collects status, routes, rules and logs into
a tarball for a bug report, without secrets.
"""

from __future__ import annotations

import argparse
import io
import ipaddress
import json
import socket
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

from bgpd.cli.bgp import format_status
from bgpd.control import ControlError, request

RUN_DIR = Path("/run/routemesh")


def add_args(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="node_cmd", metavar="COMMAND")
    sub.required = True
    q = sub.add_parser("run", help="run this host's node in the foreground (what systemd starts)")
    q.add_argument("--name", help="node name (default: the hostname)")
    where = q.add_mutually_exclusive_group()
    where.add_argument("--ip", metavar="ADDR/LEN", help="the node's IPv4 address with its subnet")
    where.add_argument(
        "--ip-autodetect",
        metavar="METHOD",
        default="first-found",
        help="first-found, interface=REGEX, skip-interface=REGEX, can-reach=DEST, cidr=CIDR",
    )
    q.add_argument("--as", dest="asn", type=int, metavar="ASN", help="this node's AS number")
    q.add_argument("--datastore", help="etcd://…, sqlite:///path (default: see docs)")
    q.add_argument("--run-dir", default=str(RUN_DIR), help="control sockets live here")
    q.add_argument(
        "--log-level",
        help="debug, info, warning, error (default: BGPConfiguration logSeverityScreen, else info)",
    )
    q.add_argument("--log-format", choices=("text", "json"), default="text")
    q.add_argument("--hold-time", type=int, default=90, help="BGP hold time, seconds")
    q.add_argument("--resync-interval", type=float, default=30.0, help="seconds")
    q.add_argument("--mtu-file", help="where to publish the workload MTU for the CNI plugin")
    q.add_argument("--no-policy", action="store_true", help="leave iptables alone")
    q.add_argument(
        "--metrics-port",
        type=int,
        default=9091,
        metavar="PORT",
        help="serve /metrics, /livez and /readyz here (default 9091, as Felix; 0 = off)",
    )
    q.add_argument(
        "--metrics-address",
        default="0.0.0.0",
        metavar="ADDR",
        help="address the metrics port listens on (default 0.0.0.0: every address)",
    )
    for name, helptext in (
        ("status", "sessions, blocks, endpoints, tunnels"),
        ("diags", "tarball"),
    ):
        q = sub.add_parser(name, help=helptext)
        q.add_argument("--node", help="node name (default: the only node running here)")
        q.add_argument("--run-dir", default=str(RUN_DIR))
        if name == "status":
            q.add_argument("-o", "--output", choices=("table", "json"), default="table")
        else:
            q.add_argument("--out", help="tarball path (default: ./routemesh-diags-NODE-TIME.tgz)")


def node_socket(node: str | None, run_dir: Path) -> Path:
    """The control socket of ``node``, or of the only node running on this host."""
    if node:
        return run_dir / f"node-{node}.sock"
    found = sorted(run_dir.glob("node-*.sock"))
    if len(found) == 1:
        return found[0]
    if not found:
        raise ControlError(f"no node is running here (no node-*.sock in {run_dir})")
    names = ", ".join(p.name[5:-5] for p in found)
    raise ControlError(f"several nodes run here ({names}); pick one with --node")


def run(args: argparse.Namespace) -> int:
    if args.node_cmd == "run":
        return _run(args)
    try:
        path = node_socket(args.node, Path(args.run_dir))
        status = request(str(path), "node-status")
    except ControlError as err:
        print(f"routemesh node {args.node_cmd}: {err}", file=sys.stderr)
        return 1
    if args.node_cmd == "status":
        if args.output == "json":
            print(json.dumps(status, indent=2, sort_keys=True))
        else:
            print(format_node_status(status))
        return 0
    return _diags(args, path, status)


def _run(args: argparse.Namespace) -> int:
    from agent.node import NodeOptions, run_node
    from bgpd.allocator import keep_big_blocks_mapped
    from bgpd.datastore.url import DatastoreURLError, resolve_url
    from bgpd.logs import setup_logging

    setup_logging(args.log_level or "info", args.log_format)
    keep_big_blocks_mapped()
    if not 0 <= args.metrics_port <= 65535:
        print(
            f"routemesh node run: --metrics-port {args.metrics_port}: not a port", file=sys.stderr
        )
        return 2
    try:
        ipaddress.ip_address(args.metrics_address)
    except ValueError:
        print(
            f"routemesh node run: --metrics-address {args.metrics_address!r}: not an IP address",
            file=sys.stderr,
        )
        return 2
    try:
        url = resolve_url(args.datastore)
    except DatastoreURLError as err:
        print(f"routemesh node run: {err}", file=sys.stderr)
        return 2
    opts = NodeOptions(
        datastore=url,
        name=args.name or socket.gethostname(),
        ip=args.ip,
        ip_autodetect=args.ip_autodetect,
        asn=args.asn,
        run_dir=Path(args.run_dir),
        hold_time=args.hold_time,
        resync_interval=args.resync_interval,
        policy=not args.no_policy,
        mtu_file=Path(args.mtu_file) if args.mtu_file else None,
        log_level=args.log_level,
        metrics_port=args.metrics_port,
        metrics_address=args.metrics_address,
    )
    return run_node(opts)


def format_node_status(status: dict[str, Any]) -> str:
    lines = [
        f"routemesh node {status['node']} is running (up {status['uptime_s']:.0f}s)",
        f"Address: {status['address']}   AS: {status['asn']}"
        + (
            f"   Route reflector cluster: {status['route_reflector_cluster_id']}"
            if status.get("route_reflector_cluster_id")
            else ""
        ),
        "",
        "IPv4/IPv6 BGP status",
        format_status(status["bgp"]),
        "",
        "Blocks: " + (", ".join(status["blocks"]) or "none"),
        "Borrowed addresses: " + (", ".join(status["borrowed"]) or "none"),
    ]
    vx = status.get("vxlan")
    lines.append(
        f"VXLAN: {vx['device']} VTEP {vx['vtep']} MAC {vx['mac']}" if vx else "VXLAN: not in use"
    )
    for cond in status.get("tunnel_conditions", []):
        lines.append(f"  {cond['type']}={cond['status']} ({cond['reason']}): {cond['message']}")
    fib = status.get("fib")
    if fib:
        lines.append(
            f"FIB: {fib['routes_installed']} routes installed, "
            f"{'in sync' if fib['in_sync'] else 'converging' if not fib['converged'] else 'syncing'}"
        )
    if status.get("policy_synced") is not None:
        lines.append(f"Policy: {'synced' if status['policy_synced'] else 'not synced yet'}")
    for name, problem in sorted((status.get("policy_problems") or {}).items()):
        lines.append(f"  NOT APPLIED {name}: {problem}")
    return "\n".join(lines)


def _command(argv: list[str]) -> bytes:
    try:
        res = subprocess.run(argv, capture_output=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"$ {' '.join(argv)}\n{err}\n".encode()
    return f"$ {' '.join(argv)}\n".encode() + res.stdout + res.stderr


def _diags(args: argparse.Namespace, path: Path, status: dict[str, Any]) -> int:
    stamp = time.strftime("%Y%m%dT%H%M%S")
    out = Path(args.out or f"routemesh-diags-{status['node']}-{stamp}.tgz")
    files: dict[str, bytes] = {
        "status.json": json.dumps(status, indent=2, sort_keys=True).encode(),
    }
    try:
        files["routes.json"] = json.dumps(
            request(str(path), "routes"), indent=2, sort_keys=True
        ).encode()
    except ControlError as err:
        files["routes.json"] = f"unavailable: {err}\n".encode()
    # What an engineer asks for first. None of these print secrets: TCP-MD5 keys live in
    # the kernel and are not shown by ip/ss, and we never dump the config or the store.
    commands = {
        "ip-route.txt": ["ip", "route", "show", "table", "all"],
        "ip-6-route.txt": ["ip", "-6", "route", "show", "table", "all"],
        "ip-addr.txt": ["ip", "addr"],
        "ip-link.txt": ["ip", "-d", "link"],
        "ip-neigh.txt": ["ip", "neigh"],
        "bridge-fdb.txt": ["bridge", "fdb", "show"],
        "iptables-save.txt": ["iptables-save"],
        "ip6tables-save.txt": ["ip6tables-save"],
        "ipset-list.txt": ["ipset", "list"],
        "ss.txt": ["ss", "-tanp"],
        # Recent logs, when systemd runs the node (logs go to stderr, so to the journal).
        "journal.txt": ["journalctl", "-u", "routemesh-node", "--no-pager", "-n", "5000"],
    }
    for name, argv in commands.items():
        files[name] = _command(argv)
    with tarfile.open(out, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(f"routemesh-diags/{name}")
            info.size = len(data)
            info.mtime = int(time.time())
            tar.addfile(info, io.BytesIO(data))
    print(f"diagnostics written to {out}")
    return 0
