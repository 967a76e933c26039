"""Replaying the embedded log: a time range found by its enqueued-time index.

Reads beside a running processor (SQLite WAL readers never block its writer) and never
touches the log's checkpoints: positions are the replay job's.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from datetime import timedelta
from pathlib import Path
from types import TracebackType

from stream.exceptions import ReplayError
from stream.ports import ReceivedEvent
from stream.replay.ports import PartitionPlan, Window
from stream.sources.local_log import NEWEST, SOURCE_NAME, LocalLog


class LogReader:
    source = SOURCE_NAME
    preceded_in_store = False
    unit = "events"
    detects_by_partition = True
    enqueued_times = True

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
        partition = int(plan.partition)
        while after < plan.last:
            events = await self.log.read_async(partition, after, min(batch_size, plan.last - after))
            if not events:
                return  # the rest was removed by retention since the plan was made
            yield events
            after = events[-1].sequence

    async def preceding(
        self, plan: PartitionPlan, batch_size: int
    ) -> AsyncGenerator[list[ReceivedEvent]]:
        # What retention left of them: the events it removed were enqueued before all these.
        partition, below = int(plan.partition), NEWEST
        while True:
            events, below = await self.log.read_newest_first_async(
                partition, plan.after, below, batch_size
            )
            if not events:
                return
            yield events
