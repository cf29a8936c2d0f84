"""A real single-member etcd for tests: free loopback ports, a temp data dir, start/stop/restart
that keep ports and data, and an optional TLS mode with a CA and client certificate made by
`openssl` for this server only.

Use the ``etcd_server`` / ``etcd_tls_server`` fixtures (tests/conftest.py), or ``EtcdServer``
directly for several members of your own.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import weakref
from dataclasses import dataclass
from pathlib import Path

from tests.lab.require import require_binary
from tests.lab.waiting import LabTimeout

_READY = "ready to serve client requests"
# Servers still running when the interpreter exits (an interrupted run) are stopped then.
_RUNNING: weakref.WeakSet[EtcdServer] = weakref.WeakSet()


@atexit.register
def _stop_all() -> None:
    for server in list(_RUNNING):
        server.stop()


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class TlsFiles:
    """Paths of the PEM files a TLS etcd and its clients use."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _openssl(*args: str, cwd: Path) -> None:
    res = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed: {res.stderr.strip()[-400:]}")


def make_tls_files(directory: Path) -> TlsFiles:
    """A throwaway CA plus a server cert for 127.0.0.1/localhost and a client cert, all EC P-256."""
    require_binary("openssl")
    d = directory
    d.mkdir(parents=True, exist_ok=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl(
        "req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
        "-subj", "/CN=routemesh-test-ca", cwd=d,
    )  # fmt: skip
    for name, ext in (
        ("server", "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth"),
        ("client", "extendedKeyUsage=clientAuth"),
    ):
        (d / f"{name}.ext").write_text(ext + "\n")
        _openssl(
            "req", "-new", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr",
            "-subj", f"/CN=routemesh-test-{name}", cwd=d,
        )  # fmt: skip
        _openssl(
            "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext",
            cwd=d,
        )  # fmt: skip
    return TlsFiles(
        ca=d / "ca.pem",
        server_cert=d / "server.pem",
        server_key=d / "server.key",
        client_cert=d / "client.pem",
        client_key=d / "client.key",
    )


class EtcdServer:
    """One etcd member on 127.0.0.1 (or ``host`` inside ``netns``, for clusters of namespaces).
    Ports and data survive ``restart``/``stop``+``start``."""

    def __init__(
        self,
        *,
        tls: bool = False,
        workdir: Path | None = None,
        host: str = "127.0.0.1",
        netns: str | None = None,
    ) -> None:
        self.binary = require_binary("etcd")
        self.host = host
        self.netns = netns
        self._own_dir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix=f"rm-etcd-{os.getpid()}-"))
        self.data_dir = self.workdir / "data"
        self.log_path = self.workdir / "etcd.log"
        self.client_port = free_port()
        self.peer_port = free_port()
        self.tls: TlsFiles | None = make_tls_files(self.workdir / "tls") if tls else None
        self.proc: subprocess.Popen[bytes] | None = None
        self.name = f"rm{os.getpid()}"

    # --- addresses ------------------------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        """host:port of the client listener."""
        return f"{self.host}:{self.client_port}"

    @property
    def url(self) -> str:
        """A routemesh datastore URL for this server (bgpd/datastore/url.py syntax)."""
        if self.tls is None:
            return f"etcd://{self.endpoint}"
        t = self.tls
        return f"etcds://{self.endpoint}?cacert={t.ca}&cert={t.client_cert}&key={t.client_key}"

    # --- lifecycle ------------------------------------------------------------------------------

    def _argv(self) -> list[str]:
        scheme = "https" if self.tls else "http"
        client = f"{scheme}://{self.endpoint}"
        peer = f"http://{self.host}:{self.peer_port}"
        argv = [
            self.binary,
            "--name", self.name,
            "--data-dir", str(self.data_dir),
            "--listen-client-urls", client,
            "--advertise-client-urls", client,
            "--listen-peer-urls", peer,
            "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"{self.name}={peer}",
            "--initial-cluster-state", "new",
            "--initial-cluster-token", self.name,
            # Small and quick: tests write little, and a restart must not wait on elections.
            "--heartbeat-interval", "50",
            "--election-timeout", "500",
            "--quota-backend-bytes", str(256 * 1024 * 1024),
        ]  # fmt: skip
        if self.tls:
            argv += [
                "--cert-file", str(self.tls.server_cert),
                "--key-file", str(self.tls.server_key),
                "--trusted-ca-file", str(self.tls.ca),
                "--client-cert-auth",
            ]  # fmt: skip
        return argv

    def start(self, timeout: float = 30.0) -> None:
        """Start etcd and wait until it serves clients."""
        if self.proc is not None:
            raise RuntimeError("etcd already running")
        with open(self.log_path, "ab") as log:
            offset = log.tell()
            argv = self._argv()
            if self.netns is not None:
                argv = ["ip", "netns", "exec", self.netns, *argv]
            self.proc = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        _RUNNING.add(self)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log_path.read_bytes()[offset:].decode(errors="replace")
            if _READY in text:
                return
            if self.proc.poll() is not None:
                self.proc = None
                raise LabTimeout(f"etcd exited at start:\n{self.log_tail()}")
            time.sleep(0.05)
        self.stop()
        raise LabTimeout(f"etcd not ready after {timeout:.0f}s:\n{self.log_tail()}")

    def stop(self) -> None:
        """Stop etcd (SIGTERM, then SIGKILL), keeping its data for a later ``start``."""
        proc, self.proc = self.proc, None
        _RUNNING.discard(self)
        if proc is None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop and remove the data dir (if we made it)."""
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no etcd log)"
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> EtcdServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
