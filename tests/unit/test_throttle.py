"""ReadThrottle: a reader is paused after a read that leaves the backlog too deep, resumed
once it drains or after max_pause whatever the backlog (the hold timer), and on release."""

from __future__ import annotations

import asyncio

from bgpd.throttle import ReadThrottle


class Transport:
    def __init__(self) -> None:
        self.reading = True
        self.calls: list[str] = []

    def pause_reading(self) -> None:
        self.reading = False
        self.calls.append("pause")

    def resume_reading(self) -> None:
        self.reading = True
        self.calls.append("resume")


async def test_paused_above_the_mark_and_resumed_once_drained_below_the_other() -> None:
    depth = [100]
    th = ReadThrottle(lambda: depth[0], pause_above=100, resume_below=50, poll=0.001)
    t = Transport()
    assert not th.after_read("a", [t]) and t.reading  # at the mark: not above it
    depth[0] = 101
    assert th.after_read("a", [t]) and not t.reading and th.paused() == ["a"]
    assert not th.after_read("a", [t]) and t.calls == ["pause"]  # paused once, not twice
    depth[0] = 60  # below the pause mark, not yet below the resume mark: stays paused
    await asyncio.sleep(0.02)
    assert not t.reading
    depth[0] = 49
    await asyncio.sleep(0.02)
    assert t.reading and th.paused() == [] and t.calls == ["pause", "resume"]
    assert th.pauses == 1


async def test_a_reader_is_never_kept_unread_longer_than_max_pause() -> None:
    th = ReadThrottle(lambda: 10**6, pause_above=1, resume_below=1, max_pause=0.03, poll=0.005)
    t1, t2 = Transport(), Transport()
    assert th.after_read("a", [t1, t2])
    await asyncio.sleep(0.01)
    assert not t1.reading and not t2.reading
    await asyncio.sleep(0.06)
    assert t1.reading and t2.reading and th.paused() == []
    # The backlog is still deep: the next read pauses it again, after that read was handled.
    assert th.after_read("a", [t1, t2]) and not t1.reading


async def test_release_resumes_everyone_and_stops_polling() -> None:
    th = ReadThrottle(lambda: 5, pause_above=1, resume_below=1, poll=0.001)
    ts = {k: Transport() for k in "abc"}
    for k, t in ts.items():
        th.after_read(k, [t])
    assert sorted(th.paused()) == ["a", "b", "c"]
    th.release()
    assert all(t.reading for t in ts.values()) and th.paused() == []
    await asyncio.sleep(0.01)
    assert all(t.calls == ["pause", "resume"] for t in ts.values())


async def test_a_reader_without_a_connection_is_not_paused() -> None:
    th = ReadThrottle(lambda: 5, pause_above=1, resume_below=1)
    assert not th.after_read("a", []) and th.paused() == []
