"""`routemesh policy explain`: why an endpoint's traffic is allowed or denied, from the
resources in a YAML file (policies, profiles, sets, WorkloadEndpoints, HostEndpoints)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bgpd.model import HostEndpoint, ResourceError, WorkloadEndpoint, load_documents
from policy.compiler import PolicyCompiler
from policy.endpoint import Endpoint
from policy.explain import ExplainError, explain


def add_args(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="policy_cmd", metavar="COMMAND")
    sub.required = True
    ex = sub.add_parser(
        "explain",
        help="list the tiers, policies and profiles of ENDPOINT and the rule deciding a flow",
    )
    ex.add_argument("endpoint", metavar="ENDPOINT", help="name, namespace/name, iface or IP")
    ex.add_argument(
        "-f", "--filename", required=True, action="append", help="YAML resources (repeatable)"
    )
    peer = ex.add_mutually_exclusive_group()
    peer.add_argument("--from", dest="peer_from", metavar="X", help="peer address or endpoint")
    peer.add_argument("--to", dest="peer_to", metavar="X", help="peer address or endpoint")
    ex.add_argument("--proto", default=None, help="TCP, UDP, ICMP, SCTP or a number")
    ex.add_argument("--port", type=int, default=None, help="destination port")
    ex.add_argument("--ip-version", type=int, choices=(4, 6), default=4)


def _load(paths: list[str], version: int) -> PolicyCompiler:
    compiler = PolicyCompiler(version)
    resources = []
    for path in paths:
        text = sys.stdin.read() if path == "-" else Path(path).read_text()
        resources += load_documents(text, source=path)
    endpoints = []
    for res in resources:
        if isinstance(res, WorkloadEndpoint):
            endpoints.append(Endpoint.from_workload(res))
        elif isinstance(res, HostEndpoint):
            endpoints.append(Endpoint.from_host(res))
    compiler.set_resources(resources)
    compiler.set_endpoints(endpoints)
    return compiler


def run(args: argparse.Namespace) -> int:
    try:
        compiler = _load(args.filename, args.ip_version)
    except OSError as err:
        print(f"routemesh: {err}", file=sys.stderr)
        return 2
    except ResourceError as err:
        print(f"routemesh: {err}", file=sys.stderr)
        return 2
    proto = args.proto
    if proto is not None and proto.isdigit():
        proto = int(proto)
    try:
        exp = explain(
            compiler,
            args.endpoint,
            peer_from=args.peer_from,
            peer_to=args.peer_to,
            proto=proto,
            port=args.port,
        )
    except (ExplainError, KeyError, ValueError) as err:
        print(f"routemesh: {err}", file=sys.stderr)
        return 2
    print(exp)
    return 0
