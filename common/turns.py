"""Turns of the event loop for loops whose awaits need not wait.

A partition catching up reads and stores batch after batch; on free SQLite files those calls
finish without waiting, so the task never gives the loop back and everything else in the
process waits until it has caught up: a Ctrl-C, a supervisor's messages, the other partitions
(Ctrl-C took 6-10 s to stop a 200,000-event catch-up). A turn after every batch would
interleave the partitions batch by batch, for no gain measured; one every ``TURN_S`` bounds
the wait instead.
"""

from __future__ import annotations

import asyncio

# Longest such a loop keeps the event loop: ~2,000 events' work.
TURN_S = 0.1


class Turns:
    """``await turns.take()`` after each step: gives the loop a turn once ``every_s`` has
    passed since the last one."""

    def __init__(self, every_s: float | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        self._every_s = TURN_S if every_s is None else every_s
        self._next = self._loop.time() + self._every_s

    async def take(self) -> None:
        if self._loop.time() >= self._next:
            await asyncio.sleep(0)
            self._next = self._loop.time() + self._every_s
