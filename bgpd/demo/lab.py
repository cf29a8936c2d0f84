"""The demo's namespaces, links and processes, and the record of them that `--down` reads.

Everything is written to `state.json` in the state directory *before* it is created, so a
demo killed half-way, or left running by `--keep`, is removed by `routemesh demo --down` from
a fresh process. Nothing is created in the root namespace: hosts, the router and pods are all
namespaces named `rmdemo-*`, and every link lives inside them.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

STATE_DIR = Path("/run/routemesh-demo")
NS_PREFIX = "rmdemo-"
RECORD = "state.json"

Progress = Callable[[str], None]


class DemoError(RuntimeError):
    """A demo step failed; the message says which and why."""


def sh(
    argv: Sequence[str],
    *,
    check: bool = True,
    timeout: float = 30.0,
    input: str | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a command to completion; DemoError with its output if ``check`` and it fails."""
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
        raise DemoError(f"timed out after {timeout:.0f}s: {' '.join(argv)}") from exc
    except OSError as exc:
        raise DemoError(f"cannot run {argv[0]}: {exc}") from exc
    if check and res.returncode != 0:
        out = (res.stderr.strip() or res.stdout.strip())[-800:]
        raise DemoError(f"`{' '.join(argv)}` failed (exit {res.returncode}): {out}")
    return res


def in_ns(ns: str, argv: Sequence[str]) -> list[str]:
    """The argv that runs ``argv`` inside namespace ``ns``."""
    return ["ip", "netns", "exec", ns, *argv]


@dataclass
class Record:
    """What one demo created; saved as JSON after every addition."""

    namespaces: list[str] = field(default_factory=list)
    # [pid, start time in clock ticks]: the pair tells our process from a reused pid.
    processes: list[list[int]] = field(default_factory=list)
    # The store as seen from the root namespace, and whether the demo must empty it at --down
    # (an etcd it was given; a SQLite file goes with the state directory).
    store_url: str = ""
    clear_store: bool = False
    # [pid, start time] of the `routemesh demo` that is building it, until it exits.
    owner: list[int] = field(default_factory=list)

    @classmethod
    def load(cls, path: Path) -> Record:
        try:
            raw = json.loads(path.read_text())
        except (OSError, ValueError):
            return cls()
        known = {k: raw[k] for k in asdict(cls()) if k in raw}
        return cls(**known)

    def save(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        tmp.replace(path)


def _start_time(pid: int) -> int | None:
    """The process's start time (field 22 of /proc/PID/stat); None if gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] == "Z":
        return None
    return int(fields[19])


class DemoLab:
    """Creates the demo's namespaces, links and processes, recording each first."""

    def __init__(self, state_dir: Path = STATE_DIR) -> None:
        self.state_dir = state_dir
        self.record = Record(owner=[os.getpid(), _start_time(os.getpid()) or 0])
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        state_dir.mkdir(parents=True, exist_ok=True)
        (state_dir / "logs").mkdir(exist_ok=True)
        self.save()

    def save(self) -> None:
        self.record.save(self.state_dir / RECORD)

    def netns(self, name: str, *, forwarding: bool) -> str:
        """A namespace with lo up (and IP forwarding when it routes)."""
        self.record.namespaces.append(name)
        self.save()
        sh(["ip", "netns", "add", name])
        sh(["ip", "-n", name, "link", "set", "lo", "up"])
        if forwarding:
            sh(in_ns(name, ["sysctl", "-qw", "net.ipv4.ip_forward=1"]))
        return name

    def bridge(self, ns: str, name: str, address: str) -> None:
        """An L2 segment in ``ns`` whose own address is the segment's gateway."""
        sh(["ip", "-n", ns, "link", "add", name, "type", "bridge", "stp_state", "0"])
        # No forward delay: a port forwards at once instead of after 15 s of learning.
        sh(["ip", "-n", ns, "link", "set", name, "type", "bridge", "forward_delay", "0"])
        sh(["ip", "-n", ns, "addr", "add", address, "dev", name])
        sh(["ip", "-n", ns, "link", "set", name, "up"])

    def attach(self, hub: str, bridge: str, port: str, ns: str, address: str) -> None:
        """Plug ``ns`` (as eth0 with ``address``) into ``bridge`` of ``hub`` by a veth."""
        sh(["ip", "-n", hub, "link", "add", port, "type", "veth", "peer", "name", "eth0",
            "netns", ns])  # fmt: skip
        sh(["ip", "-n", hub, "link", "set", port, "master", bridge, "up"])
        sh(["ip", "-n", ns, "addr", "add", address, "dev", "eth0"])
        sh(["ip", "-n", ns, "link", "set", "eth0", "up"])

    def start(self, argv: Sequence[str], log: Path) -> subprocess.Popen[bytes]:
        """A long-running process in its own session (so it outlives a `--keep` demo)."""
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        started = _start_time(proc.pid)
        self.record.processes.append([proc.pid, started or 0])
        self.procs[proc.pid] = proc
        self.save()
        return proc


def running_owner(state_dir: Path = STATE_DIR) -> int | None:
    """The pid of another `routemesh demo` still building or showing the recorded demo."""
    owner = Record.load(state_dir / RECORD).owner
    if len(owner) == 2 and owner[0] != os.getpid() and _ours(owner[0], owner[1]):
        return owner[0]
    return None


def _ours(pid: int, started: int) -> bool:
    now = _start_time(pid)
    return now is not None and (started == 0 or now == started)


def _stop_processes(record: Record, procs: dict[int, subprocess.Popen[bytes]]) -> list[str]:
    """SIGTERM each recorded process group (nodes say Cease to their peers), then SIGKILL."""
    live = [pid for pid, started in record.processes if _ours(pid, started)]
    for pid in live:
        try:
            os.killpg(pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        for pid in live:
            if pid in procs:
                procs[pid].poll()  # reap our own children so they stop being zombies
        live = [pid for pid in live if _start_time(pid) is not None]
        if not live:
            break
        time.sleep(0.1)
    problems = []
    for pid in live:
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if pid in procs:
            procs[pid].wait(timeout=5)
        problems.append(f"process {pid} ignored SIGTERM and was killed")
    return problems


def demo_namespaces() -> list[str]:
    """Every `rmdemo-*` namespace on this host, recorded or not."""
    out = sh(["ip", "netns", "list"], check=False).stdout
    names = [line.split(" ", 1)[0] for line in out.splitlines()]
    return [n for n in names if n.startswith(NS_PREFIX)]


def _delete_namespace(name: str) -> None:
    # A process left inside would keep its sockets (and routes' users) alive.
    pids = sh(["ip", "netns", "pids", name], check=False).stdout.split()
    for pid in pids:
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass
    sh(["ip", "netns", "del", name], check=False)


def down(
    state_dir: Path = STATE_DIR,
    *,
    procs: dict[int, subprocess.Popen[bytes]] | None = None,
    clear_store: Callable[[str], None] | None = None,
    progress: Progress = lambda _text: None,
) -> list[str]:
    """Remove what a demo created: processes, namespaces, its etcd keys, the state directory.

    Returns what needed force (for the caller to report); anything that could not be removed
    raises DemoError.
    """
    record = Record.load(state_dir / RECORD)
    problems = _stop_processes(record, procs or {})
    names = list(dict.fromkeys(record.namespaces[::-1] + demo_namespaces()))
    if names:
        progress(f"deleting {len(names)} namespaces")
    for name in names:
        _delete_namespace(name)
    if record.clear_store and clear_store is not None:
        progress(f"removing the demo's keys from {record.store_url}")
        clear_store(record.store_url)
    shutil.rmtree(state_dir, ignore_errors=True)
    left = demo_namespaces()
    if left:
        raise DemoError(f"namespaces still present after --down: {', '.join(left)}")
    return problems
