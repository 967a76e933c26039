"""Ingest's admission against the processor's backlog: at once under the limit; past it paced
at the processor's rate, held while that is unknown or from twice the limit, refused when a
post cannot go within the hold (at once without one)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from stream.ports import Backlog as Position
from stream.producers.admission import Admission


class Backlog:
    """A backlog figure the test moves, the processor storing ``rate`` events/s meanwhile;
    counts its readings."""

    def __init__(self, events: int, rate: float = 0.0) -> None:
        self.events = events
        self.rate = rate
        self.started = time.monotonic()
        self.readings = 0
        self.read = asyncio.Event()

    async def __call__(self) -> Position:
        self.readings += 1
        self.read.set()
        return Position(self.events, int((time.monotonic() - self.started) * self.rate))


async def test_under_the_limit_a_post_goes_ahead_at_once() -> None:
    backlog = Backlog(100)
    admission = Admission(backlog, limit=250, hold_s=5.0)
    started = time.monotonic()
    assert await admission.admit() is None
    assert time.monotonic() - started < 1.0


async def test_without_a_hold_a_post_past_the_limit_is_refused_at_once() -> None:
    backlog = Backlog(300)
    admission = Admission(backlog, limit=250, hold_s=0.0)
    assert await admission.admit() == 300
    assert backlog.readings == 1


async def test_a_held_post_goes_ahead_once_the_processor_works_the_backlog_down() -> None:
    backlog = Backlog(300)
    admission = Admission(backlog, limit=250, hold_s=30.0, hold_poll_s=0.01)
    held = asyncio.create_task(admission.admit())
    await backlog.read.wait()
    backlog.read.clear()
    await backlog.read.wait()  # read again while holding: still past the limit
    assert not held.done()
    backlog.events = 200
    assert await asyncio.wait_for(held, 10) is None


async def test_a_post_still_past_the_limit_after_the_hold_is_refused() -> None:
    backlog = Backlog(300)
    admission = Admission(backlog, limit=250, hold_s=0.2, hold_poll_s=0.05)
    started = time.monotonic()
    assert await admission.admit() == 300
    assert time.monotonic() - started >= 0.2
    assert backlog.readings >= 3  # read again while held, not only once


async def test_what_this_process_appended_counts_until_the_next_reading() -> None:
    backlog = Backlog(200)
    admission = Admission(backlog, limit=250, refresh_s=60.0, hold_s=0.0)
    assert await admission.admit() is None
    admission.appended(100)
    assert await admission.admit() == 300
    assert backlog.readings == 1


async def test_held_posts_go_ahead_in_the_order_they_came() -> None:
    """Even a post that comes once the backlog has fallen (and reads it at once) goes after
    the posts held before it."""
    backlog = Backlog(300)
    admission = Admission(backlog, limit=250, refresh_s=0.0, hold_s=30.0, hold_poll_s=0.01)
    order: list[str] = []

    async def post(name: str) -> None:
        assert await admission.admit() is None
        order.append(name)
        admission.appended(10)  # each post's events count until the next reading

    held = [asyncio.create_task(post(name)) for name in "ab"]
    await asyncio.sleep(0)  # one turn of the loop: both reach their hold
    assert backlog.readings >= 1 and not order
    backlog.events = 200
    late = asyncio.create_task(post("c"))
    await asyncio.wait_for(asyncio.gather(*held, late), 10)
    assert order == ["a", "b", "c"]


async def test_past_the_limit_posts_are_paced_at_the_processors_rate() -> None:
    """Halfway to twice the limit, this process may send half the processor's rate: 100-event
    posts at 10,000 events/s stored go one every 20 ms (25 in ~0.5 s), none refused."""
    backlog = Backlog(375, rate=10_000)
    admission = Admission(backlog, limit=250, hold_s=5.0, hold_poll_s=0.005)
    started = time.monotonic()
    for _ in range(25):
        assert await admission.admit() is None
        admission.appended(100)
        backlog.events = 375  # the processor keeps the figure where it was
    took = time.monotonic() - started
    assert 0.3 <= took <= 1.5, took
    assert 4_000 <= admission.rate <= 16_000, admission.rate


async def test_from_twice_the_limit_posts_wait_for_the_backlog_to_fall() -> None:
    backlog = Backlog(500, rate=10_000)
    admission = Admission(backlog, limit=250, hold_s=30.0, hold_poll_s=0.005)
    held = asyncio.create_task(admission.admit())
    await until(lambda: backlog.readings >= 5)  # the rate is known by now, still held
    assert not held.done()
    backlog.events = 400
    assert await asyncio.wait_for(held, 10) is None


async def until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.005)
