"""``process --until-idle S``: stop S seconds after the last batch, never while a backlog waits."""

from __future__ import annotations

import asyncio
import time

from evalstream.runtime import _stop_when_idle


class Stats:
    """What the waiter reads of ProcessorStats: the lag (each poll counted) and the time of
    the last batch."""

    def __init__(self, lag: int) -> None:
        self.lags = {"0": lag}
        self.last_batch_at: float | None = None
        self.polls = 0
        self.polled = asyncio.Event()

    async def lag(self) -> dict[str, int | None]:
        self.polls += 1
        self.polled.set()
        return dict(self.lags)

    async def next_poll(self) -> None:
        self.polled.clear()
        await self.polled.wait()


async def test_it_stops_idle_s_after_the_last_batch_not_a_poll_later() -> None:
    # 0.21 s: a waiter that only polled every 0.2 s would see the quiet time reach 0.2 s,
    # wait another 0.2 s and stop ~0.4 s after the batch.
    stats, stop = Stats(lag=500), asyncio.Event()
    waiter = asyncio.create_task(_stop_when_idle(stats, 0.21, stop))  # type: ignore[arg-type]
    await stats.next_poll()
    # The backlog is processed just after a poll saw it.
    stats.lags = {"0": 0}
    stats.last_batch_at = batch_at = time.monotonic()
    await asyncio.wait_for(waiter, timeout=5)
    stopped_after = time.monotonic() - batch_at
    assert stop.is_set()
    assert 0.21 <= stopped_after < 0.33


async def test_it_never_stops_while_a_partition_has_a_backlog() -> None:
    stats, stop = Stats(lag=3), asyncio.Event()
    waiter = asyncio.create_task(_stop_when_idle(stats, 0.05, stop))  # type: ignore[arg-type]
    started = time.monotonic()
    while stats.polls < 5:  # more than idle_s of polls
        await stats.next_poll()
    assert time.monotonic() - started > 0.05
    assert not stop.is_set()
    stats.lags = {"0": 0}
    stats.last_batch_at = time.monotonic()
    await asyncio.wait_for(waiter, timeout=5)
    assert stop.is_set()


async def test_it_never_stops_while_no_partition_is_owned() -> None:
    # A source not reached (its namespace or checkpoint store unreachable, retried) owns no
    # partition: that is not "caught up", and the run must end with the source's error.
    stats, stop = Stats(lag=0), asyncio.Event()
    stats.lags = {}
    waiter = asyncio.create_task(_stop_when_idle(stats, 0.05, stop))  # type: ignore[arg-type]
    started = time.monotonic()
    while stats.polls < 5:  # more than idle_s of polls
        assert not waiter.done() and not stop.is_set()
        await asyncio.wait_for(stats.next_poll(), timeout=2)
    assert time.monotonic() - started > 0.05
    assert not stop.is_set()
    stats.lags = {"0": 0}  # reached: a partition owned and caught up
    await asyncio.wait_for(waiter, timeout=5)
    assert stop.is_set()
