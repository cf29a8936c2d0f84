"""The daemon's Unix control socket: one JSON request per line in, one JSON reply per line out."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger("routemesh.control")
MAX_REQUEST = 1 << 16


class ControlError(RuntimeError):
    """The daemon could not be asked: not running, or it answered with an error."""


class ControlServer:
    """Serves requests from `routemesh bgp …` on a Unix socket only root can reach."""

    def __init__(self, path: str, handler: Callable[[dict[str, Any]], Any]) -> None:
        self.path = path
        self.handler = handler
        self.server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        if os.path.exists(self.path):
            # A socket left by a crashed daemon would make bind fail; a live one answers.
            if _alive(self.path):
                raise OSError(98, f"another daemon is serving {self.path}")
            os.unlink(self.path)
        self.server = await asyncio.start_unix_server(self._serve, path=self.path)
        os.chmod(self.path, 0o660)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await reader.readline()
            if len(line) > MAX_REQUEST:
                raise ValueError("request too long")
            request = json.loads(line or b"{}")
            if not isinstance(request, dict):
                raise ValueError("request must be a JSON object")
            reply = {"ok": True, "result": self.handler(request)}
        except (ValueError, KeyError) as err:
            reply = {"ok": False, "error": str(err)}
        try:
            writer.write(json.dumps(reply).encode() + b"\n")
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
        try:
            os.unlink(self.path)
        except OSError:
            pass


def _alive(path: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        try:
            s.connect(path)
        except OSError:
            return False
    return True


def request(path: str, cmd: str, timeout: float = 10.0, **args: Any) -> Any:
    """Ask a running daemon; raises ControlError with a one-line reason on any failure."""
    payload = json.dumps({"cmd": cmd, **args}).encode() + b"\n"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect(path)
        except (FileNotFoundError, ConnectionRefusedError):
            raise ControlError(f"bgpd is not running (no daemon on {path})") from None
        except OSError as err:
            raise ControlError(f"cannot reach bgpd on {path}: {err.strerror}") from None
        s.sendall(payload)
        chunks = []
        while True:
            chunk = s.recv(1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
    try:
        reply = json.loads(b"".join(chunks))
    except ValueError:
        raise ControlError(f"bgpd on {path} sent an unreadable reply") from None
    if not reply.get("ok"):
        raise ControlError(f"bgpd refused: {reply.get('error')}")
    return reply["result"]
