"""Reading from peers paused while the routes already read wait too deep in our own queues.

A table that arrives faster than the kernel takes it would otherwise wait in the Loc-RIB's
dirty set and the FIB's queues: at 500k routes they held up to 400k of them, several tens of
MiB of peak RSS that a process keeps. Paused, the rest waits in the peer's TCP window instead,
as it does for BIRD, which reads no faster than it routes. The kernel writer still has
`resume_below` routes to go on with when reading starts again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

# Measured at 500k shared (time to FIB, peak RSS; 2 runs each): 96k/64k 4.0-4.5 s, 146-148 MiB;
# 64k/32k 3.9-4.0 s, 140-144 MiB; 48k/24k 4.3-4.7 s, 139-142 MiB; none 4.6-5.1 s, 173-185 MiB.
PAUSE_ABOVE = 64_000
RESUME_BELOW = 32_000
# Never longer than this unread at once: a paused peer's KEEPALIVEs wait behind its routes,
# and the hold timer is 3 s at the least.
MAX_PAUSE = 1.0
POLL = 0.01


class Readable(Protocol):
    """What is paused: an asyncio transport."""

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...


class ReadThrottle:
    """Pauses the transports of a reader when `backlog()` is above `pause_above` after a read,
    and resumes them once it is below `resume_below`, or after `max_pause` seconds."""

    def __init__(
        self,
        backlog: Callable[[], int],
        *,
        pause_above: int = PAUSE_ABOVE,
        resume_below: int = RESUME_BELOW,
        max_pause: float = MAX_PAUSE,
        poll: float = POLL,
    ) -> None:
        self.backlog = backlog
        self.pause_above = pause_above
        self.resume_below = resume_below
        self.max_pause = max_pause
        self.poll = poll
        # reader key -> (its transports, loop time of the pause)
        self._paused: dict[str, tuple[list[Readable], float]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self.pauses = 0  # times a reader was paused

    def paused(self) -> list[str]:
        return list(self._paused)

    def after_read(self, key: str, transports: list[Readable]) -> bool:
        """Called once a read was handled; True if this call paused `key`."""
        if key in self._paused or self.backlog() <= self.pause_above or not transports:
            return False
        for t in transports:
            t.pause_reading()
        loop = asyncio.get_running_loop()
        self._paused[key] = (transports, loop.time())
        self.pauses += 1
        if self._timer is None:
            self._timer = loop.call_later(self.poll, self._check)
        return True

    def _check(self) -> None:
        self._timer = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        drained = self.backlog() < self.resume_below
        for key, (transports, since) in list(self._paused.items()):
            if drained or now - since >= self.max_pause:
                self._resume(key, transports)
        if self._paused:
            self._timer = loop.call_later(self.poll, self._check)

    def _resume(self, key: str, transports: list[Readable]) -> None:
        del self._paused[key]
        for t in transports:
            t.resume_reading()

    def release(self) -> None:
        """Resume every reader and stop polling (the daemon stops)."""
        for key, (transports, _) in list(self._paused.items()):
            self._resume(key, transports)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
