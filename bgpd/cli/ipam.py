"""`routemesh ipam show|check|release|configure`: calicoctl's IPAM verbs over the datastore."""

from __future__ import annotations

import argparse
import ipaddress
import json
from collections.abc import Awaitable, Callable

from bgpd.cli.bgp import table
from bgpd.cli.storecmd import Output, run_with_store
from bgpd.datastore.base import Datastore
from ipam import Ipam, IpamError, NotAllocatedError
from ipam.check import Snapshot, check_snapshot, lookup, parse_address
from ipam.pools import write_config

# What each command prints, separated from how the store is opened so tests can drive them.


def add_args(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="ipam_cmd", metavar="COMMAND")
    sub.required = True
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--datastore",
        metavar="URL",
        help="etcd://host:port, sqlite:///path (default: $ROUTEMESH_DATASTORE, then "
        "/etc/routemesh/routemesh.toml)",
    )
    show = sub.add_parser("show", parents=[common], help="IP usage per pool (and block)")
    show.add_argument("--show-blocks", action="store_true", help="list every block too")
    show.add_argument("--ip", metavar="ADDR", help="show who holds one address")
    show.add_argument("-o", "--output", choices=("table", "json"), default="table")
    check = sub.add_parser(
        "check", parents=[common], help="find leaks, orphans and double allocations"
    )
    check.add_argument("-o", "--output", choices=("table", "json"), default="table")
    release = sub.add_parser("release", parents=[common], help="release one address")
    release.add_argument("--ip", metavar="ADDR", required=True)
    configure = sub.add_parser("configure", parents=[common], help="change IPAM configuration")
    configure.add_argument(
        "--strictaffinity", choices=("true", "false"), help="forbid borrowing from other hosts"
    )
    configure.add_argument("--max-blocks-per-host", type=int, metavar="N", help="0: no limit")


def run(args: argparse.Namespace) -> int:
    return run_with_store(args, execute, (IpamError,))


async def execute(store: Datastore, args: argparse.Namespace) -> Output:
    """Run one parsed `ipam` command against ``store``."""
    commands: dict[str, Callable[[Datastore, argparse.Namespace], Awaitable[Output]]] = {
        "show": _show,
        "check": _check,
        "release": _release,
        "configure": _configure,
    }
    return await commands[args.ipam_cmd](store, args)


def _percent(part: int, whole: int) -> str:
    return f"{part} ({round(100 * part / whole) if whole else 0}%)"


async def _show(store: Datastore, args: argparse.Namespace) -> Output:
    snap = await Snapshot.read(store)
    if args.ip:
        return _show_ip(snap, args.ip, args.output)
    rows: list[dict[str, object]] = []
    for pool in sorted(snap.pools, key=lambda p: (p.version, int(p.network.network_address))):
        blocks = sorted(
            (b for b in snap.blocks if pool.holds_block(b.cidr)),
            key=lambda b: int(b.cidr.network_address),
        )
        used = sum(b.in_use() for b in blocks)
        rows.append(
            {"grouping": "IP Pool", "cidr": str(pool.network), "name": pool.name,
             "total": pool.network.num_addresses, "inUse": used}
        )  # fmt: skip
        if args.show_blocks:
            for b in blocks:
                rows.append(
                    {"grouping": "Block", "cidr": str(b.cidr), "node": b.host,
                     "total": b.cidr.num_addresses, "inUse": b.in_use()}
                )  # fmt: skip
    if args.output == "json":
        return json.dumps(rows, indent=2), "", 0
    body = []
    for r in rows:
        total, used = int(r["total"]), int(r["inUse"])  # type: ignore[call-overload]
        body.append(
            [str(r["grouping"]), str(r["cidr"]), str(total), _percent(used, total),
             _percent(total - used, total)]
        )  # fmt: skip
    headers = ["GROUPING", "CIDR", "IPS TOTAL", "IPS IN USE", "IPS FREE"]
    return table(headers, body), "", 0


def _show_ip(snap: Snapshot, text: str, output: str) -> Output:
    address = parse_address(text)
    block, attr = lookup(snap, address)
    if output == "json":
        doc = {
            "ip": str(address),
            "inUse": attr is not None,
            "block": str(block.cidr) if block is not None else None,
            "node": block.host if block is not None else None,
            "handle": attr.handle if attr is not None else None,
            "attributes": dict(attr.attrs) if attr is not None else {},
        }
        return json.dumps(doc, indent=2), "", 0
    if attr is None:
        where = "" if snap_pool(snap, address) else " (and it is in no IP pool)"
        return f"IP {address} is not currently assigned{where}", "", 0
    assert block is not None
    lines = [f"IP {address} is in use", f"Handle: {attr.handle}", f"Block: {block.cidr}"]
    lines.append(f"Block affinity: {'host:' + block.host if block.host else 'none (borrowed)'}")
    if attr.attrs:
        lines.append("Attributes:")
        lines += [f"  {k}: {v}" for k, v in sorted(attr.attrs.items())]
    return "\n".join(lines), "", 0


def snap_pool(snap: Snapshot, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    return any(address in p.network for p in snap.pools)


async def _check(store: Datastore, args: argparse.Namespace) -> Output:
    report = check_snapshot(await Snapshot.read(store))
    code = 1 if report.problems else 0
    if args.output == "json":
        return json.dumps(report.to_json(), indent=2), "", code
    lines = ["Checking IPAM for inconsistencies...", "", "Loading all IPAM blocks..."]
    lines.append(f"Found {report.blocks} IPAM blocks.")
    lines.append(f"Found {report.allocated} allocated IPs ({report.unique} unique).")
    sections = (
        ("double allocations", report.double_allocations),
        ("leaked IPs (allocated, but no workload endpoint uses them)", report.leaks),
        ("orphans (state of nodes that do not exist, or unreachable by handle)", report.orphans),
        ("in-use IPs outside every IP pool", report.outside_pools),
        ("inconsistent blocks", report.inconsistencies),
    )
    for title, items in sections:
        lines.append(f"Found {len(items)} {title}.")
        lines += [f"  {item}" for item in items]
    lines += ["", f"Check complete; found {report.problems} problems."]
    return "\n".join(lines), "", code


async def _release(store: Datastore, args: argparse.Namespace) -> Output:
    address = parse_address(args.ip)
    try:
        await Ipam(store, "routemesh-cli").release_ip(str(address))
    except NotAllocatedError:
        return "", f"IP address {address} is not assigned", 1
    return f"Successfully released IP address {address}", "", 0


async def _configure(store: Datastore, args: argparse.Namespace) -> Output:
    if args.strictaffinity is None and args.max_blocks_per_host is None:
        return (
            "",
            "routemesh: ipam configure: give --strictaffinity and/or --max-blocks-per-host",
            2,
        )
    if args.max_blocks_per_host is not None and args.max_blocks_per_host < 0:
        return "", "routemesh: ipam configure: --max-blocks-per-host must be 0 or more", 2
    strict = None if args.strictaffinity is None else args.strictaffinity == "true"
    spec = await write_config(
        store, strict_affinity=strict, max_blocks_per_host=args.max_blocks_per_host
    )
    lines = []
    if strict is not None:
        lines.append(f"Successfully set StrictAffinity to: {str(spec.strict_affinity).lower()}")
    if args.max_blocks_per_host is not None:
        lines.append(f"Successfully set MaxBlocksPerHost to: {spec.max_blocks_per_host}")
    return "\n".join(lines), "", 0
