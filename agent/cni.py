"""The `routemesh-cni` plugin (CNI spec 1.0): ADD, DEL, CHECK and VERSION over env + stdin,
results and errors as the spec's JSON. The work itself is `agent.endpoints.Workloads`.

Network config (inside a conflist)::

    {"type": "routemesh-cni", "datastore": "sqlite:///var/lib/routemesh/store.db",
     "nodename": "node1", "mtu": 1440, "ipam": {"type": "routemesh-cni"}}

Fixed addresses and pools come from ``cni.projectcalico.org/ipAddrs`` / ``ipv4pools`` (or
``ipv6pools``) given as CNI_ARGS keys, in ``args.annotations``/``args.cni``, or ``IP=`` in
CNI_ARGS and the ``ips`` capability in runtimeConfig, as Calico accepts them.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import socket
import sys
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.endpoint import (
    DEFAULT_ROUTE_PROTOCOL,
    HOST_MAC,
    EndpointDataplane,
    EndpointError,
    veth_name,
    workload_id,
)
from agent.endpoints import WorkloadError, WorkloadRequest, Workloads
from agent.mtu import DEFAULT_MTU, MTU_FILE, read_mtu_file
from agent.netlink import NetnsNotFoundError, netns_exists
from bgpd.datastore.base import Datastore, DatastoreError, UnavailableError
from bgpd.datastore.url import DatastoreURLError, open_datastore
from ipam import Ipam, IpamError

PLUGIN_TYPE = "routemesh-cni"
SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0")
ANNOTATION_IPADDRS = "cni.projectcalico.org/ipAddrs"
ANNOTATION_IPV4POOLS = "cni.projectcalico.org/ipv4pools"
ANNOTATION_IPV6POOLS = "cni.projectcalico.org/ipv6pools"

# The spec's well-known error codes; 100+ are ours.
INCOMPATIBLE_VERSION = 1
UNSUPPORTED_FIELD = 2
UNKNOWN_CONTAINER = 3
INVALID_ENV = 4
IO_FAILURE = 5
DECODE_FAILURE = 6
INVALID_CONFIG = 7
TRY_AGAIN_LATER = 11
CHECK_FAILED = 100
IPAM_FAILED = 101
PLUMBING_FAILED = 102
UNEXPECTED = 199


class CniError(Exception):
    """A failure reported to the runtime as the spec's error JSON."""

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.details = details

    def to_json(self, version: str) -> dict[str, Any]:
        out: dict[str, Any] = {"cniVersion": version, "code": self.code, "msg": self.msg}
        if self.details:
            out["details"] = self.details
        return out


@dataclass(frozen=True)
class Invocation:
    """The runtime's environment variables, validated."""

    command: str
    container_id: str
    netns: str
    ifname: str
    args: dict[str, str]
    path: str


@dataclass(frozen=True)
class NetConf:
    """Our part of the network config, validated."""

    raw: dict[str, Any]
    version: str
    name: str
    datastore: str | None
    nodename: str
    mtu: int
    route_protocol: int
    assign_ipv4: bool
    assign_ipv6: bool
    ipv4_pools: tuple[str, ...]
    ipv6_pools: tuple[str, ...]


# --- parsing ---------------------------------------------------------------------------------


def parse_cni_args(text: str) -> dict[str, str]:
    """CNI_ARGS: 'K=V;K2=V2'. A pair without '=' is a decode error naming it."""
    out: dict[str, str] = {}
    for part in filter(None, text.split(";")):
        key, eq, value = part.partition("=")
        if not eq or not key:
            raise CniError(INVALID_ENV, f"CNI_ARGS: {part!r} is not KEY=VALUE")
        out[key] = value
    return out


def parse_env(env: Mapping[str, str]) -> Invocation:
    command = env.get("CNI_COMMAND", "")
    if not command:
        raise CniError(INVALID_ENV, "CNI_COMMAND is not set")
    if command not in ("ADD", "DEL", "CHECK", "VERSION"):
        raise CniError(INVALID_ENV, f"CNI_COMMAND {command!r} is not ADD, DEL, CHECK or VERSION")
    needed = {"ADD": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"),
              "CHECK": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"),
              "DEL": ("CNI_CONTAINERID", "CNI_IFNAME"),
              "VERSION": ()}[command]  # fmt: skip
    for var in needed:
        if not env.get(var):
            raise CniError(INVALID_ENV, f"{var} is not set (required for {command})")
    ifname = env.get("CNI_IFNAME", "")
    if ifname and (len(ifname) > 15 or "/" in ifname or ":" in ifname or ifname.strip() != ifname):
        raise CniError(INVALID_ENV, f"CNI_IFNAME {ifname!r} is not a valid interface name")
    return Invocation(
        command=command,
        container_id=env.get("CNI_CONTAINERID", ""),
        netns=env.get("CNI_NETNS", ""),
        ifname=ifname,
        args=parse_cni_args(env.get("CNI_ARGS", "")),
        path=env.get("CNI_PATH", ""),
    )


def _bool_option(conf: Mapping[str, Any], key: str, default: bool) -> bool:
    # Calico writes these as the strings "true"/"false"; accept real booleans too.
    value = conf.get(key, default)
    if isinstance(value, bool):
        return value
    if value in ("true", "false"):
        return value == "true"
    raise CniError(INVALID_CONFIG, f"ipam.{key}: must be true or false, not {value!r}")


def _str_list(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise CniError(INVALID_CONFIG, f"{where}: must be a list of strings")
    return tuple(value)


def parse_config(data: bytes) -> NetConf:
    try:
        raw = json.loads(data.decode() if data else "")
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CniError(DECODE_FAILURE, "network config on stdin is not JSON", str(exc)) from exc
    if not isinstance(raw, dict):
        raise CniError(DECODE_FAILURE, "network config on stdin is not a JSON object")
    version = raw.get("cniVersion")
    if not isinstance(version, str):
        raise CniError(INVALID_CONFIG, "cniVersion: missing or not a string")
    if version not in SUPPORTED_VERSIONS:
        raise CniError(
            INCOMPATIBLE_VERSION,
            f"cniVersion {version!r} is not supported",
            f"supported: {', '.join(SUPPORTED_VERSIONS)}",
        )
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise CniError(INVALID_CONFIG, "name: missing or empty")
    if raw.get("type") != PLUGIN_TYPE:
        raise CniError(INVALID_CONFIG, f"type: must be {PLUGIN_TYPE!r}, not {raw.get('type')!r}")
    datastore = raw.get("datastore")
    if datastore is not None and (not isinstance(datastore, str) or not datastore):
        raise CniError(INVALID_CONFIG, "datastore: must be a non-empty URL string")
    nodename = raw.get("nodename") or socket.gethostname()
    if not isinstance(nodename, str):
        raise CniError(INVALID_CONFIG, "nodename: must be a string")
    mtu = raw.get("mtu", 0)
    if isinstance(mtu, bool) or not isinstance(mtu, int) or not (mtu == 0 or 68 <= mtu <= 65535):
        raise CniError(INVALID_CONFIG, f"mtu: must be 0 (auto) or 68..65535, not {mtu!r}")
    if mtu == 0:
        mtu_file = raw.get("mtu_file", str(MTU_FILE))
        mtu = read_mtu_file(Path(mtu_file)) or DEFAULT_MTU
    proto = raw.get("route_protocol", DEFAULT_ROUTE_PROTOCOL)
    if isinstance(proto, bool) or not isinstance(proto, int) or not 0 < proto < 256:
        raise CniError(INVALID_CONFIG, f"route_protocol: must be 1..255, not {proto!r}")
    ipam = raw.get("ipam", {"type": PLUGIN_TYPE})
    if not isinstance(ipam, dict):
        raise CniError(INVALID_CONFIG, "ipam: must be an object")
    if ipam.get("type") != PLUGIN_TYPE:
        raise CniError(
            UNSUPPORTED_FIELD,
            f"ipam.type {ipam.get('type')!r} is not supported",
            f"only {PLUGIN_TYPE!r} (our own IPAM) is",
        )
    return NetConf(
        raw=raw,
        version=version,
        name=name,
        datastore=datastore,
        nodename=nodename,
        mtu=mtu,
        route_protocol=proto,
        assign_ipv4=_bool_option(ipam, "assign_ipv4", True),
        assign_ipv6=_bool_option(ipam, "assign_ipv6", False),
        ipv4_pools=_str_list(ipam.get("ipv4_pools", []), "ipam.ipv4_pools"),
        ipv6_pools=_str_list(ipam.get("ipv6_pools", []), "ipam.ipv6_pools"),
    )


def _json_list(value: Any, where: str) -> list[str]:
    if isinstance(value, list):
        items = value
    elif isinstance(value, str):
        try:
            items = json.loads(value)
        except json.JSONDecodeError:
            raise CniError(INVALID_CONFIG, f"{where}: not a JSON list: {value!r}") from None
    else:
        raise CniError(INVALID_CONFIG, f"{where}: must be a JSON list of strings")
    if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
        raise CniError(INVALID_CONFIG, f"{where}: must be a JSON list of strings")
    return items


def annotations(inv: Invocation, conf: NetConf) -> dict[str, Any]:
    """The Calico annotations this request carries, from every place a runtime may put them.

    Later sources win: CNI_ARGS, then ``args.annotations`` / ``args`` in the config, then
    the ``ips`` capability."""
    found: dict[str, Any] = {}
    for key in (ANNOTATION_IPADDRS, ANNOTATION_IPV4POOLS, ANNOTATION_IPV6POOLS):
        if key in inv.args:
            found[key] = _json_list(inv.args[key], f"CNI_ARGS {key}")
    if inv.args.get("IP"):
        found[ANNOTATION_IPADDRS] = inv.args["IP"].split(",")
    args = conf.raw.get("args") or {}
    if not isinstance(args, dict):
        raise CniError(INVALID_CONFIG, "args: must be an object")
    for source in (args, args.get("annotations") or {}, args.get("cni") or {}):
        if not isinstance(source, dict):
            raise CniError(INVALID_CONFIG, "args.annotations / args.cni: must be objects")
        for key in (ANNOTATION_IPADDRS, ANNOTATION_IPV4POOLS, ANNOTATION_IPV6POOLS):
            if key in source:
                found[key] = _json_list(source[key], f"args {key}")
    cni_ips = (args.get("cni") or {}).get("ips")
    if cni_ips is not None:
        found[ANNOTATION_IPADDRS] = _json_list(cni_ips, "args.cni.ips")
    runtime = conf.raw.get("runtimeConfig") or {}
    if isinstance(runtime, dict) and runtime.get("ips"):
        found[ANNOTATION_IPADDRS] = _json_list(runtime["ips"], "runtimeConfig.ips")
    return found


def _labels(conf: NetConf) -> dict[str, str]:
    # The CNI convention: args.cni.labels = [{"key": k, "value": v}, ...].
    labels = ((conf.raw.get("args") or {}).get("cni") or {}).get("labels") or []
    out: dict[str, str] = {}
    if not isinstance(labels, list):
        raise CniError(INVALID_CONFIG, "args.cni.labels: must be a list of {key, value}")
    for i, item in enumerate(labels):
        if not isinstance(item, dict) or not isinstance(item.get("key"), str):
            raise CniError(INVALID_CONFIG, f"args.cni.labels[{i}]: needs a string 'key'")
        out[item["key"]] = str(item.get("value", ""))
    return out


def identity(inv: Invocation) -> tuple[str, str, str]:
    """(namespace, name, orchestrator) of the workload: the pod when Kubernetes says which,
    else the container id under the "cni" orchestrator (as Calico does without k8s)."""
    pod, ns = inv.args.get("K8S_POD_NAME"), inv.args.get("K8S_POD_NAMESPACE")
    if pod and ns:
        return ns, pod, "k8s"
    return "default", inv.container_id, "cni"


def request(inv: Invocation, conf: NetConf) -> WorkloadRequest:
    notes = annotations(inv, conf)
    namespace, name, orchestrator = identity(inv)
    return WorkloadRequest(
        namespace=namespace,
        name=name,
        netns=inv.netns,
        container_id=inv.container_id,
        # Calico's handle: "<network name>.<container id>".
        handle=f"{conf.name}.{inv.container_id}",
        orchestrator=orchestrator,
        ifname=inv.ifname,
        labels=_labels(conf),
        ips=tuple(notes.get(ANNOTATION_IPADDRS, ())),
        pools=tuple(notes.get(ANNOTATION_IPV4POOLS, conf.ipv4_pools))
        + tuple(notes.get(ANNOTATION_IPV6POOLS, conf.ipv6_pools)),
        ipv4=1 if conf.assign_ipv4 else 0,
        ipv6=1 if conf.assign_ipv6 else 0,
        mtu=conf.mtu,
    )


# --- results -----------------------------------------------------------------------------------


def result_json(conf: NetConf, plumbed: Any) -> dict[str, Any]:
    """The ADD result in the config's cniVersion (0.3.x/0.4.0 add 'version' to each IP)."""
    ips = []
    for addr in plumbed.addresses:
        entry: dict[str, Any] = {"address": f"{addr}/{addr.max_prefixlen}", "interface": 1}
        if conf.version != "1.0.0":
            entry["version"] = str(addr.version)
        ips.append(entry)
    routes = [{"dst": "0.0.0.0/0"}] if any(a.version == 4 for a in plumbed.addresses) else []
    if any(a.version == 6 for a in plumbed.addresses):
        routes.append({"dst": "::/0"})
    return {
        "cniVersion": conf.version,
        "interfaces": [
            {"name": plumbed.host_ifname, "mac": HOST_MAC},
            {"name": plumbed.ifname, "mac": plumbed.mac, "sandbox": plumbed.netns},
        ],
        "ips": ips,
        "routes": routes,
        "dns": {},
    }


def version_json(version: str = "1.0.0") -> dict[str, Any]:
    return {"cniVersion": version, "supportedVersions": list(SUPPORTED_VERSIONS)}


# --- the datastore and IPAM ------------------------------------------------------------------


def open_store(url: str) -> Datastore:
    """The datastore the config names; a malformed URL is a config error naming the field."""
    try:
        return open_datastore(url)
    except DatastoreURLError as exc:
        raise CniError(INVALID_CONFIG, "datastore: bad URL", str(exc)) from exc


def _ipam(store: Datastore | None, node: str) -> Ipam | None:
    return Ipam(store, node) if store is not None else None


# --- commands --------------------------------------------------------------------------------


async def run(
    env: Mapping[str, str],
    stdin: bytes,
    *,
    store: Datastore | None = None,
    host_netns: str | None = None,
) -> tuple[int, dict[str, Any] | None]:
    """One plugin invocation: (exit code, JSON for stdout or None).

    ``store`` overrides the config's datastore URL (tests pass an in-process store);
    ``host_netns`` runs the host side in a lab namespace instead of our own.
    """
    version = "1.0.0"
    try:
        inv = parse_env(env)
        if inv.command == "VERSION":
            return 0, version_json()
        version = _claimed_version(stdin) or version
        conf = parse_config(stdin)
        return 0, await _dispatch(inv, conf, store, host_netns)
    except CniError as exc:
        return 1, exc.to_json(version)
    except Exception as exc:
        # The runtime must always get the error JSON; the traceback goes to stderr, which
        # runtimes keep in their logs.
        traceback.print_exc(file=sys.stderr)
        err = CniError(UNEXPECTED, "internal error", f"{type(exc).__name__}: {exc}")
        return 1, err.to_json(version)


def _claimed_version(stdin: bytes) -> str | None:
    # Errors answer in the config's version even when the rest of the config is bad.
    try:
        claimed = json.loads(stdin).get("cniVersion")
    except (ValueError, AttributeError):
        return None
    return claimed if claimed in SUPPORTED_VERSIONS else None


async def _dispatch(
    inv: Invocation, conf: NetConf, store: Datastore | None, host_netns: str | None
) -> dict[str, Any] | None:
    own_store = store is None and conf.datastore is not None
    if own_store:
        try:
            store = open_store(conf.datastore or "")
        except DatastoreError as exc:
            raise CniError(TRY_AGAIN_LATER, "datastore unavailable", str(exc)) from exc
    try:
        workloads = Workloads(
            conf.nodename,
            EndpointDataplane(host_netns=host_netns, route_protocol=conf.route_protocol),
            ipam=_ipam(store, conf.nodename),
            store=store,
        )
        if inv.command == "ADD":
            return await _add(inv, conf, workloads)
        if inv.command == "DEL":
            await _del(inv, conf, workloads)
            return None
        await _check(inv, conf, workloads)
        return None
    finally:
        if own_store and store is not None:
            await store.close()


async def _add(inv: Invocation, conf: NetConf, workloads: Workloads) -> dict[str, Any]:
    if not netns_exists(inv.netns):
        raise CniError(UNKNOWN_CONTAINER, f"network namespace {inv.netns!r} does not exist")
    req = request(inv, conf)
    try:
        attached = await workloads.add(req)
    except WorkloadError as exc:
        raise CniError(INVALID_CONFIG, str(exc), exc.field or "") from exc
    except (EndpointError, NetnsNotFoundError) as exc:
        raise CniError(PLUMBING_FAILED, "cannot plumb the workload interface", str(exc)) from exc
    except UnavailableError as exc:
        raise CniError(TRY_AGAIN_LATER, "datastore unavailable", str(exc)) from exc
    except DatastoreError as exc:
        raise CniError(IO_FAILURE, "datastore write failed", str(exc)) from exc
    except IpamError as exc:
        raise CniError(IPAM_FAILED, "address assignment failed", str(exc)) from exc
    return result_json(conf, attached.plumbed)


async def _del(inv: Invocation, conf: NetConf, workloads: Workloads) -> None:
    namespace, name, orchestrator = identity(inv)
    try:
        await workloads.delete(
            namespace,
            name,
            f"{conf.name}.{inv.container_id}",
            orchestrator=orchestrator,
            ifname=inv.ifname,
            container_id=inv.container_id,
        )
    except UnavailableError as exc:
        raise CniError(TRY_AGAIN_LATER, "datastore unavailable", str(exc)) from exc
    except EndpointError as exc:
        raise CniError(PLUMBING_FAILED, "cannot remove the workload interface", str(exc)) from exc


async def _check(inv: Invocation, conf: NetConf, workloads: Workloads) -> None:
    prev = conf.raw.get("prevResult")
    if not isinstance(prev, dict):
        raise CniError(INVALID_CONFIG, "prevResult: CHECK needs the ADD result")
    if not netns_exists(inv.netns):
        raise CniError(UNKNOWN_CONTAINER, f"network namespace {inv.netns!r} does not exist")
    try:
        addresses = [ipaddress.ip_interface(entry["address"]).ip for entry in prev.get("ips") or []]
    except (KeyError, TypeError, ValueError) as exc:
        raise CniError(INVALID_CONFIG, "prevResult.ips: unreadable", str(exc)) from exc
    if not addresses:
        raise CniError(INVALID_CONFIG, "prevResult.ips: no addresses to check")
    req = request(inv, conf)
    host_if = veth_name(workload_id(req.namespace, req.name), workloads.dataplane.prefix)
    names = {i.get("name") for i in prev.get("interfaces") or [] if isinstance(i, dict)}
    problems = [] if host_if in names else [f"prevResult does not list {host_if}"]
    problems += await workloads.check(req, addresses)
    if problems:
        raise CniError(CHECK_FAILED, "the workload interface differs", "; ".join(problems))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `routemesh-cni`: env and stdin in, JSON out, exit 0 or 1."""
    del argv  # a CNI plugin takes no arguments
    env = dict(os.environ)
    # Read stdin even for VERSION: a runtime writing the config must not hit a closed pipe.
    data = b"" if sys.stdin is None or sys.stdin.isatty() else sys.stdin.buffer.read()
    code, out = asyncio.run(run(env, data))
    if out is not None:
        sys.stdout.write(json.dumps(out) + "\n")
        sys.stdout.flush()
    return code


if __name__ == "__main__":
    sys.exit(main())
