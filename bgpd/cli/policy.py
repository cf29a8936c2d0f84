"""`routemesh policy explain`: why an endpoint's traffic is allowed or denied, from the
resources (policies, profiles, sets, tiers, WorkloadEndpoints, HostEndpoints) in YAML files
given with -f, or else in the datastore."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from bgpd.datastore.base import DatastoreError
from bgpd.datastore.resources import ResourceStore, ResourceStoreError
from bgpd.datastore.url import open_datastore, resolve_url
from bgpd.model import (
    GlobalNetworkPolicy,
    GlobalNetworkSet,
    HostEndpoint,
    K8sNetworkPolicy,
    NetworkPolicy,
    NetworkSet,
    Profile,
    Resource,
    ResourceError,
    Tier,
    WorkloadEndpoint,
    load_documents,
)
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
        "-f",
        "--filename",
        action="append",
        help="YAML resources (repeatable; '-' is stdin); without it, read the datastore",
    )
    ex.add_argument(
        "--datastore",
        metavar="URL",
        help="etcd://host:port, sqlite:///path (default: $ROUTEMESH_DATASTORE, then "
        "/etc/routemesh/routemesh.toml)",
    )
    peer = ex.add_mutually_exclusive_group()
    peer.add_argument("--from", dest="peer_from", metavar="X", help="peer address or endpoint")
    peer.add_argument("--to", dest="peer_to", metavar="X", help="peer address or endpoint")
    ex.add_argument("--proto", default=None, help="TCP, UDP, ICMP, SCTP or a number")
    ex.add_argument("--port", type=int, default=None, help="destination port")
    ex.add_argument("--ip-version", type=int, choices=(4, 6), default=4)


# Everything policy reads, in the order the compiler likes (sets and profiles first).
STORE_KINDS: tuple[type[Resource], ...] = (
    Tier,
    Profile,
    GlobalNetworkSet,
    NetworkSet,
    GlobalNetworkPolicy,
    NetworkPolicy,
    K8sNetworkPolicy,
    WorkloadEndpoint,
    HostEndpoint,
)


async def _from_store(url: str) -> list[Resource]:
    datastore = open_datastore(url)
    try:
        store = ResourceStore(datastore)
        out: list[Resource] = []
        for kind in STORE_KINDS:
            out += await store.list(kind)
        return out
    finally:
        await datastore.close()


def _load(paths: list[str] | None, version: int, datastore: str | None) -> PolicyCompiler:
    compiler = PolicyCompiler(version)
    resources: list[Resource] = []
    if paths:
        for path in paths:
            text = sys.stdin.read() if path == "-" else Path(path).read_text()
            resources += load_documents(text, source=path)
    else:
        resources = asyncio.run(_from_store(resolve_url(datastore)))
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
        compiler = _load(args.filename, args.ip_version, args.datastore)
    except (OSError, ResourceError) as err:
        print(f"routemesh: {err}", file=sys.stderr)
        return 2
    except (DatastoreError, ResourceStoreError) as err:
        print(f"routemesh: {err}", file=sys.stderr)
        return 1
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
