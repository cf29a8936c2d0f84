"""Small netlink and namespace helpers the agent shares: rtnetlink sockets bound to a netns,
namespace paths, per-namespace sysctls and link lookups over pyroute2's AsyncIPRoute."""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import os
import threading
from collections.abc import AsyncIterator, Awaitable, Iterable
from contextlib import asynccontextmanager
from typing import Any

from pyroute2 import AsyncIPRoute
from pyroute2.netlink.exceptions import NetlinkError

NETNS_RUN_DIR = "/var/run/netns"
_CLONE_NEWNET = 0x40000000
_NS_GET_NSTYPE = 0xB703  # _IO(0xb7, 0x3)


class NetnsNotFoundError(OSError):
    """The named network namespace (or /proc/<pid>/ns/net path) does not exist."""

    def __init__(self, path: str) -> None:
        super().__init__(errno.ENOENT, f"network namespace {path!r} does not exist")
        self.path = path


def netns_path(netns: str) -> str:
    """A namespace name (as `ip netns` uses) or a path, as a path."""
    return netns if "/" in netns else os.path.join(NETNS_RUN_DIR, netns)


def netns_exists(netns: str) -> bool:
    """True if ``netns`` names a live network namespace, not a leftover mount-point file."""
    try:
        fd = os.open(netns_path(netns), os.O_RDONLY)
    except OSError:
        return False
    try:
        # NS_GET_NSTYPE answers only on nsfs files: a regular file gets ENOTTY.
        return fcntl.ioctl(fd, _NS_GET_NSTYPE) == _CLONE_NEWNET
    except OSError:
        return False
    finally:
        os.close(fd)


def open_netns(netns: str) -> int:
    """An O_RDONLY fd on the namespace; NetnsNotFoundError if it is gone."""
    if not netns_exists(netns):
        raise NetnsNotFoundError(netns)
    return os.open(netns_path(netns), os.O_RDONLY)


@asynccontextmanager
async def rtnl(netns: str | None = None) -> AsyncIterator[AsyncIPRoute]:
    """An rtnetlink socket in ``netns`` (None: our own namespace).

    pyroute2 would create a missing namespace by default (O_CREAT); a CNI plugin must never
    do that, so we check first and pass flags=0.
    """
    if netns is None:
        ipr = AsyncIPRoute()
    else:
        if not netns_exists(netns):
            raise NetnsNotFoundError(netns)
        ipr = AsyncIPRoute(netns=netns_path(netns), flags=0)
    async with ipr:
        yield ipr


async def collect(request: Awaitable[Any]) -> list[Any]:
    """pyroute2 answers either with a list or an async generator; always give a list."""
    answer = await request
    if isinstance(answer, list | tuple):
        return list(answer)
    return [msg async for msg in answer]


async def link_by_name(ipr: AsyncIPRoute, ifname: str) -> Any | None:
    """The RTM_NEWLINK message of ``ifname``, or None if there is no such link."""
    try:
        links = await collect(ipr.link("get", ifname=ifname))
    except NetlinkError as exc:
        if exc.code in (errno.ENODEV, errno.ENOENT):
            return None
        raise
    return links[0] if links else None


async def link_names(ipr: AsyncIPRoute, prefix: str) -> dict[str, Any]:
    """Every link whose name starts with ``prefix``, by name."""
    found: dict[str, Any] = {}
    for msg in await collect(ipr.link("dump")):
        name = msg.get("ifname")
        if name and name.startswith(prefix):
            found[name] = msg
    return found


def link_kind(msg: Any) -> str | None:
    """IFLA_INFO_KIND of a link message ('veth', 'vxlan', ...), or None for plain devices."""
    info = msg.get("IFLA_LINKINFO")
    return info.get("IFLA_INFO_KIND") if info is not None else None


# --- sysctls ---------------------------------------------------------------------------------


def _sysctl_path(key: str) -> str:
    # Interface names may contain dots (vxlan.calico), so the dotted form is ambiguous: take
    # keys already in slash form, or dotted keys without interface-name dots.
    return "/proc/sys/" + (key if "/" in key else key.replace(".", "/"))


def _write_sysctls(items: Iterable[tuple[str, str]]) -> None:
    for key, value in items:
        with open(_sysctl_path(key), "w") as f:
            f.write(value)


def _read_sysctls(keys: Iterable[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for key in keys:
        with open(_sysctl_path(key)) as f:
            out[key] = f.read().strip()
    return out


def _in_netns(netns: str | None, fn: Any, *args: Any) -> Any:
    """Run ``fn(*args)`` in a short-lived thread that joined ``netns``.

    setns(CLONE_NEWNET) changes only the calling thread, and /proc/sys/net follows the
    opener's namespace, so a throwaway thread gives per-namespace sysctls without forking.
    """
    if netns is None:
        return fn(*args)
    fd = open_netns(netns)
    result: dict[str, Any] = {}

    def body() -> None:
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
            if libc.setns(fd, _CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"setns into {netns!r} failed: {os.strerror(err)}")
            result["value"] = fn(*args)
        except BaseException as exc:
            result["error"] = exc

    try:
        thread = threading.Thread(target=body, name="netns-sysctl", daemon=True)
        thread.start()
        thread.join()
    finally:
        os.close(fd)
    if "error" in result:
        raise result["error"]
    return result.get("value")


def write_sysctls(items: Iterable[tuple[str, str]], *, netns: str | None = None) -> None:
    """Write (key, value) sysctls, in ``netns`` or our own namespace.

    Keys use slash form when a part holds a dot: ``net/ipv4/conf/vxlan.calico/forwarding``.
    """
    _in_netns(netns, _write_sysctls, list(items))


def read_sysctls(keys: Iterable[str], *, netns: str | None = None) -> dict[str, str]:
    """Read sysctls (same key forms as write_sysctls)."""
    return _in_netns(netns, _read_sysctls, list(keys))
