"""`routemesh apply|create|replace|delete|get|label`: calicoctl's resource verbs, with its
messages and exit codes (0 success, 1 any failure, 2 bad usage), over any datastore URL."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import yaml

from bgpd.datastore.base import DatastoreError
from bgpd.datastore.resources import (
    CLASSES,
    ResourceExistsError,
    ResourceNotFoundError,
    ResourceStore,
    ResourceStoreError,
    kind_segment,
)
from bgpd.datastore.url import open_datastore, resolve_url
from bgpd.model import (
    IPPool,
    Resource,
    ResourceError,
    check_pool_overlap,
    from_dict,
    load_documents,
    to_dict,
)

# Every name calicoctl accepts for a kind (singular, plural, short), by key segment.
_ALIASES: dict[str, tuple[str, ...]] = {
    "BGPConfiguration": ("bgpconfig", "bgpconfigs", "bgpconfigurations"),
    "BGPPeer": ("bgppeers", "bgpp", "bgpps", "bp", "bps"),
    "BGPFilter": ("bgpfilters",),
    "Node": ("nodes", "no", "nos"),
    "IPPool": ("ippools", "ipp", "ipps", "pool", "pools"),
    "IPAMConfiguration": ("ipamconfig", "ipamconfigs", "ipamconfigurations"),
    "IPReservation": ("ipreservations", "ipr", "iprs"),
    "WorkloadEndpoint": ("workloadendpoints", "wep", "weps"),
    "HostEndpoint": ("hostendpoints", "hep", "heps"),
    "NetworkPolicy": ("networkpolicies", "policy", "policies", "pol", "pols"),
    "GlobalNetworkPolicy": ("globalnetworkpolicies", "gnp", "gnps"),
    "Profile": ("profiles", "pro", "pros"),
    "NetworkSet": ("networksets", "netset", "netsets"),
    "GlobalNetworkSet": ("globalnetworksets", "gns"),
    "Tier": ("tiers",),
    "KubernetesNetworkPolicy": ("kubernetesnetworkpolicies", "k8snetworkpolicy", "knp"),
}
KIND_NAMES: dict[str, type[Resource]] = {}
for _segment, _cls in CLASSES.items():
    for _alias in (_segment.lower(), *_ALIASES.get(_segment, ())):
        KIND_NAMES[_alias] = _cls


def lookup_kind(name: str) -> type[Resource] | None:
    return KIND_NAMES.get(name.lower())


# --- arguments ----------------------------------------------------------------------------------


def _datastore_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--datastore",
        metavar="URL",
        help="memory://, sqlite:///path or etcd://host:port[,...][?cacert=&cert=&key=] "
        "(default: $ROUTEMESH_DATASTORE, /etc/routemesh/routemesh.toml, or the local SQLite file)",
    )


def add_file_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--filename", required=True, metavar="FILE", help="YAML/JSON, or -")
    _datastore_arg(p)


def add_create_args(p: argparse.ArgumentParser) -> None:
    add_file_args(p)
    p.add_argument("--skip-exists", action="store_true", help="ignore resources that exist")


def add_delete_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("kind", nargs="?", metavar="KIND")
    p.add_argument("name", nargs="?", metavar="NAME")
    p.add_argument("-f", "--filename", metavar="FILE", help="YAML/JSON, or -")
    p.add_argument("-n", "--namespace", help="namespace of a namespaced resource")
    p.add_argument("--skip-not-exists", action="store_true", help="ignore missing resources")
    _datastore_arg(p)


def add_get_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("kind", metavar="KIND", help="ippool, bgppeer, node, networkpolicy, ...")
    p.add_argument("name", nargs="?", metavar="NAME")
    ns = p.add_mutually_exclusive_group()
    ns.add_argument("-n", "--namespace", help="namespace (default: default)")
    ns.add_argument("-A", "--all-namespaces", action="store_true")
    p.add_argument("-o", "--output", choices=("ps", "wide", "yaml", "json"), default="ps")
    _datastore_arg(p)


def add_label_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("kind", metavar="KIND")
    p.add_argument("name", metavar="NAME")
    p.add_argument("label", metavar="KEY=VALUE|KEY", help="KEY with --remove")
    p.add_argument("-n", "--namespace")
    p.add_argument("--overwrite", action="store_true", help="replace an existing value")
    p.add_argument("--remove", action="store_true", help="remove the label KEY")
    _datastore_arg(p)


# --- plumbing -----------------------------------------------------------------------------------


def _fail(message: str) -> int:
    print(message, file=sys.stderr)
    return 1


def _with_store(args: argparse.Namespace, body: Callable[[ResourceStore], Awaitable[int]]) -> int:
    async def go() -> int:
        datastore = open_datastore(resolve_url(args.datastore))
        try:
            return await body(ResourceStore(datastore))
        finally:
            await datastore.close()

    try:
        return asyncio.run(go())
    except DatastoreError as exc:
        return _fail(f"Failed to execute command: {exc}")


def _load(filename: str) -> list[Resource] | int:
    """The file's resources, or the exit code after printing why they cannot be used."""
    try:
        if filename == "-":
            resources = load_documents(sys.stdin.read(), "<stdin>")
        else:
            resources = load_documents(Path(filename).read_text(), filename)
    except OSError as exc:
        return _fail(f"Failed to execute command: {filename}: {exc.strerror}")
    except ResourceError as exc:
        return _fail(f"Failed to execute command: {exc}")
    if not resources:
        return _fail(f"Failed to execute command: no resources specified in file {filename}")
    return resources


def _kinds_phrase(resources: list[Resource]) -> str:
    kinds = {r.KIND for r in resources}
    return f"'{kinds.pop()}' " if len(kinds) == 1 else ""


async def _check_pools(store: ResourceStore, resources: list[Resource]) -> None:
    """Pools in one file must not overlap each other or stored pools: refuse before any write."""
    pools = [r for r in resources if isinstance(r, IPPool)]
    if not pools:
        return
    stored = {p.name: p for p in await store.list(IPPool) if isinstance(p, IPPool)}
    for i, pool in enumerate(pools):
        # The stored pool of the same name is about to be replaced by this one.
        others = [p for name, p in stored.items() if name != pool.name] + pools[:i]
        check_pool_overlap(pool, others)


# --- apply / create / replace / delete ----------------------------------------------------------

_PAST = {"apply": "applied", "create": "created", "replace": "replaced", "delete": "deleted"}


def _run_writes(args: argparse.Namespace, action: str) -> int:
    loaded = _load(args.filename)
    if isinstance(loaded, int):
        return loaded
    resources = loaded

    async def body(store: ResourceStore) -> int:
        if action != "delete":
            try:
                await _check_pools(store, resources)
            except ResourceError as exc:
                return _fail(f"Failed to execute command: {exc}")
        done = skipped = 0
        for resource in resources:
            try:
                if action == "apply":
                    await store.apply(resource)
                elif action == "create":
                    await store.create(resource)
                elif action == "replace":
                    await store.update(resource)
                else:
                    await store.delete(
                        type(resource),
                        resource.name,
                        resource.namespace,
                        resource_version=resource.metadata.resource_version,
                    )
            except ResourceExistsError:
                if action == "create" and args.skip_exists:
                    skipped += 1
                    continue
                return _partial(action, resources, done, resource)
            except ResourceNotFoundError:
                if action == "delete" and args.skip_not_exists:
                    skipped += 1
                    continue
                return _partial(action, resources, done, resource)
            except (ResourceStoreError, ResourceError):
                return _partial(action, resources, done, resource)
            done += 1
        print(f"Successfully {_PAST[action]} {done} {_kinds_phrase(resources)}resource(s)")
        if skipped:
            print(f"Skipped {skipped} resource(s)")
        return 0

    return _with_store(args, body)


def _partial(action: str, resources: list[Resource], done: int, failed: Resource) -> int:
    exc = sys.exc_info()[1]
    if done == 0:
        return _fail(f"Failed to {action} '{failed.KIND}' resource: [{exc}]")
    return _fail(
        f"Partial success: {_PAST[action]} the first {done} out of {len(resources)} "
        f"{_kinds_phrase(resources)}resources:\nHit error: {exc}"
    )


def run_apply(args: argparse.Namespace) -> int:
    return _run_writes(args, "apply")


def run_create(args: argparse.Namespace) -> int:
    return _run_writes(args, "create")


def run_replace(args: argparse.Namespace) -> int:
    return _run_writes(args, "replace")


def run_delete(args: argparse.Namespace) -> int:
    if args.filename:
        if args.kind:
            return _fail("Failed to execute command: give either -f FILE or KIND NAME, not both")
        return _run_writes(args, "delete")
    if not (args.kind and args.name):
        return _fail("Failed to execute command: delete needs -f FILE or KIND NAME")
    cls = lookup_kind(args.kind)
    if cls is None:
        return _fail(f"Failed to execute command: resource type '{args.kind}' is not supported")

    async def body(store: ResourceStore) -> int:
        try:
            await store.delete(cls, args.name, args.namespace)
        except ResourceNotFoundError as exc:
            if args.skip_not_exists:
                print("Skipped 1 resource(s)")
                return 0
            return _fail(f"Failed to delete '{cls.KIND}' resource: [{exc}]")
        except ResourceStoreError as exc:
            return _fail(f"Failed to delete '{cls.KIND}' resource: [{exc}]")
        print(f"Successfully deleted 1 '{cls.KIND}' resource(s)")
        return 0

    return _with_store(args, body)


# --- get ----------------------------------------------------------------------------------------


def _spec(body: dict[str, Any]) -> dict[str, Any]:
    return body.get("spec") or {}


def _columns(cls: type[Resource], wide: bool) -> list[tuple[str, Callable[[dict], Any]]]:
    """calicoctl's columns per kind; every kind at least has NAME."""
    name: list[tuple[str, Callable[[dict], Any]]] = [("NAME", lambda b: b["metadata"]["name"])]
    s = _spec
    if cls is IPPool:
        if wide:
            return [
                *name,
                ("CIDR", lambda b: s(b).get("cidr")),
                ("NAT", lambda b: s(b).get("natOutgoing", False)),
                ("IPIPMODE", lambda b: s(b).get("ipipMode", "Never")),
                ("VXLANMODE", lambda b: s(b).get("vxlanMode", "Never")),
                ("DISABLED", lambda b: s(b).get("disabled", False)),
                ("DISABLEBGPEXPORT", lambda b: s(b).get("disableBGPExport", False)),
                ("SELECTOR", lambda b: s(b).get("nodeSelector", "all()")),
            ]
        return [
            *name,
            ("CIDR", lambda b: s(b).get("cidr")),
            ("SELECTOR", lambda b: s(b).get("nodeSelector", "all()")),
        ]
    kind = kind_segment(cls)
    if kind == "BGPPeer":
        cols = [
            *name,
            ("PEERIP", lambda b: s(b).get("peerIP") or s(b).get("peerSelector")),
            ("NODE", lambda b: s(b).get("node") or s(b).get("nodeSelector") or "(global)"),
            ("ASN", lambda b: s(b).get("asNumber")),
        ]
        return cols
    if kind == "Node":
        if not wide:
            return name
        bgp = lambda b: s(b).get("bgp") or {}  # noqa: E731
        return [
            *name,
            ("ASN", lambda b: bgp(b).get("asNumber")),
            ("IPV4", lambda b: bgp(b).get("ipv4Address")),
            ("IPV6", lambda b: bgp(b).get("ipv6Address")),
        ]
    if kind == "BGPConfiguration":
        return [
            *name,
            ("LOGSEVERITY", lambda b: s(b).get("logSeverityScreen")),
            ("MESHENABLED", lambda b: s(b).get("nodeToNodeMeshEnabled")),
            ("ASNUMBER", lambda b: s(b).get("asNumber")),
        ]
    if kind == "WorkloadEndpoint":
        return [
            ("WORKLOAD", lambda b: s(b).get("workload") or s(b).get("pod")),
            ("NODE", lambda b: s(b).get("node")),
            ("NETWORKS", lambda b: ",".join(s(b).get("ipNetworks") or [])),
            ("INTERFACE", lambda b: s(b).get("interfaceName")),
            *(name if wide else []),
        ]
    if kind == "HostEndpoint":
        return [
            *name,
            ("NODE", lambda b: s(b).get("node")),
            *([("INTERFACE", lambda b: s(b).get("interfaceName"))] if wide else []),
        ]
    if kind == "IPReservation":
        return [*name, ("CIDRS", lambda b: ",".join(s(b).get("reservedCIDRs") or []))]
    if kind in ("NetworkPolicy", "GlobalNetworkPolicy") and wide:
        return [
            *name,
            ("ORDER", lambda b: s(b).get("order")),
            ("SELECTOR", lambda b: s(b).get("selector")),
        ]
    return name


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def format_table(cls: type[Resource], resources: list[Resource], wide: bool, all_ns: bool) -> str:
    """Left-aligned columns separated by three spaces, like calicoctl's tabwriter output."""
    cols = _columns(cls, wide)
    if cls.NAMESPACED and all_ns:
        cols = [("NAMESPACE", lambda b: b["metadata"].get("namespace")), *cols]
    headers = [h for h, _ in cols]
    rows = [[_cell(get(to_dict(r))) for _, get in cols] for r in resources]
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]
    lines = [
        "   ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in [headers, *rows]
    ]
    return "\n".join(lines)


def _as_list(cls: type[Resource], resources: list[Resource], revision: int) -> dict[str, Any]:
    return {
        "apiVersion": cls.API_VERSION,
        "kind": f"{cls.KIND}List",
        "metadata": {"resourceVersion": str(revision)},
        "items": [to_dict(r) for r in resources],
    }


def _dump(body: dict[str, Any], output: str) -> str:
    if output == "json":
        return json.dumps(body, indent=2, default=str)
    return yaml.safe_dump(body, sort_keys=False, default_flow_style=False).rstrip("\n")


def run_get(args: argparse.Namespace) -> int:
    cls = lookup_kind(args.kind)
    if cls is None:
        return _fail(f"Failed to get resources: resource type '{args.kind}' is not supported")
    namespace = None
    if cls.NAMESPACED and not args.all_namespaces:
        namespace = args.namespace or "default"

    async def body(store: ResourceStore) -> int:
        if args.name:
            try:
                found = [await store.get(cls, args.name, namespace)]
            except ResourceNotFoundError as exc:
                return _fail(f"Failed to get resources: {exc}")
            revision = int(found[0].metadata.resource_version or 0)
        else:
            found, revision = await store.list_with_revision(cls, namespace)
        if args.output in ("yaml", "json"):
            shape = to_dict(found[0]) if args.name else _as_list(cls, found, revision)
            print(_dump(shape, args.output))
        else:
            print(format_table(cls, found, args.output == "wide", args.all_namespaces))
        return 0

    return _with_store(args, body)


# --- label --------------------------------------------------------------------------------------


def run_label(args: argparse.Namespace) -> int:
    cls = lookup_kind(args.kind)
    if cls is None:
        return _fail(f"Failed to execute command: resource type '{args.kind}' is not supported")
    if args.remove:
        if "=" in args.label:
            return _fail("Failed to execute command: --remove takes a label KEY, not KEY=VALUE")
        key, value = args.label, None
    else:
        key, eq, value = args.label.partition("=")
        if not eq or not key:
            return _fail(f"Failed to execute command: label {args.label!r} is not KEY=VALUE")
    what = f"{args.kind} {args.name}"

    async def body(store: ResourceStore) -> int:
        # Read-modify-write with the resourceVersion: a concurrent change makes us read again
        # rather than overwrite it.
        for _ in range(5):
            try:
                current = await store.get(cls, args.name, args.namespace)
            except ResourceNotFoundError as exc:
                return _fail(f"Failed to get resources: {exc}")
            data = to_dict(current)
            labels = dict(data["metadata"].get("labels") or {})
            if args.remove:
                if key not in labels:
                    return _fail(f"Failed to remove label: label {key} is not set on {what}")
                del labels[key]
            else:
                if key in labels and labels[key] != value and not args.overwrite:
                    return _fail(
                        f"Failed to set label: label {key} is already set on {what} "
                        f"(value {labels[key]}); use --overwrite to overwrite it"
                    )
                labels[key] = value
            data["metadata"]["labels"] = labels
            try:
                await store.update(from_dict(data, source="label"))
            except ResourceError as exc:
                return _fail(f"Failed to execute command: {exc}")
            except ResourceStoreError:
                continue
            verb = f"removed label {key} from" if args.remove else f"set label {key} on"
            print(f"Successfully {verb} {what}")
            return 0
        return _fail(f"Failed to execute command: {what} kept changing; try again")

    return _with_store(args, body)
