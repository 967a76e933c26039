"""One processing worker of ``evalstream process --workers N`` (embedded backend): the whole
pipeline (decode → validate → enrich → store → hot path → alerts → checkpoint) over the share of
the log's partitions that its supervisor (``evalstream.workers``) assigns, each batch's outcome
reported back for the status line, ``--until-idle``, readiness and the metrics.

Started by the supervisor as ``python -m evalstream.worker``; the settings, the logging set-up
and the partitions to own come over the pipe (``stream.sources.subprocess_channel``). It stops
gracefully (batches in flight finished, partitions checkpointed) when asked, on SIGTERM, or when
its supervisor is gone; interrupts from the terminal are the supervisor's to handle.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from common.errors import leaves
from evalstream import wiring
from evalstream.worker_pipe import finished, listen, run_worker, started
from schemas import Breach
from stream.exceptions import SourceUnavailable
from stream.memory import tuned_memory
from stream.ports import PartitionContext
from stream.processor import drive
from stream.sources.local_log_share import LocalLogShare
from stream.sources.subprocess_channel import Channel
from stream.stats import THIS_PROCESS, ProcessorStats

logger = logging.getLogger(__name__)

# How often the worker's event loop tells its supervisor it is alive: the supervisor kills a
# worker silent for ``embedded.worker_stall_s`` (evalstream.workers).
HEARTBEAT_S = 0.5


@dataclass
class _ReportingStats(ProcessorStats):
    """The worker's own stats, each change also sent to the supervisor, which adds them up."""

    channel: Channel | None = None

    def record_counts(
        self,
        partition_id: str,
        last_sequence: int,
        documents: int,
        quarantine_codes: Sequence[str],
        breaches: Sequence[Breach],
        seconds: float = 0.0,
        holder: int | None = THIS_PROCESS,
    ) -> None:
        super().record_counts(
            partition_id, last_sequence, documents, quarantine_codes, breaches, seconds, holder
        )
        self.tell(
            "batch",
            partition_id,
            last_sequence,
            documents,
            list(quarantine_codes),
            list(breaches),
            seconds,
            self.store_error,
            self.publish_error,
        )

    async def attach(
        self, context: PartitionContext, holder: int | None = THIS_PROCESS, covered: int = -1
    ) -> None:
        await super().attach(context, holder, covered)
        # Where this partition resumes (after the pipeline's check of lost writes or events),
        # when it was taken (the monotonic clock is the machine's, so the supervisor can order
        # what two workers report over their separate pipes), and what its snapshot covers
        # (events this worker does not count again).
        checkpointed = await context.checkpointed_sequence()
        # Without a checkpoint the source resumes after the snapshot.
        resumed = checkpointed if checkpointed is not None or covered < 0 else covered
        self.tell("attached", context.partition_id, resumed, time.monotonic(), covered)

    def detach(self, partition_id: str) -> None:
        super().detach(partition_id)
        self.tell("detached", partition_id)

    def checkpointed(self, partition_id: str, holder: int | None = THIS_PROCESS) -> None:
        super().checkpointed(partition_id, holder)
        self.tell("checkpointed", partition_id)

    def detected(self, seconds: float) -> None:
        super().detected(seconds)
        self.tell("detectors", seconds, 0)

    def detector_failed(self) -> None:
        super().detector_failed()
        self.tell("detectors", 0.0, 1)

    def store_failed(self, error: BaseException) -> None:
        super().store_failed(error)
        self.tell("failing", "store", self.store_error)

    def publish_failed(self, error: BaseException) -> None:
        super().publish_failed(error)
        self.tell("failing", "publish", self.publish_error)

    def alerts_lost(self, partition_id: str, which: str) -> None:
        super().alerts_lost(partition_id, which)
        self.tell("alerts lost", partition_id, which)

    def tell(self, *message: object) -> None:
        if self.channel is None or self.channel.broken:
            return
        try:
            self.channel.send(*message)
        except SourceUnavailable:
            logger.debug("not reported: the supervisor is gone")


async def _work(read_fd: int, write_fd: int) -> int:
    begun = await started(read_fd, write_fd)
    if begun is None:
        return 2
    channel, (settings,), stop = begun
    os.nice(settings.embedded.workers_nice)
    processor = settings.processor
    source = LocalLogShare(
        settings.embedded.log_path,
        settings.embedded.partitions,
        processor.consumer_group,
        processor.batch_size,
        processor.batch_wait_s,
        settings.embedded.partition_locks_path,
    )
    stats = _ReportingStats(channel=channel)

    def assign(message: tuple[Any, ...]) -> None:
        if message[0] == "assign":
            source.assign(message[1])

    listener = asyncio.create_task(listen(channel, stop, assign), name="supervisor-messages")
    heartbeat = asyncio.create_task(_beat(stats), name="heartbeat")
    error = None
    try:
        async with wiring.store(settings) as store, wiring.publisher(settings) as publisher:
            pipeline = wiring.pipeline(settings, store, stats, publisher)
            # Only now does the supervisor give this worker partitions: until here they are
            # processed by the other workers instead of waiting for this one's start.
            stats.tell("started")
            with tuned_memory():
                await drive(source, pipeline, stop)
            if pipeline.failure is not None:
                raise pipeline.failure
    except Exception as exc:  # the worker's supervision boundary: reported, then exit 1
        error = leaves(exc)[0]
    heartbeat.cancel()
    listener.cancel()
    trace = None if error is None else "".join(traceback.format_exception(error)).rstrip()
    # The supervisor logs a worker's failures: a crash loop's once per cause, not every restart.
    return await finished(channel, error, trace, unsent=logger)


async def _beat(stats: _ReportingStats) -> None:
    """Tell the supervisor, every HEARTBEAT_S, that this event loop turns."""
    while True:
        stats.tell("alive")
        await asyncio.sleep(HEARTBEAT_S)


def main() -> None:
    run_worker(_work)


if __name__ == "__main__":
    main()
