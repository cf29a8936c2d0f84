"""`routemesh endpoint add|del|list`: workload endpoints by hand, in an existing netns, for labs
without an orchestrator. The same `agent.endpoints.Workloads` path the CNI plugin takes."""

from __future__ import annotations

import argparse
import json
import socket
from typing import Any

from agent.endpoint import EndpointDataplane, EndpointError
from agent.endpoints import WorkloadError, WorkloadRequest, Workloads, cli_container_id
from agent.mtu import DEFAULT_MTU, read_mtu_file
from agent.netlink import NetnsNotFoundError
from bgpd.cli.bgp import table
from bgpd.cli.selector import parse_labels
from bgpd.cli.storecmd import Output, run_with_store
from bgpd.datastore.base import Datastore
from ipam import Ipam, IpamError

ORCHESTRATOR = "cli"
NETWORK = "routemesh"


def add_args(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="endpoint_cmd", metavar="COMMAND")
    sub.required = True
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--datastore", metavar="URL", help="etcd://host:port, sqlite:///path")
    common.add_argument("--node", metavar="NAME", help="this node's name (default: hostname)")
    add = sub.add_parser("add", parents=[common], help="create an endpoint in a netns")
    add.add_argument("--netns", required=True, help="netns name or path (must exist)")
    add.add_argument("--namespace", required=True, metavar="NS")
    add.add_argument("--name", required=True)
    add.add_argument("--labels", default="", help="k=v,k2=v2")
    add.add_argument("--profile", action="append", default=[], metavar="P")
    add.add_argument("--ip", action="append", default=[], metavar="ADDR", help="fixed address")
    add.add_argument("--ipv6", action="store_true", help="also assign an IPv6 address")
    add.add_argument("--pool", action="append", default=[], help="pool name or CIDR to use")
    add.add_argument("--ifname", default="eth0")
    add.add_argument("--mtu", type=int, help="default: the agent's MTU file, else 1500")
    add.add_argument("-o", "--output", choices=("text", "json"), default="text")
    rm = sub.add_parser("del", parents=[common], help="remove an endpoint")
    rm.add_argument("--namespace", required=True, metavar="NS")
    rm.add_argument("--name", required=True)
    rm.add_argument("--ifname", default="eth0")
    ls = sub.add_parser("list", parents=[common], help="this node's endpoints")
    ls.add_argument("-o", "--output", choices=("table", "json"), default="table")


def run(args: argparse.Namespace) -> int:
    errors = (WorkloadError, EndpointError, NetnsNotFoundError, IpamError)
    return run_with_store(args, execute, errors, f"routemesh: endpoint {args.endpoint_cmd}")


def workloads(
    store: Datastore, args: argparse.Namespace, *, host_netns: str | None = None
) -> Workloads:
    node = args.node or socket.gethostname()
    return Workloads(
        node, EndpointDataplane(host_netns=host_netns), ipam=Ipam(store, node), store=store
    )


async def execute(
    store: Datastore, args: argparse.Namespace, *, host_netns: str | None = None
) -> Output:
    """Run one parsed `endpoint` command against ``store`` (tests pass a lab host netns)."""
    wl = workloads(store, args, host_netns=host_netns)
    if args.endpoint_cmd == "add":
        return await _add(wl, args)
    if args.endpoint_cmd == "del":
        return await _del(wl, args)
    return await _list(wl, args)


async def _add(wl: Workloads, args: argparse.Namespace) -> Output:
    try:
        labels = parse_labels(args.labels)
    except ValueError as exc:
        return "", f"routemesh: --labels: {exc}", 2
    mtu = args.mtu or read_mtu_file() or DEFAULT_MTU
    container = cli_container_id(args.namespace, args.name)
    req = WorkloadRequest(
        namespace=args.namespace,
        name=args.name,
        netns=args.netns,
        container_id=container,
        handle=f"{NETWORK}.{container}",
        orchestrator=ORCHESTRATOR,
        ifname=args.ifname,
        labels=labels,
        profiles=tuple(args.profile),
        ips=tuple(args.ip),
        pools=tuple(args.pool),
        ipv6=1 if args.ipv6 else 0,
        mtu=mtu,
    )
    attached = await wl.add(req)
    p = attached.plumbed
    addrs = [f"{a}/{a.max_prefixlen}" for a in p.addresses]
    if args.output == "json":
        body = {
            "namespace": args.namespace,
            "name": args.name,
            "interface": p.host_ifname,
            "workloadInterface": p.ifname,
            "mac": p.mac,
            "addresses": addrs,
            "mtu": p.mtu,
        }
        return json.dumps(body, indent=2), "", 0
    return f"endpoint {args.namespace}/{args.name}: {p.host_ifname} {' '.join(addrs)}", "", 0


async def _del(wl: Workloads, args: argparse.Namespace) -> Output:
    handle = f"{NETWORK}.{cli_container_id(args.namespace, args.name)}"
    released = await wl.delete(
        args.namespace, args.name, handle, orchestrator=ORCHESTRATOR, ifname=args.ifname
    )
    freed = " ".join(str(a) for a in released) or "no addresses"
    return f"endpoint {args.namespace}/{args.name} removed ({freed} released)", "", 0


async def _list(wl: Workloads, args: argparse.Namespace) -> Output:
    records = await wl.recorded()
    plumbed = {ep.host_ifname: ep for ep in await wl.dataplane.list()}
    rows: list[dict[str, Any]] = []
    for wep in records:
        iface = wep.spec.interface_name or ""
        live = plumbed.pop(iface, None)
        rows.append(
            {
                "namespace": wep.namespace,
                "name": wep.spec.pod or wep.name,
                "interface": iface,
                "addresses": list(wep.spec.ip_networks or ()),
                "profiles": list(wep.spec.profiles or ()),
                "orchestrator": wep.spec.orchestrator,
                "state": "up" if live is not None and live.up else "missing",
            }
        )
    for name, ep in sorted(plumbed.items()):
        # A cali link nobody recorded: shown so that an operator sees the leak.
        rows.append(
            {
                "namespace": "",
                "name": "",
                "interface": name,
                "addresses": [f"{a}/{a.max_prefixlen}" for a in ep.addresses],
                "profiles": [],
                "orchestrator": "",
                "state": "unrecorded",
            }
        )
    if args.output == "json":
        return json.dumps(rows, indent=2), "", 0
    headers = ["NAMESPACE", "NAME", "INTERFACE", "ADDRESSES", "PROFILES", "STATE"]
    body = [
        [
            r["namespace"] or "-",
            r["name"] or "-",
            r["interface"],
            ",".join(r["addresses"]) or "-",
            ",".join(r["profiles"]) or "-",
            r["state"],
        ]
        for r in rows
    ]
    return table(headers, body), "", 0
