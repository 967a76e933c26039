"""The waits the retry loops and supervisors share (common.retry): for any of several events,
bounded by a timeout."""

from __future__ import annotations

import asyncio
import time

from common.retry import until_set


async def test_until_set_returns_at_the_first_event_set_and_leaves_no_wait_behind() -> None:
    first, second = asyncio.Event(), asyncio.Event()
    asyncio.get_running_loop().call_later(0.05, second.set)
    started = time.monotonic()
    await until_set(first, second, timeout=30.0)
    assert second.is_set() and not first.is_set()
    assert time.monotonic() - started < 5.0
    others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    assert all(t.done() or t.cancelling() for t in others)


async def test_until_set_returns_after_the_timeout_when_no_event_is_set() -> None:
    event = asyncio.Event()
    started = time.monotonic()
    await until_set(event, timeout=0.1)
    assert not event.is_set()
    assert time.monotonic() - started >= 0.1
