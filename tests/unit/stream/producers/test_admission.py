"""Ingest's admission against the processor's backlog: refused at once without a hold, held
until the backlog falls under the limit with one, refused when it does not within the hold."""

from __future__ import annotations

import asyncio
import time

from stream.producers.ingest import Admission


class Backlog:
    """A backlog figure the test moves; counts its readings."""

    def __init__(self, events: int) -> None:
        self.events = events
        self.readings = 0
        self.read = asyncio.Event()

    async def __call__(self) -> int:
        self.readings += 1
        self.read.set()
        return self.events


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
