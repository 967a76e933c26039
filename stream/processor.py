"""The processor: a source driving the pipeline, with a periodic status line."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from stream.memory import tuned_memory
from stream.pipeline import Pipeline
from stream.ports import EventSource
from stream.stats import ProcessorStats

logger = logging.getLogger(__name__)


class Processor:
    def __init__(
        self,
        source: EventSource,
        pipeline: Pipeline,
        stats: ProcessorStats,
        status_interval_s: float,
        on_status: Callable[[str], None] | None = None,
    ) -> None:
        self.source = source
        self.pipeline = pipeline
        self.stats = stats
        self.status_interval_s = status_interval_s
        self.on_status = on_status or (lambda line: logger.info(line))

    async def run(self, stop: asyncio.Event) -> None:
        """Process until ``stop`` is set, then finish the batches in flight and checkpoint.

        A failure of the pipeline that no retry mends (the store set up wrongly, e.g. a
        container deleted) sets ``stop`` as well: the source stops retrying, partitions close
        with what was durably written checkpointed, and the failure is raised here."""
        with tuned_memory():
            async with asyncio.TaskGroup() as group:
                reporter = group.create_task(
                    report_status(
                        self.stats.status_line, self.status_interval_s, self.on_status, stop
                    )
                )
                try:
                    await drive(self.source, self.pipeline, stop)
                finally:
                    reporter.cancel()
        self.on_status("stopped: " + await self.stats.status_line())
        if self.pipeline.failure is not None:
            raise self.pipeline.failure


async def drive(source: EventSource, pipeline: Pipeline, stop: asyncio.Event) -> None:
    """Run ``source`` through ``pipeline`` until ``stop``, which the pipeline giving up sets
    too (its ``failure``, raised by the caller once the partitions are closed): delivery
    abandons a batch that fails so, and without the stop the source would go on without it."""
    async with pipeline.stopping_on_failure(stop):
        await source.run(pipeline, stop)


async def report_status(
    line: Callable[[], Awaitable[str]],
    interval_s: float,
    on_status: Callable[[str], None],
    stop: asyncio.Event,
) -> None:
    """Say ``line()`` every ``interval_s`` until ``stop``."""
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(interval_s):
                await stop.wait()
        if not stop.is_set():
            on_status(await line())
