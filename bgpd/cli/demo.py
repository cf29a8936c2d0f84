"""`routemesh demo`: a four-host cluster with tenants and policy, built in namespaces, shown.

It prints each node's BGP session table, each host's routes and a ping matrix between the
tenants' pods, and exits non-zero if the matrix is not what the policy says. The scenario is
in `bgpd/demo/`; this module parses the flags and does all the printing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import sys
from pathlib import Path

from bgpd.cli.node import format_node_status
from bgpd.datastore.base import DatastoreError
from bgpd.demo.cluster import (
    ETCD_RELAY,
    HOSTS,
    PODS,
    ROUTER,
    DemoCluster,
    Outcome,
    expected_allowed,
    tool,
)
from bgpd.demo.lab import (
    STATE_DIR,
    DemoError,
    DemoLab,
    demo_namespaces,
    down,
    running_owner,
)

NEEDED = ("ip", "ping", "ss", "sysctl", "iptables-nft-restore", "ipset")
STORE_PREFIX = "/routemesh/"


def add_args(p: argparse.ArgumentParser) -> None:
    what = p.add_mutually_exclusive_group()
    what.add_argument("--keep", action="store_true", help="leave the cluster running to explore")
    what.add_argument("--down", action="store_true", help="remove a demo left by --keep")
    p.add_argument(
        "--datastore",
        metavar="etcd://HOST:PORT",
        help="run on this (empty) etcd instead of the embedded SQLite store; the demo relays "
        "it into its namespaces and removes its keys at --down",
    )


def _step(text: str) -> None:
    print(f"==> {text}", flush=True)


def _progress(text: str) -> None:
    print(f"    {text}", flush=True)


# -- the etcd a user names -------------------------------------------------------------------


async def _store_keys(url: str) -> list[str]:
    from bgpd.datastore.url import open_datastore

    store = open_datastore(url)
    try:
        items, _rev = await store.list(STORE_PREFIX)
        return [kv.key for kv in items]
    finally:
        await store.close()


async def _clear_store_async(url: str) -> None:
    from bgpd.datastore.url import open_datastore

    store = open_datastore(url)
    try:
        items, _rev = await store.list(STORE_PREFIX)
        for kv in items:
            await store.delete(kv.key)
    finally:
        await store.close()


def _clear_store(url: str) -> None:
    try:
        asyncio.run(_clear_store_async(url))
    except DatastoreError as err:
        # The record stays, so the next --down tries again.
        raise DemoError(
            f"the namespaces are gone, but the demo's keys in {url} are not ({err}); "
            f"run `routemesh demo --down` again once it answers (or delete {STATE_DIR} if that "
            "etcd is gone for good)"
        ) from err


def _etcd_target(url: str) -> str:
    """The one host:port the relay carries; DemoError for what the demo cannot relay."""
    from bgpd.datastore.url import DatastoreURLError, parse_url

    try:
        spec = parse_url(url)
    except DatastoreURLError as err:
        raise DemoError(str(err)) from err
    if spec.scheme != "etcd" or spec.tls:
        raise DemoError(
            f"{url.split('?')[0]}: the demo runs on etcd:// (plain) only. Its relay would "
            "present a TLS etcd under the router's address, which the server certificate "
            "does not name; docs/deploying.md sets up nodes on etcd with TLS"
        )
    if len(spec.endpoints) != 1:
        raise DemoError(f"{url}: give the demo one etcd endpoint")
    return spec.endpoints[0]


# -- the run ---------------------------------------------------------------------------------


def _preflight() -> None:
    if os.geteuid() != 0:
        raise DemoError("the demo creates network namespaces: run it as root")
    missing = [b for b in NEEDED if shutil.which(b) is None]
    if missing:
        raise DemoError(f"missing {', '.join(missing)}: run `make setup` first")
    tool("routemesh")
    tool("routemesh-cni")


def _tear_down(lab: DemoLab | None = None) -> None:
    problems = down(procs=lab.procs if lab else None, clear_store=_clear_store, progress=_progress)
    for problem in problems:
        _progress(problem)


def _cli() -> str:
    """How to type our command here: `routemesh` if the shell finds this one, else its path."""
    ours = Path(tool("routemesh")[0])
    found = shutil.which("routemesh")
    if found and Path(found).resolve() == ours.resolve():
        return "routemesh"
    # Run from the checkout (`make demo`): the README's `.venv/bin/routemesh`.
    with contextlib.suppress(ValueError):
        return str(ours.relative_to(Path.cwd()))
    return str(ours)


def run(args: argparse.Namespace) -> int:
    try:
        if args.down:
            _step("removing the demo")
            _tear_down()
            print("demo removed: no rmdemo-* namespace, process or state is left")
            return 0
        _preflight()
        return _run(args)
    except DemoError as err:
        print(f"routemesh demo: {err}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace) -> int:
    other = running_owner()
    if other is not None:
        # Its namespaces have the same names as ours: one would tear down the other.
        raise DemoError(
            f"another routemesh demo (pid {other}) is running; wait for it to finish, "
            "or remove it with `routemesh demo --down`"
        )
    if STATE_DIR.exists() or demo_namespaces():
        _step("removing the previous demo")
        _tear_down()
    store_url = node_url = f"sqlite://{STATE_DIR}/store.db"
    target = None
    if args.datastore:
        target = _etcd_target(args.datastore)
        _step(f"checking that {args.datastore} answers and holds no routemesh data")
        try:
            keys = asyncio.run(_store_keys(args.datastore))
        except DatastoreError as err:
            raise DemoError(f"cannot use {args.datastore}: {err}") from err
        if keys:
            raise DemoError(
                f"{args.datastore} already holds {len(keys)} routemesh keys (e.g. {keys[0]}); "
                "the demo needs an etcd of its own, since --down deletes what it wrote"
            )
        store_url, node_url = args.datastore, f"etcd://{ETCD_RELAY[0]}:{ETCD_RELAY[1]}"
    lab = DemoLab(STATE_DIR)
    lab.record.store_url = store_url
    lab.record.clear_store = target is not None
    lab.save()
    cluster = DemoCluster(
        lab, store_url=store_url, node_store_url=node_url, step=_step, progress=_progress
    )
    removed = False
    try:
        outcome = _scenario(cluster, args.datastore, target, args.keep)
        if outcome is None:
            return 1
        _show(cluster, outcome)
        wrong = outcome.mismatches()
        if wrong:
            print("\nThe ping matrix does NOT match the tenant-isolation policy:")
            for line in wrong:
                print(f"  {line}")
        else:
            print(
                "\nThe ping matrix matches the tenant-isolation policy: "
                "ami <-> ami allowed, bmi <-> bmi allowed, ami <-> bmi denied."
            )
        if args.keep:
            _explore(cluster, outcome, store_url)
        else:
            _step("removing the demo (keep it running next time with --keep)")
            _tear_down(lab)
            removed = True
        return 1 if wrong else 0
    finally:
        # Ctrl-C, a closed stdout (`| head`) or a bug: without --keep nothing may stay behind,
        # and the terminal may be gone, so remove it silently.
        if not args.keep and not removed:
            down(procs=lab.procs, clear_store=_clear_store)


def _scenario(
    cluster: DemoCluster, url: str | None, target: str | None, keep: bool
) -> Outcome | None:
    try:
        _step(
            "building 4 hosts and a router in network namespaces "
            "(host1-3 on 198.18.0.0/24, host4 behind the router on 198.18.1.0/24)"
        )
        cluster.build()
        if target is not None:
            _step(f"relaying {url} to {ETCD_RELAY[0]}:{ETCD_RELAY[1]} in {ROUTER}")
            cluster.start_relay(target)
        _step(f"applying the cluster and tenant manifests to {cluster.store_url}")
        cluster.apply()
        return cluster.run()
    except DemoError as err:
        print(f"routemesh demo: {err}", file=sys.stderr)
        print(f"routemesh demo: node logs are in {STATE_DIR / 'logs'}", file=sys.stderr)
        if keep:
            print(
                "routemesh demo: the cluster stays as it is for a look (--keep); "
                "remove it with `routemesh demo --down`",
                file=sys.stderr,
            )
        return None


# -- what it prints --------------------------------------------------------------------------


def _show(cluster: DemoCluster, outcome: Outcome) -> None:
    cli = _cli()
    for host in HOSTS:
        print(f"\n$ {cli} node status --node {host.name} --run-dir {cluster.run_dir}")
        status = outcome.status.get(host.name)
        print(format_node_status(status) if status else "(no answer)")
    print("\nHost routes written by routemesh (proto 80: BGP blocks, blackholes and VXLAN")
    print("routes; proto 81: the host's own pods):")
    for host in HOSTS:
        print(f"\n$ ip -n {host.ns} route | grep -E 'proto 8[01]'     # {host.address}")
        for line in outcome.routes.get(host.name, []):
            print(f"  {line}")
    print("\n" + format_matrix(outcome))


def format_matrix(outcome: Outcome) -> str:
    """Rows ping columns; each cell says what happened and marks a surprise with '!'."""
    width = max(len(p.label) for p in PODS) + 2
    head = " " * (width + 8) + "".join(p.label.ljust(width) for p in PODS)
    lines = ["Ping matrix (each row pings each column):", head.rstrip()]
    for src in PODS:
        cells = []
        for dst in PODS:
            if src is dst:
                cells.append("-".ljust(width))
                continue
            reached = outcome.matrix.get((src.label, dst.label))
            word = "allowed" if reached else "denied"
            if reached != expected_allowed(src, dst):
                word += "!"
            cells.append(word.ljust(width))
        row = f"{src.label.ljust(width)}{src.host.ljust(8)}" + "".join(cells)
        lines.append(row.rstrip())
    lines.append("pods: " + ", ".join(f"{p.label}={outcome.ips.get(p.label)}" for p in PODS))
    return "\n".join(lines)


def _explore(cluster: DemoCluster, outcome: Outcome, store_url: str) -> None:
    cli = _cli()
    src, dst = PODS[0], PODS[-1]
    src_ip, dst_ip = outcome.ips.get(src.label), outcome.ips.get(dst.label)
    print(
        "\nThe cluster is still running. Explore it:\n"
        f"  {cli} node status --node host1 --run-dir {cluster.run_dir}\n"
        f"  {cli} get workloadendpoints -A -o wide --datastore {store_url}\n"
        f"  {cli} get globalnetworkpolicy --datastore {store_url}\n"
        f"  {cli} policy explain {dst_ip} --from {src_ip} --proto icmp --datastore {store_url}\n"
        f"  ip netns exec {HOSTS[3].ns} ip route\n"
        f"  ip netns exec {HOSTS[0].ns} iptables-save | grep -c cali\n"
        f"  ip netns exec {src.ns} ping -c 2 {dst_ip}"
        f"    # {src.label} -> {dst.label}: denied\n"
        f"  ls {STATE_DIR / 'logs'}\n"
        f"Remove it with:\n  {cli} demo --down"
    )
