"""Ingest's pushback on the embedded backend: how fast posts may go ahead while the processor
is behind, from the log's backlog figure.

Up to ``limit`` events waiting, a post goes ahead at once. Past it, posts are paced: they go
one after another, spaced so that this process sends events at the processor's own rate (what
it has stored per second, smoothed over RATE_WINDOW_S), times a share that falls from 1 at the
limit to 0 at twice the limit. A producer posting back to back thereby gets its answers at the
processor's pace, a little later each, instead of a refusal while the processor runs dry or
answers that wait for the processor's next batch (it stores batches, so its figure falls in
steps: holding posts until the figure fell under the limit made their waits as uneven as
those steps). With several ingest processes each takes the share that keeps the backlog
between the limit and twice it. From twice the limit, or before the rate is known, posts wait
for the backlog to fall. A post that cannot go within ``hold_s`` is refused (503).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable

from stream.ports import Backlog

# How old a backlog figure may be: posts between two readings share one query.
BACKLOG_REFRESH_S = 0.2
# How often a held post's backlog is read again (the held posts of a process share one read).
BACKLOG_HOLD_POLL_S = 0.01
# The processor's rate is smoothed over about this long: its figure moves by whole batches.
RATE_WINDOW_S = 1.0


class Admission:
    """Whether and when a post may go ahead, by ``backlog()`` (read at most every
    ``refresh_s``, every ``hold_poll_s`` while a post is held) against ``limit``. Between two
    readings the events this process appended count too. ``hold_s`` 0: no pacing, a post past
    the limit is refused at once."""

    def __init__(
        self,
        backlog: Callable[[], Awaitable[Backlog]],
        limit: int,
        refresh_s: float = BACKLOG_REFRESH_S,
        hold_s: float = 0.0,
        hold_poll_s: float = BACKLOG_HOLD_POLL_S,
    ) -> None:
        self.backlog = backlog
        self.limit = limit
        self.refresh_s = refresh_s
        self.hold_s = hold_s
        self.hold_poll_s = hold_poll_s
        # Events/s the processor stores, smoothed (0 until two readings have been made).
        self.rate = 0.0
        self._waiting = 0
        self._read_at = float("-inf")
        self._done: tuple[float, int] | None = None  # (when, done) at the last reading
        self._next_at = float("-inf")  # when the next paced post may go
        # Held posts take turns: the first to come reads the backlog until it may go ahead.
        self._held = asyncio.Lock()

    async def admit(self) -> int | None:
        """None when the post may go ahead (after waiting up to ``hold_s``), else the backlog
        that refuses it. Held posts go ahead in the order they came, and a post that comes
        while others are held waits behind them."""
        if self.hold_s <= 0 or not self._held.locked():
            await self._read(self.refresh_s)
            if self.hold_s <= 0:
                return self._waiting if self._waiting > self.limit else None
            if self._may_go():
                return None
        try:
            async with asyncio.timeout(self.hold_s), self._held:
                while True:
                    await self._read(self.hold_poll_s)
                    if self._may_go():
                        return None
                    await asyncio.sleep(self._pause_s())
        except TimeoutError:
            return None if self._may_go() else self._waiting

    def appended(self, events: int) -> None:
        """This process appended ``events``: they count, and space the next paced post."""
        pace = self._pace()  # the pace the post went at, before its own events count
        self._waiting += events
        if 0 < pace < math.inf:
            self._next_at = max(self._next_at, time.monotonic()) + events / pace

    async def _read(self, max_age_s: float) -> None:
        now = time.monotonic()
        if now - self._read_at < max_age_s:
            return
        self._read_at = now  # posts arriving meanwhile go by the last figure
        position = await self.backlog()
        self._waiting = position.waiting
        if self._done is not None and now > self._done[0]:
            then, done = self._done
            measured = max(0.0, (position.done - done) / (now - then))
            weight = 1.0 if self.rate == 0 else min(1.0, (now - then) / RATE_WINDOW_S)
            self.rate += weight * (measured - self.rate)
        self._done = (now, position.done)

    def _pace(self) -> float:
        """Events/s this process may send now: any under the limit, none from twice it."""
        if self._waiting <= self.limit:
            return math.inf
        share = (2 * self.limit - self._waiting) / self.limit
        return self.rate * share if share > 0 else 0.0

    def _may_go(self) -> bool:
        pace = self._pace()
        return pace == math.inf or (pace > 0 and time.monotonic() >= self._next_at)

    def _pause_s(self) -> float:
        if self._pace() > 0:
            return max(0.001, min(self.hold_poll_s, self._next_at - time.monotonic()))
        return self.hold_poll_s
