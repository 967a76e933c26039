"""The waits the retry loops and supervisors share (common.retry): for any of several events,
bounded by a timeout; for a future or a stop."""

from __future__ import annotations

import asyncio
import time

from common.retry import until_first


def _no_wait_left_behind() -> bool:
    others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    return all(t.done() or t.cancelling() for t in others)


async def test_until_first_returns_at_the_first_event_set_and_leaves_no_wait_behind() -> None:
    first, second = asyncio.Event(), asyncio.Event()
    asyncio.get_running_loop().call_later(0.05, second.set)
    started = time.monotonic()
    await until_first(first, second, timeout=30.0)
    assert second.is_set() and not first.is_set()
    assert time.monotonic() - started < 5.0
    assert _no_wait_left_behind()


async def test_until_first_returns_after_the_timeout_when_no_event_is_set() -> None:
    event = asyncio.Event()
    started = time.monotonic()
    await until_first(event, timeout=0.1)
    assert not event.is_set()
    assert time.monotonic() - started >= 0.1


async def test_until_first_returns_at_the_stop_and_leaves_the_future_running() -> None:
    stop = asyncio.Event()
    work = asyncio.ensure_future(asyncio.Event().wait())
    asyncio.get_running_loop().call_later(0.05, stop.set)
    await until_first(work, stop)
    assert stop.is_set() and not work.done()
    work.cancel()
    assert _no_wait_left_behind()


async def test_until_first_returns_when_the_future_is_done_first() -> None:
    stop = asyncio.Event()
    work = asyncio.ensure_future(asyncio.sleep(0.05, result="done"))
    await until_first(work, stop)
    assert work.result() == "done" and not stop.is_set()
    assert _no_wait_left_behind()
