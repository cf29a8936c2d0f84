"""Network namespaces for tests: creation, veths, bridges, processes inside them, cleanup.

A Lab owns everything one test creates on the host and removes it on close, even after a
failure; sweep_stale() removes what a killed test run left behind (names carry the owner pid).
"""

from __future__ import annotations

import ipaddress
import itertools
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from types import TracebackType

PREFIX = "rm-"
# Namespaces: rm-<pid>-<n>; probes from require.py: rm-probe-<pid>-<hex>; temp dirs and
# per-daemon state: rm-<pid>-...; host-side links (15-char limit): rm<pid>v<n>.
_STALE_NS_RE = re.compile(r"^rm-(?:probe-)?(\d+)-")
_STALE_LINK_RE = re.compile(r"^rm(\d+)v\d+$")
_STATE_DIRS = (Path(tempfile.gettempdir()), Path("/run/exabgp"), Path("/run/frr"))

_ns_counter = itertools.count(1)
_link_counter = itertools.count(1)

Addrs = str | Sequence[str]


class LabError(RuntimeError):
    """A lab command failed; the message carries its output."""


def run(
    argv: Sequence[str],
    *,
    check: bool = True,
    timeout: float = 30.0,
    input: str | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a host command, capturing text output; raise LabError if ``check`` and it fails."""
    try:
        res = subprocess.run(
            list(argv),
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input,
            env=env,
            stdin=None if input is not None else subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as exc:
        raise LabError(f"timed out after {timeout}s: {' '.join(argv)}") from exc
    if check and res.returncode != 0:
        raise LabError(
            f"command failed (rc={res.returncode}): {' '.join(argv)}\n"
            f"stdout: {res.stdout.strip()}\nstderr: {res.stderr.strip()}"
        )
    return res


def _as_list(addrs: Addrs) -> list[str]:
    return [addrs] if isinstance(addrs, str) else list(addrs)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _ns_pids(name: str) -> list[int]:
    res = run(["ip", "netns", "pids", name], check=False, timeout=10)
    return [int(p) for p in res.stdout.split() if p.isdigit()]


def _delete_ns(name: str) -> None:
    # A process left inside keeps the namespace's sockets alive (and, for a daemon bound to
    # 179, the next test's peer from starting), so kill them before deleting.
    for pid in _ns_pids(name):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    run(["ip", "netns", "del", name], check=False, timeout=10)


def sweep_stale() -> list[str]:
    """Remove namespaces, host links and state dirs whose owner pid is dead; return names."""
    removed: list[str] = []
    listing = run(["ip", "netns", "list"], check=False, timeout=10).stdout
    for line in listing.splitlines():
        name = line.split(" ", 1)[0]
        m = _STALE_NS_RE.match(name)
        if m and not _pid_alive(int(m.group(1))):
            _delete_ns(name)
            removed.append(name)
    links = run(["ip", "-o", "link", "show"], check=False, timeout=10).stdout
    for line in links.splitlines():
        parts = line.split(":", 2)
        if len(parts) < 2:
            continue
        ifname = parts[1].strip().split("@", 1)[0]
        m = _STALE_LINK_RE.match(ifname)
        if m and not _pid_alive(int(m.group(1))):
            run(["ip", "link", "del", ifname], check=False, timeout=10)
            removed.append(ifname)
    for base in _STATE_DIRS:
        if not base.is_dir():
            continue
        for path in base.glob(f"{PREFIX}*"):
            m = _STALE_NS_RE.match(path.name)
            if m and not _pid_alive(int(m.group(1))):
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
                removed.append(str(path))
    return removed


class Netns:
    """One named network namespace; create it with Lab.netns()."""

    def __init__(self, lab: Lab, name: str) -> None:
        self.lab = lab
        self.name = name
        self._if_counter = itertools.count(0)

    def __repr__(self) -> str:
        return f"Netns({self.name!r})"

    def argv(self, cmd: Sequence[str] | str) -> list[str]:
        """The host argv that runs ``cmd`` (argv list, or a shell string) inside this ns."""
        inner = ["sh", "-c", cmd] if isinstance(cmd, str) else list(cmd)
        return ["ip", "netns", "exec", self.name, *inner]

    def run(
        self,
        cmd: Sequence[str] | str,
        *,
        check: bool = True,
        timeout: float = 30.0,
        input: str | None = None,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command to completion inside the namespace and return its text output."""
        return run(self.argv(cmd), check=check, timeout=timeout, input=input, env=env)

    def popen(
        self,
        cmd: Sequence[str] | str,
        *,
        log: Path | None = None,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start a long-running process inside the namespace; the Lab kills it on close."""
        return self.lab.popen(self.argv(cmd), log=log, env=env, cwd=cwd)

    def ip(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """``ip -n <ns> args...``: cheaper than ``ip netns exec`` (no mount namespace)."""
        return run(["ip", "-n", self.name, *args], check=check, timeout=10)

    def sysctl(self, key: str, value: str | int) -> None:
        """Set a per-namespace sysctl (net.* keys are per namespace)."""
        path = "/proc/sys/" + key.replace(".", "/")
        self.run(["sh", "-c", f"echo {value} > {path}"], timeout=10)

    def next_ifname(self, stem: str = "eth") -> str:
        """A fresh interface name inside this namespace (eth0, eth1, ...)."""
        return f"{stem}{next(self._if_counter)}"

    def add_address(self, ifname: str, addr: str) -> None:
        """Add an IPv4 or IPv6 address (CIDR); IPv6 skips DAD so it is usable at once."""
        iface = ipaddress.ip_interface(addr)
        extra = ["nodad"] if iface.version == 6 else []
        self.ip("addr", "add", addr, "dev", ifname, *extra)

    def link_up(self, ifname: str) -> None:
        self.ip("link", "set", ifname, "up")

    def pids(self) -> list[int]:
        """Pids of every process whose network namespace is this one."""
        return _ns_pids(self.name)

    def ping(self, addr: str, *, count: int = 1, timeout: float = 2.0) -> bool:
        """One-shot reachability check from inside the namespace."""
        res = self.run(
            ["ping", "-n", "-q", "-c", str(count), "-W", str(int(max(timeout, 1))), addr],
            check=False,
            timeout=timeout * count + 5,
        )
        return res.returncode == 0

    def tcp_listening(self, port: int) -> bool:
        """True if something in the namespace listens on TCP ``port`` (any address)."""
        res = self.run(["ss", "-Hltn", f"sport = :{port}"], check=False, timeout=10)
        return bool(res.stdout.strip())


class Lab:
    """Owns a test's namespaces, links, processes and temp dirs; close() removes them all.

    Use as a context manager (or the ``lab`` pytest fixture). Cleanup runs in reverse order:
    registered callbacks (e.g. peer.stop), then processes, namespaces, host links, temp dir.
    """

    def __init__(self, *, sweep: bool = True) -> None:
        if sweep:
            sweep_stale()
        self.pid = os.getpid()
        self.tmp = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{self.pid}-lab-"))
        # Daemons that drop privileges (FRR) must traverse into their config dirs.
        self.tmp.chmod(0o755)
        self.namespaces: list[Netns] = []
        self.host_links: list[str] = []
        self.procs: list[subprocess.Popen[bytes]] = []
        self._cleanups: list[Callable[[], object]] = []
        self._closed = False

    # -- context manager -------------------------------------------------------------------

    def __enter__(self) -> Lab:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- building ---------------------------------------------------------------------------

    def unique_name(self, tag: str = "") -> str:
        """A host-unique name with our prefix and pid, for namespaces and per-daemon state."""
        n = next(_ns_counter)
        return f"{PREFIX}{self.pid}-{n}{('-' + tag) if tag else ''}"

    def netns(self, *, forwarding: bool = True) -> Netns:
        """Create a namespace with lo up and (by default) IPv4/IPv6 forwarding on."""
        ns = Netns(self, f"{PREFIX}{self.pid}-{next(_ns_counter)}")
        run(["ip", "netns", "add", ns.name], timeout=10)
        self.namespaces.append(ns)
        ns.link_up("lo")
        if forwarding:
            ns.sysctl("net.ipv4.ip_forward", 1)
            ns.sysctl("net.ipv6.conf.all.forwarding", 1)
        return ns

    def veth(
        self,
        a: Netns | None,
        b: Netns | None,
        addr_a: Addrs = (),
        addr_b: Addrs = (),
        *,
        name_a: str | None = None,
        name_b: str | None = None,
        mtu: int | None = None,
    ) -> tuple[str, str]:
        """Join ``a`` and ``b`` with a veth pair (None = host namespace), address both ends,
        bring them up, and return the two interface names."""
        if_a = name_a or self._ifname(a)
        if_b = name_b or self._ifname(b)
        cmd = ["ip"]
        if a is not None:
            cmd += ["-n", a.name]
        cmd += ["link", "add", if_a]
        if mtu:
            cmd += ["mtu", str(mtu)]
        cmd += ["type", "veth", "peer", "name", if_b]
        if b is not None:
            cmd += ["netns", b.name]
        elif a is not None:
            # "peer netns" is relative to the creator; name the host by pid 1's namespace.
            cmd += ["netns", "1"]
        if mtu:
            cmd += ["mtu", str(mtu)]
        # One netlink request creates both ends in place, so a failure leaves nothing behind.
        run(cmd, timeout=10)
        for ns, ifname, addrs in ((a, if_a, addr_a), (b, if_b, addr_b)):
            if ns is None:
                self.host_links.append(ifname)
                for addr in _as_list(addrs):
                    extra = ["nodad"] if ipaddress.ip_interface(addr).version == 6 else []
                    run(["ip", "addr", "add", addr, "dev", ifname, *extra], timeout=10)
                run(["ip", "link", "set", ifname, "up"], timeout=10)
            else:
                for addr in _as_list(addrs):
                    ns.add_address(ifname, addr)
                ns.link_up(ifname)
        return if_a, if_b

    def bridge(
        self,
        members: Sequence[Netns],
        addrs: Sequence[Addrs] = (),
        *,
        hub: Netns | None = None,
        bridge_name: str = "br0",
    ) -> tuple[Netns, list[str]]:
        """Put ``members`` on one L2 segment: a bridge in a hub namespace with a veth to each.

        ``addrs[i]`` (one CIDR or several) goes on member i's interface. Returns the hub
        namespace and the interface name inside each member. Pass ``hub`` to add members to an
        existing segment.
        """
        if hub is None:
            hub = self.netns(forwarding=False)
            hub.ip("link", "add", bridge_name, "type", "bridge")
            # No STP and no forward delay: ports forward at once, or tests see a 15s blackout.
            hub.ip("link", "set", bridge_name, "type", "bridge", "stp_state", "0")
            hub.ip("link", "set", bridge_name, "type", "bridge", "forward_delay", "0")
            hub.link_up(bridge_name)
        names: list[str] = []
        for i, member in enumerate(members):
            member_addrs = addrs[i] if i < len(addrs) else ()
            port, ifname = self.veth(hub, member, (), member_addrs, name_a=hub.next_ifname("p"))
            hub.ip("link", "set", port, "master", bridge_name)
            names.append(ifname)
        return hub, names

    def _ifname(self, ns: Netns | None) -> str:
        if ns is not None:
            return ns.next_ifname()
        return f"rm{self.pid}v{next(_link_counter)}"

    # -- processes and files ----------------------------------------------------------------

    def popen(
        self,
        argv: Sequence[str],
        *,
        log: Path | None = None,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start a process in its own process group (so close() can kill its children too),
        with stdout+stderr appended to ``log`` (or discarded)."""
        out = open(log, "ab") if log is not None else subprocess.DEVNULL  # noqa: SIM115
        try:
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=cwd,
                start_new_session=True,
            )
        finally:
            if log is not None:
                out.close()  # type: ignore[union-attr]
        self.procs.append(proc)
        return proc

    def kill(self, proc: subprocess.Popen[bytes], *, timeout: float = 5.0) -> int | None:
        """SIGTERM the process group, SIGKILL it after ``timeout``; return the exit code."""
        return _kill_group(proc, signal.SIGTERM, timeout)

    def kill9(self, proc: subprocess.Popen[bytes]) -> int | None:
        """SIGKILL the process group at once (a crash, as far as the peer can tell)."""
        return _kill_group(proc, signal.SIGKILL, 5.0)

    def tmpdir(self, tag: str) -> Path:
        """A fresh directory under the lab's temp dir (removed on close)."""
        path = Path(tempfile.mkdtemp(prefix=f"{tag}-", dir=self.tmp))
        path.chmod(0o755)  # daemons that drop privileges (FRR) must still read their config
        return path

    def on_cleanup(self, fn: Callable[[], object]) -> None:
        """Run ``fn`` first on close (last registered runs first); errors are collected."""
        self._cleanups.append(fn)

    # -- teardown ---------------------------------------------------------------------------

    def close(self) -> None:
        """Remove everything; never stops half-way, and raises the first error at the end."""
        if self._closed:
            return
        self._closed = True
        errors: list[BaseException] = []
        for fn in reversed(self._cleanups):
            _collect(errors, fn)
        for proc in reversed(self.procs):
            _collect(errors, lambda p=proc: _kill_group(p, signal.SIGTERM, 3.0))
        for ns in reversed(self.namespaces):
            _collect(errors, lambda n=ns: _delete_ns(n.name))
        for ifname in self.host_links:
            _collect(errors, lambda i=ifname: run(["ip", "link", "del", i], check=False))
        shutil.rmtree(self.tmp, ignore_errors=True)
        if errors:
            raise errors[0]


def _collect(errors: list[BaseException], fn: Callable[[], object]) -> None:
    try:
        fn()
    except Exception as exc:
        errors.append(exc)


def _kill_group(proc: subprocess.Popen[bytes], sig: int, timeout: float) -> int | None:
    if proc.poll() is not None:
        _reap_group(proc.pid)
        return proc.returncode
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)
    _reap_group(proc.pid)
    return proc.returncode


def _reap_group(pgid: int) -> None:
    # The leader may be gone while helpers it spawned (ExaBGP's API process) live on in
    # its group; they must not outlive the test.
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def wait_gone(pids: Iterable[int], timeout: float = 5.0) -> None:
    """Wait until none of ``pids`` exists (after a kill), up to ``timeout``."""
    deadline = time.monotonic() + timeout
    pending = set(pids)
    while pending and time.monotonic() < deadline:
        pending = {p for p in pending if _pid_alive(p)}
        if pending:
            time.sleep(0.05)
