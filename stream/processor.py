"""The processor: a source driving the pipeline, with a periodic status line."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

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
        """Process until ``stop`` is set, then finish the batches in flight and checkpoint."""
        async with asyncio.TaskGroup() as group:
            reporter = group.create_task(self._report(stop))
            try:
                await self.source.run(self.pipeline, stop)
            finally:
                reporter.cancel()
        self.on_status("stopped: " + await self.stats.status_line())

    async def _report(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.status_interval_s):
                    await stop.wait()
            if not stop.is_set():
                self.on_status(await self.stats.status_line())
