"""Replaying the embedded log: a time range found by its enqueued-time index.

Reads beside a running processor (SQLite WAL readers never block its writer) and never
touches the log's checkpoints: positions are the replay job's.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from datetime import timedelta
from pathlib import Path
from types import TracebackType

from stream.exceptions import ReplayError
from stream.ports import ReceivedEvent
from stream.replay.ports import PartitionPlan, Window
from stream.sources.local_log import SOURCE_NAME, LocalLog


class LogReader:
    source = SOURCE_NAME

    def __init__(self, path: Path, partitions: int) -> None:
        self.path = path
        self.partitions = partitions
        self._log: LocalLog | None = None
        self.unreadable: dict[str, str] = {}

    async def __aenter__(self) -> LogReader:
        if not self.path.exists():
            raise ReplayError(f"no embedded event log at {self.path}: nothing to replay")
        self._log = LocalLog(self.path, self.partitions)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._log is not None:
            await self._log.aclose()

    @property
    def log(self) -> LocalLog:
        if self._log is None:
            raise ReplayError("LogReader used outside 'async with'")
        return self._log

    async def plan(self, window: Window, max_future_skew: timedelta) -> list[PartitionPlan]:
        plans = []
        for partition in range(self.partitions):
            first, last = await self.log.sequences_between_async(
                partition, window.enqueued_from(max_future_skew), window.enqueued_before()
            )
            if first is not None and last is not None:
                plans.append(PartitionPlan(str(partition), first - 1, last))
        return plans

    async def read(
        self, plan: PartitionPlan, after: int, batch_size: int
    ) -> AsyncGenerator[list[ReceivedEvent]]:
        partition, log, last = int(plan.partition), self.log, plan.last
        if after >= last:
            return

        def read_after(position: int) -> asyncio.Future[list[ReceivedEvent]]:
            return asyncio.ensure_future(
                log.read_ahead(partition, position, min(batch_size, last - position))
            )

        # The next batch is read on the log's thread while the pipeline handles this one.
        ahead = read_after(after)
        try:
            while True:
                events = await ahead
                if not events:
                    return  # the rest was removed by retention since the plan was made
                after = events[-1].sequence
                if after < last:
                    ahead = read_after(after)
                yield events
                if after >= last:
                    return
        finally:
            ahead.cancel()
            if ahead.done() and not ahead.cancelled():
                ahead.exception()  # retrieved: the reader was left early, nobody awaits it
