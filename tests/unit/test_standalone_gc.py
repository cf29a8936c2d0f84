"""bgpd -f defers full garbage collections during the initial load, freezes what the load built,
and gives the collector its thresholds back afterwards (also when stopped before converging)."""

from __future__ import annotations

import asyncio
import gc
from types import SimpleNamespace

import pytest

from bgpd.standalone import LOAD_GEN2_THRESHOLD, after_convergence


@pytest.fixture
def collector():
    gc.unfreeze()  # nothing frozen by earlier tests in this process
    saved = gc.get_threshold()
    gc.set_threshold(700, 10, 10)
    yield
    gc.unfreeze()
    gc.set_threshold(*saved)


async def test_full_collections_wait_for_the_initial_load(collector):
    daemon = SimpleNamespace(converged=asyncio.Event())
    task = asyncio.create_task(after_convergence(daemon, None, None, True))  # type: ignore[arg-type]
    await asyncio.sleep(0)
    assert gc.get_threshold() == (700, 10, LOAD_GEN2_THRESHOLD)
    daemon.converged.set()
    await task
    assert gc.get_threshold() == (700, 10, 10)
    assert gc.get_freeze_count() > 0


async def test_thresholds_come_back_when_stopped_before_convergence(collector):
    daemon = SimpleNamespace(converged=asyncio.Event())
    task = asyncio.create_task(after_convergence(daemon, None, None, True))  # type: ignore[arg-type]
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert gc.get_threshold() == (700, 10, 10)


async def test_nothing_changes_without_freeze(collector):
    frozen = gc.get_freeze_count()
    daemon = SimpleNamespace(converged=asyncio.Event())
    task = asyncio.create_task(after_convergence(daemon, None, None, False))  # type: ignore[arg-type]
    await asyncio.sleep(0)
    assert gc.get_threshold() == (700, 10, 10)
    daemon.converged.set()
    await task
    assert gc.get_freeze_count() == frozen
