"""sd_notify over a real unix datagram socket passed as NOTIFY_SOCKET (path and abstract)."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

from bgpd.health import Readiness
from bgpd.sdnotify import Notifier


@pytest.fixture
def receiver(tmp_path: Path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify.sock")
    sock.bind(path)
    sock.settimeout(10)
    yield path, sock
    sock.close()


def recv(sock: socket.socket) -> dict[str, str]:
    data = sock.recv(4096).decode()
    return dict(line.split("=", 1) for line in data.split("\n"))


def test_ready_status_stopping_on_a_path_socket(receiver):
    path, sock = receiver
    n = Notifier.from_env({"NOTIFY_SOCKET": path})
    assert n.enabled
    assert n.status("waiting for 2 BGP sessions")
    assert recv(sock) == {"STATUS": "waiting for 2 BGP sessions"}
    assert n.ready("ready: 2/2 sessions")
    assert recv(sock) == {"READY": "1", "STATUS": "ready: 2/2 sessions"}
    assert n.stopping()
    assert recv(sock) == {"STOPPING": "1"}
    # A newline in a status cannot forge a second field.
    n.status("line one\nREADY=1")
    assert recv(sock) == {"STATUS": "line one READY=1"}


def test_abstract_socket_with_at_sign():
    name = f"routemesh-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(10)
        n = Notifier.from_env({"NOTIFY_SOCKET": "@" + name})
        assert n.watchdog()
        assert recv(sock) == {"WATCHDOG": "1"}


def test_without_notify_socket_everything_is_a_quiet_no_op():
    n = Notifier.from_env({})
    assert not n.enabled
    assert n.ready() is False and n.watchdog() is False
    assert n.watchdog_interval() is None


def test_a_vanished_socket_is_logged_not_raised(tmp_path: Path, caplog):
    n = Notifier.from_env({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    assert n.ready() is False
    assert "sd_notify" in caplog.text
    assert Notifier.from_env({"NOTIFY_SOCKET": "vsock:2:1234"}).ready() is False


def test_watchdog_interval_only_for_our_pid():
    env = {"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "20000000"}
    assert Notifier.from_env(env).watchdog_interval() == 10.0
    env["WATCHDOG_PID"] = str(os.getpid())
    assert Notifier.from_env(env).watchdog_interval() == 10.0
    env["WATCHDOG_PID"] = "1"
    assert Notifier.from_env(env).watchdog_interval() is None
    bad = {"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "soon"}
    assert Notifier.from_env(bad).watchdog_interval() is None


async def test_watchdog_task_pings_until_cancelled(receiver):
    path, sock = receiver
    sock.setblocking(False)
    n = Notifier.from_env({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "20000"})
    task = n.start_watchdog()
    assert task is not None
    loop = asyncio.get_running_loop()
    first = await asyncio.wait_for(loop.sock_recv(sock, 100), 10)
    second = await asyncio.wait_for(loop.sock_recv(sock, 100), 10)
    task.cancel()
    assert first == second == b"WATCHDOG=1"


def test_readiness_flip_sends_ready_once(receiver):
    path, sock = receiver
    n = Notifier.from_env({"NOTIFY_SOCKET": path})
    r = Readiness(["bgp-sessions", "fib-synced"])
    r.on_change(lambda ok: n.ready("ready") if ok else n.status("not ready"))
    r.set("bgp-sessions", True)
    r.set("fib-synced", True)
    assert recv(sock) == {"READY": "1", "STATUS": "ready"}
    r.set("fib-synced", True)
    sock.setblocking(False)
    with pytest.raises(BlockingIOError):
        sock.recv(100)


def test_a_separate_process_reads_notify_socket_from_its_environment(receiver):
    """As systemd runs it: the variable in the environment of a fresh process, then unset."""
    path, sock = receiver
    script = textwrap.dedent(
        """
        import os
        from bgpd.sdnotify import Notifier
        n = Notifier.from_env(unset=True)
        n.ready("child ready")
        print(os.environ.get("NOTIFY_SOCKET", "unset"), os.getpid())
        """
    )
    env = {**os.environ, "NOTIFY_SOCKET": path}
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.split()[0] == "unset"
    assert recv(sock) == {"READY": "1", "STATUS": "child ready"}
