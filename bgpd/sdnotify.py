"""systemd's sd_notify protocol without libsystemd: READY=1, STATUS=, STOPPING=1, WATCHDOG=1.

systemd (Type=notify) passes a unix datagram socket in NOTIFY_SOCKET, a path or an abstract
name written with a leading `@`. Without NOTIFY_SOCKET (run by hand, in a container) every call
is a quiet no-op, so daemons call it unconditionally. Wiring:

    notifier = Notifier.from_env()
    readiness.on_change(lambda ok: notifier.ready("routemesh node ready") if ok else None)
    watchdog = notifier.start_watchdog()       # a task when WatchdogSec= is set, else None
    ...
    notifier.stopping()                        # first thing on SIGTERM
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger("routemesh.sdnotify")


def _address(value: str) -> str | None:
    if value.startswith("@"):
        # Linux abstract namespace: the name starts with a NUL byte instead of '@'.
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    # vsock: and other forms are for VMs and containers managers we do not run under.
    return None


class Notifier:
    """Sends state lines to the service manager, if there is one."""

    def __init__(self, socket_path: str | None, watchdog_usec: int | None = None) -> None:
        self.socket_path = socket_path
        self.watchdog_usec = watchdog_usec
        self.last_sent: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, *, unset: bool = False) -> Notifier:
        """Read NOTIFY_SOCKET and WATCHDOG_USEC/WATCHDOG_PID (for this pid only).

        `unset=True` removes them from os.environ so child processes do not notify for us.
        """
        environ = os.environ if env is None else env
        path = environ.get("NOTIFY_SOCKET") or None
        usec: int | None = None
        pid = environ.get("WATCHDOG_PID")
        if environ.get("WATCHDOG_USEC") and (not pid or pid == str(os.getpid())):
            try:
                usec = int(environ["WATCHDOG_USEC"])
            except ValueError:
                log.warning("ignoring WATCHDOG_USEC=%r: not an integer", environ["WATCHDOG_USEC"])
            else:
                usec = usec if usec > 0 else None
        if unset and env is None:
            for key in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
                os.environ.pop(key, None)
        return cls(path, usec)

    @property
    def enabled(self) -> bool:
        return self.socket_path is not None

    def notify(self, **fields: str | int) -> bool:
        """Send `KEY=value` lines (`notify(READY=1, STATUS="...")`); True if delivered."""
        if self.socket_path is None:
            return False
        lines = []
        for key, value in fields.items():
            text = str(value)
            if "\n" in text:
                # One field per line is the protocol; a newline inside would forge another.
                text = text.replace("\n", " ")
            lines.append(f"{key}={text}")
        message = "\n".join(lines)
        address = _address(self.socket_path)
        if address is None:
            log.warning(
                "NOTIFY_SOCKET=%s is not a unix socket path; not notifying", self.socket_path
            )
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.connect(address)
                sock.sendall(message.encode())
        except OSError as err:
            # The service manager going away must never take the daemon down with it.
            log.warning("sd_notify to %s failed: %s", self.socket_path, err.strerror or err)
            return False
        self.last_sent = message
        return True

    def ready(self, status: str | None = None) -> bool:
        return self.notify(READY=1, **({"STATUS": status} if status else {}))

    def status(self, text: str) -> bool:
        return self.notify(STATUS=text)

    def stopping(self, status: str | None = None) -> bool:
        return self.notify(STOPPING=1, **({"STATUS": status} if status else {}))

    def reloading(self) -> bool:
        return self.notify(RELOADING=1)

    def watchdog(self) -> bool:
        return self.notify(WATCHDOG=1)

    def watchdog_interval(self) -> float | None:
        """Seconds between keep-alives: half of WatchdogSec=, as sd_watchdog_enabled advises."""
        if self.watchdog_usec is None or not self.enabled:
            return None
        return self.watchdog_usec / 2_000_000

    def start_watchdog(self) -> asyncio.Task[None] | None:
        """Ping the watchdog from the event loop, so a stuck loop gets the service restarted."""
        interval = self.watchdog_interval()
        if interval is None:
            return None
        return asyncio.get_running_loop().create_task(self._watchdog_loop(interval))

    async def _watchdog_loop(self, interval: float) -> None:
        while True:
            self.watchdog()
            await asyncio.sleep(interval)
