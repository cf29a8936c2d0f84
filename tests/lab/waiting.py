"""Polling helper shared by the lab: wait for a condition with a deadline and a clear error."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class LabTimeout(AssertionError):
    """A lab condition did not become true in time (an AssertionError so pytest shows it)."""


def wait_for(
    probe: Callable[[], T | None],
    *,
    timeout: float,
    what: str,
    interval: float = 0.2,
    describe: Callable[[], str] | None = None,
) -> T:
    """Call ``probe`` until it returns a truthy value, and return that value.

    On timeout raise LabTimeout naming ``what``, plus ``describe()`` (e.g. a daemon's log
    tail) so a failing test says why rather than just "timed out".
    """
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while True:
        try:
            value = probe()
            if value:
                return value
        except Exception as exc:  # a CLI may fail while its daemon is still starting
            last_exc = exc
        if time.monotonic() >= deadline:
            break
        time.sleep(interval)
    msg = f"timed out after {timeout:.1f}s waiting for {what}"
    if last_exc is not None:
        msg += f"\nlast error: {last_exc!r}"
    if describe is not None:
        try:
            msg += "\n" + describe()
        except Exception as exc:
            msg += f"\n(describe failed: {exc!r})"
    raise LabTimeout(msg)
