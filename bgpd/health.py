"""Readiness conditions and the small asyncio HTTP server for `/metrics`, `/livez`, `/readyz`.

The server runs on the daemon's own event loop, so a scrape reads metrics on the same thread
that changes them, and an answer to `/livez` proves the loop is turning. Wiring:

    readiness = Readiness(["bgp-sessions", "fib-synced"])
    server = HealthServer(metrics, readiness, host="127.0.0.1", port=9091,
                          before_scrape=[daemon.export_metrics])
    await server.start()              # raises OSError if the port is taken
    readiness.set("bgp-sessions", True)  # when the condition is met (False again when lost)
    await server.close()

`/readyz` answers 200 only when every condition holds, else 503 naming the ones that do not
(`?verbose` lists all, like Kubernetes). Responses never contain configuration, so no secret
can leak through them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

from prometheus_client.exposition import choose_encoder

from bgpd.metrics import Metrics

log = logging.getLogger("routemesh.health")

DEFAULT_PORT = 9091  # Felix's Prometheus port, which operators already open in firewalls
READ_TIMEOUT = 10.0
MAX_HEADER_BYTES = 16 * 1024

# Conditions a node is expected to register; a dedicated reflector registers only the first.
BGP_SESSIONS = "bgp-sessions"
FIB_SYNCED = "fib-synced"
DATAPLANE_SYNCED = "dataplane-synced"


class Readiness:
    """Named conditions that must all be true for the daemon to be ready."""

    def __init__(self, conditions: Iterable[str]) -> None:
        self._state: dict[str, tuple[bool, str]] = {}
        for name in conditions:
            self.add(name)
        self._listeners: list[Callable[[bool], None]] = []
        self._was_ready = self.ready

    def add(self, name: str) -> None:
        """Register a condition, initially false."""
        if not name or any(c.isspace() for c in name):
            raise ValueError(f"condition name must be a non-empty word, not {name!r}")
        self._state.setdefault(name, (False, "not yet"))

    def set(self, name: str, ok: bool, detail: str = "") -> None:
        """Record whether `name` holds; `detail` appears in the verbose /readyz answer."""
        if name not in self._state:
            raise KeyError(f"unknown readiness condition {name!r}; known: {', '.join(self._state)}")
        self._state[name] = (ok, detail)
        now_ready = self.ready
        if now_ready != self._was_ready:
            self._was_ready = now_ready
            for listener in self._listeners:
                listener(now_ready)

    def on_change(self, listener: Callable[[bool], None]) -> None:
        """Call `listener(ready)` whenever overall readiness flips (e.g. to send READY=1)."""
        self._listeners.append(listener)

    @property
    def ready(self) -> bool:
        return bool(self._state) and all(ok for ok, _ in self._state.values())

    def failing(self) -> list[str]:
        return [name for name, (ok, _) in self._state.items() if not ok]

    def report(self, verbose: bool = False) -> str:
        """The /readyz body: one `[+]name ok` or `[-]name failed: detail` line per condition."""
        lines = []
        for name, (ok, detail) in self._state.items():
            if ok and not verbose:
                continue
            suffix = "ok" if ok else "failed" + (f": {detail}" if detail else "")
            lines.append(f"[{'+' if ok else '-'}]{name} {suffix}")
        lines.append("readyz check passed" if self.ready else "readyz check failed")
        return "\n".join(lines) + "\n"


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"


REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed"}
REASONS.update({500: "Internal Server Error", 503: "Service Unavailable"})


class HealthServer:
    """HTTP/1.1 (one request per connection) for Prometheus and health probes."""

    def __init__(
        self,
        metrics: Metrics | None,
        readiness: Readiness,
        *,
        host: str = "0.0.0.0",
        port: int = DEFAULT_PORT,
        before_scrape: Iterable[Callable[[], None]] = (),
    ) -> None:
        self.metrics = metrics
        self.readiness = readiness
        self.host, self.port = host, port
        self.before_scrape = list(before_scrape)
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._serve, self.host, self.port, limit=MAX_HEADER_BYTES
        )
        # Port 0 asks the kernel for a free port; report the real one.
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("metrics and health on http://%s:%d/metrics", self.host, self.port)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    # -- request handling ---------------------------------------------------------------------

    def handle(self, method: str, target: str, accept: str = "") -> Response:
        """Answer one request; pure apart from the scrape hooks, so tests can call it directly."""
        if method not in ("GET", "HEAD"):
            return Response(405, b"only GET and HEAD\n")
        url = urlsplit(target)
        query = parse_qs(url.query, keep_blank_values=True)
        if url.path == "/livez":
            return Response(200, b"ok\n")
        if url.path == "/readyz":
            body = self.readiness.report(verbose="verbose" in query).encode()
            return Response(200 if self.readiness.ready else 503, body)
        if url.path == "/metrics" and self.metrics is not None:
            for hook in self.before_scrape:
                try:
                    hook()
                except Exception:
                    # A broken exporter must not take the other metrics down with it.
                    log.exception("metrics hook %r failed", hook)
            encoder, content_type = choose_encoder(accept)
            return Response(200, encoder(self.metrics.registry), content_type)
        return Response(404, b"not found; try /metrics, /livez or /readyz\n")

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT)
            except asyncio.LimitOverrunError:
                await self._write(writer, Response(400, b"headers too large\n"), "GET")
                return
            except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
                return
            parsed = _parse_head(head)
            if parsed is None:
                await self._write(writer, Response(400, b"malformed request\n"), "GET")
                return
            method, target, headers = parsed
            try:
                response = self.handle(method, target, headers.get("accept", ""))
            except Exception:
                log.exception("error answering %s %s", method, target)
                response = Response(500, b"internal error\n")
            await self._write(writer, response, method)
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()

    @staticmethod
    async def _write(writer: asyncio.StreamWriter, resp: Response, method: str) -> None:
        head = (
            f"HTTP/1.1 {resp.status} {REASONS.get(resp.status, 'Unknown')}\r\n"
            f"Content-Type: {resp.content_type}\r\n"
            f"Content-Length: {len(resp.body)}\r\n"
            "Cache-Control: no-store\r\n"
            "Connection: close\r\n\r\n"
        ).encode()
        writer.write(head if method == "HEAD" else head + resp.body)
        with contextlib.suppress(ConnectionError):
            await writer.drain()


def _parse_head(head: bytes) -> tuple[str, str, dict[str, str]] | None:
    """Request line and headers (lower-cased names), or None when they are not HTTP/1.x."""
    try:
        text = head.decode("latin-1")
    except UnicodeDecodeError:
        return None
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1.") or not parts[1].startswith("/"):
        return None
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name.strip():
            return None
        headers[name.strip().lower()] = value.strip()
    return parts[0], parts[1], headers
