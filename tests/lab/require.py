"""Preconditions for tests that need root, namespaces, binaries or kernel features.

Under ``CI=true`` a missing precondition fails the test (a green CI must mean it all ran);
elsewhere it skips with the reason, so a laptop without FRR can still run the rest.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import shutil
import subprocess
import uuid
from typing import NoReturn

import pytest

# Daemons that Debian installs outside PATH.
_EXTRA_BIN_DIRS = ("/usr/sbin", "/sbin", "/usr/lib/frr")


def in_ci() -> bool:
    """True when running under CI, where missing test prerequisites are errors."""
    return os.environ.get("CI", "").lower() == "true"


def missing(reason: str) -> NoReturn:
    """Fail (under CI) or skip (elsewhere) the current test because ``reason``."""
    if in_ci():
        pytest.fail(f"CI=true and a test prerequisite is missing: {reason}", pytrace=False)
    pytest.skip(reason)


def find_binary(name: str) -> str | None:
    """Absolute path of ``name`` on PATH or in the sbin/FRR dirs, or None."""
    found = shutil.which(name)
    if found:
        return found
    for d in _EXTRA_BIN_DIRS:
        path = os.path.join(d, name)
        if os.access(path, os.X_OK):
            return path
    return None


def require_root() -> None:
    """Require uid 0."""
    if os.geteuid() != 0:
        missing("needs root")


def require_binary(name: str) -> str:
    """Require an executable and return its absolute path."""
    path = find_binary(name)
    if path is None:
        missing(f"binary {name!r} not found (run scripts/setup.sh)")
    return path


def require_module(name: str) -> None:
    """Require an importable Python module (e.g. ``exabgp``, ``pyroute2``)."""
    if importlib.util.find_spec(name) is None:
        missing(f"python module {name!r} not installed (run scripts/setup.sh)")


@functools.cache
def _netns_error() -> str | None:
    # Probe once per process by really creating a namespace: being root is not enough in
    # some containers (no CAP_SYS_ADMIN, read-only /run).
    if os.geteuid() != 0:
        return "needs root for network namespaces"
    if find_binary("ip") is None:
        return "iproute2 'ip' not found"
    name = f"rm-probe-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    add = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if add.returncode != 0:
        return f"cannot create network namespace: {add.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", name], capture_output=True)
    return None


def require_netns() -> None:
    """Require root and a working ``ip netns add``."""
    err = _netns_error()
    if err:
        missing(err)


@functools.cache
def _link_kind_error(kind: str) -> str | None:
    # Ask the kernel inside a throwaway namespace, so nothing leaks into the host.
    name = f"rm-probe-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", name], capture_output=True, check=True)
    try:
        extra = {"vxlan": ["id", "42", "dstport", "4789"]}.get(kind, [])
        res = subprocess.run(
            ["ip", "-n", name, "link", "add", "probe0", "type", kind, *extra],
            capture_output=True,
            text=True,
        )
        if res.returncode != 0:
            return f"kernel refuses link type {kind!r}: {res.stderr.strip()}"
        return None
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


def require_link_kind(kind: str, *, skip_even_in_ci: bool = False) -> None:
    """Require that the kernel can create links of ``kind`` (e.g. ``vxlan``, ``ipip``).

    ``skip_even_in_ci`` is for features the design accepts as absent (IPIP on this kernel).
    """
    require_netns()
    err = _link_kind_error(kind)
    if err:
        if skip_even_in_ci:
            pytest.skip(err)
        missing(err)
