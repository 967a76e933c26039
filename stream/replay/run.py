"""Driving the live pipeline over a replay's readers.

The pipeline is the live one (decode → validate → enrich → upsert, the same ids); only what
it is handed differs: a selection that keeps the window's events (RangeSelection), a store that
keeps snapshots and counts in the job (JobStore), and per partition a context whose
checkpoints are the job's (JobContext) — never the live processor's.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import time
from collections import Counter
from collections.abc import Callable, Sequence
from contextvars import ContextVar
from datetime import UTC, datetime, timedelta

from common.retry import sleep_or_stop
from common.turns import Turns
from schemas import Breach, QuarantineRecord, TelemetryDocument
from store.ports import MarkedStore, ProcessorStore, StateSnapshot
from stream.delivery import deliver
from stream.pipeline import Pipeline
from stream.ports import CloseReason, ReceivedEvent
from stream.replay.job import BREACHES, JobFile, outcomes
from stream.replay.ports import PartitionPlan, ReplayReader, TimeBasis, Window


class RangeSelection:
    """The window as the pipeline's selection (stream.ports.Selection): accepted events of its
    apps and (by event time) in its range; rejected ones of its apps whose enqueued time is in
    the window (they have no event time to go by), all of them when the source has no
    enqueued times (a file)."""

    def __init__(self, window: Window, *, enqueued_times: bool) -> None:
        # Bounds in the UTC of the decoded timestamps: aware datetimes of one tzinfo compare
        # without a conversion per comparison. By enqueued time every timestamp passes (the
        # reader's batches are cut by enqueued time).
        by_event = window.by is TimeBasis.EVENT
        self.start = window.start.astimezone(UTC) if by_event else datetime.min.replace(tzinfo=UTC)
        self.end = window.end.astimezone(UTC) if by_event else datetime.max.replace(tzinfo=UTC)
        self.apps = frozenset(window.apps) if window.apps else None
        self.window = window
        # By event time from a source with enqueued times, a rejected input is kept when its
        # enqueued time is in the window; otherwise every one is.
        self._rejected_by_enqueued = by_event and enqueued_times

    def keeps_rejected(self, app_id: str | None, enqueued: datetime) -> bool:
        window = self.window
        if self._rejected_by_enqueued and not window.start <= enqueued < window.end:
            return False
        return self.apps is None or app_id in self.apps


# The plan whose events this task delivers (a task per plan): what a write counts goes to its
# tally. Not the events' partition: the parts of one file carry the same one.
_PLAN: ContextVar[str | None] = ContextVar("replay_plan", default=None)


class JobStore:
    """The ProcessorStore a replay hands the pipeline: documents and quarantine records go to
    the real store (reprocess), to the job for shadow detection after reading (``collect``:
    shadow detection of several files), or both; snapshots (the detectors' too, when they run
    while reading) and counts go to the job with the partition's checkpoint. Counts are named
    by what happened (``outcomes``): stored and quarantined with a store, valid and invalid
    without one."""

    def __init__(
        self,
        job: JobFile,
        store: ProcessorStore | None,
        collect: bool,
        totals: Counter[str] | None = None,
    ) -> None:
        self.job = job
        self.store = store
        self.collect = collect
        self.accepted, self.rejected = outcomes(store is not None)
        self.tallies: dict[str, Counter[str]] = {}
        self.snapshots: dict[str, StateSnapshot] = {}
        # This run's counts, checkpointed or not (what a progress display shows).
        self.totals: Counter[str] = Counter() if totals is None else totals

    async def write(
        self, documents: Sequence[TelemetryDocument], quarantined: Sequence[QuarantineRecord]
    ) -> list[TelemetryDocument]:
        conflicts: list[TelemetryDocument] = []
        if self.store is not None:
            conflicts = await self.store.write(documents, quarantined)
        kept = documents
        if conflicts:
            refused = {id(doc) for doc in conflicts}
            kept = [doc for doc in documents if id(doc) not in refused]
        if self.collect and kept:
            await self.job.collect(kept)
        plan = _PLAN.get()
        if kept:
            # One write holds (part of) one plan's batch.
            self._tally(plan or kept[0].ingest.partition)[self.accepted] += len(kept)
        self.totals[self.accepted] += len(kept)
        for record in quarantined:
            code = f"{self.rejected}:{record.issues[0].code if record.issues else 'none'}"
            tally = self._tally(plan or record.partition or "")
            tally[self.rejected] += 1
            tally[code] += 1
        self.totals[self.rejected] += len(quarantined)
        return conflicts

    def _tally(self, partition: str) -> Counter[str]:
        tally = self.tallies.get(partition)
        if tally is None:
            tally = self.tallies[partition] = Counter()
        return tally

    async def load_state(self, consumer_group: str, partition: str) -> StateSnapshot | None:
        return await self.job.load_snapshot(partition)

    async def save_state(self, snapshot: StateSnapshot, *, replace: bool = False) -> None:
        # Written by the checkpoint that follows, with the counts: one transaction.
        self.snapshots[snapshot.partition] = snapshot

    async def checkpoint(self, partition: str, position: int, *, finished: bool = False) -> None:
        tally = self.tallies.pop(partition, Counter())
        await self.job.checkpoint(
            partition, position, self.snapshots.pop(partition, None), tally, finished
        )


class JobAlerts:
    """The AlertPublisher of a replay whose detectors run while it reads: breaches go to the
    job's report, never to the alert topic (``--publish`` sends the report's at the end).
    Found again after a resume (detectors restart from the partition's last snapshot), a
    breach replaces itself: the report keeps one per id and state."""

    def __init__(self, store: JobStore) -> None:
        self.store = store

    async def __aenter__(self) -> JobAlerts:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        return None

    async def publish(self, breaches: Sequence[Breach]) -> None:
        await self.store.job.keep_breaches(breaches)
        self.store.totals[BREACHES] += len(breaches)


class JobContext:
    """PartitionContext of one planned partition; its checkpoints are the job's."""

    rewindable = False

    def __init__(self, store: JobStore, plan: PartitionPlan, position: int) -> None:
        self._store = store
        self.plan = plan
        self.position = position

    @property
    def partition_id(self) -> str:
        return self.plan.partition

    async def checkpoint(self, event: ReceivedEvent) -> None:
        await self._store.checkpoint(self.plan.partition, event.sequence)
        self.position = max(self.position, event.sequence)

    async def owned(self) -> bool:
        # A replay job's partitions are its own (one runner per job).
        return True

    async def last_enqueued_sequence(self) -> int | None:
        return self.plan.last

    async def checkpointed_sequence(self) -> int | None:
        return self.position if self.position > self.plan.after else None

    async def resume_after(self, sequence: int) -> bool:
        return False


class RateLimit:
    """At most ``per_second`` events per second over the whole replay (None: no limit)."""

    def __init__(self, per_second: float | None) -> None:
        self.per_second = per_second
        self._next = time.monotonic()

    async def take(self, events: int, stop: asyncio.Event) -> None:
        if self.per_second is None:
            return
        now = time.monotonic()
        start = max(self._next, now)
        self._next = start + events / self.per_second
        if start > now:
            await sleep_or_stop(start - now, stop)


class Replay:
    """Runs every unfinished partition of a job through the pipeline, one task each."""

    def __init__(
        self,
        *,
        reader: ReplayReader,
        pipeline: Pipeline,
        store: JobStore,
        window: Window,
        max_future_skew: timedelta,
        batch_size: int,
        rate: RateLimit,
        on_events: Callable[[int, float], None] = lambda read, advanced: None,
    ) -> None:
        self.reader = reader
        self.pipeline = pipeline
        self.store = store
        self.window = window
        self.max_future_skew = max_future_skew
        self.batch_size = batch_size
        self.rate = rate
        # (events read, positions advanced: events, or bytes of a file) after each batch.
        self.on_events = on_events
        self._enqueued_from = window.enqueued_from(max_future_skew).astimezone(UTC)
        before = window.enqueued_before()
        self._enqueued_before = None if before is None else before.astimezone(UTC)

    async def run(self, plans: Sequence[tuple[PartitionPlan, int]], stop: asyncio.Event) -> bool:
        """Replay ``(plan, position)`` pairs; True when every partition reached its end.

        A failure of the pipeline that no retry mends (the store set up wrongly, e.g. a
        container deleted) stops every partition, as the processor does, and is raised here:
        the job keeps what was checkpointed and resumes from it."""
        async with self.pipeline.stopping_on_failure(stop), asyncio.TaskGroup() as group:
            tasks = [
                group.create_task(self._partition(plan, position, stop)) for plan, position in plans
            ]
        if self.pipeline.failure is not None:
            raise self.pipeline.failure
        return all(task.result() for task in tasks)

    async def _partition(self, plan: PartitionPlan, position: int, stop: asyncio.Event) -> bool:
        _PLAN.set(plan.partition)  # this task's own context
        context = JobContext(self.store, plan, position)
        await self.pipeline.on_partition_initialize(context)
        # Nothing read yet, so no snapshot of the job holds the watermark: the events before
        # the plan give it, as they gave it the live processor.
        unseeded = position == plan.after
        if unseeded and not self.reader.preceded_in_store:
            self.pipeline.seed(plan.partition, await self._watermark_before(plan))
            unseeded = False
        finished = False
        turns = Turns()
        batch_size = self.batch_size
        if self.rate.per_second is not None:
            batch_size = max(1, min(batch_size, int(self.rate.per_second)))
        try:
            # Closed at once when left early (Ctrl-C): a reader holds a connection per read.
            async with contextlib.aclosing(self.reader.read(plan, position, batch_size)) as batches:
                async for events in batches:
                    if unseeded:
                        # A hub is read from the window's start: the events before the first
                        # one read give the watermark.
                        unseeded = False
                        watermark = await self._stored_watermark_before(plan, events[0].sequence)
                        self.pipeline.seed(plan.partition, watermark)
                    if stop.is_set() or not await self._deliver(context, events, stop):
                        break
                    self.on_events(len(events), plan.share(events[-1].sequence - position))
                    position = events[-1].sequence
                    await turns.take()
                else:
                    finished = not stop.is_set()
        finally:
            await self.pipeline.on_partition_close(context, CloseReason.SHUTDOWN)
        if finished:
            await self.store.checkpoint(plan.partition, plan.last, finished=True)
            self.on_events(0, plan.share(plan.last - position))
        return finished

    async def _watermark_before(self, plan: PartitionPlan) -> datetime | None:
        """The watermark of the partition's events before the plan. The reader gives them
        newest enqueued first, and an event moves the watermark no further than its enqueued
        time: once one is enqueued at or before the watermark, no older one can raise it."""
        watermark = None
        async with contextlib.aclosing(self.reader.preceding(plan, self.batch_size)) as batches:
            async for events in batches:
                watermark = self.pipeline.watermark_after(watermark, events)
                if watermark is not None and events[-1].enqueued_time <= watermark:
                    break
        return watermark

    async def _stored_watermark_before(self, plan: PartitionPlan, first: int) -> datetime | None:
        """``_watermark_before`` from the live store's documents of the partition's events
        before sequence ``first``, highest first (a hub's enqueued times rise with its
        sequences). Valid events alone move a watermark, and the live processor stored each
        one; a replay that stores nothing (shadow), or into a store that cannot find documents
        by position (the embedded one), starts the plan without one: its first events are
        decided from the watermark of the events read, so their ``late`` may differ from the
        live processor's."""
        store = self.store.store
        if not isinstance(store, MarkedStore):
            return None
        watermark = None
        below = first - 1
        while below >= 0:
            marks = await store.marks_before(
                self.reader.source, plan.events_partition, below, self.batch_size
            )
            for mark in marks:
                if watermark is not None and mark.enqueued_time <= watermark:
                    return watermark
                seen = min(mark.timestamp, mark.enqueued_time)
                if watermark is None or seen > watermark:
                    watermark = seen
            if not marks:
                break
            below = marks[-1].sequence - 1
        return watermark

    async def _deliver(
        self, context: JobContext, events: list[ReceivedEvent], stop: asyncio.Event
    ) -> bool:
        """Hand the batch's events of the window to the pipeline, retried as a source does;
        False when the replay stopped before it was processed. Events the plan's range holds
        but whose enqueued times fall outside the window (enqueued out of sequence order)
        are not processed, but move the watermark where they stand, as they did live."""
        await self.rate.take(len(events), stop)
        low, high = self._enqueued_from, self._enqueued_before
        if not self.reader.enqueued_times:
            # One time for all (a file's): the first event's decides for the batch.
            first = events[0].enqueued_time if events else low
            inside = low <= first and (high is None or first < high)
            return not inside or await self._process(context, events, stop)
        runs = itertools.groupby(
            events,
            lambda event: (
                low <= event.enqueued_time and (high is None or event.enqueued_time < high)
            ),
        )
        for inside, run in runs:
            if not inside:
                pipeline = self.pipeline
                pipeline.seed(context.partition_id, pipeline.watermark_after(None, list(run)))
            elif not await self._process(context, list(run), stop):
                return False
        return True

    async def _process(
        self, context: JobContext, window: list[ReceivedEvent], stop: asyncio.Event
    ) -> bool:
        return await deliver(
            functools.partial(self.pipeline.on_batch, context, window),
            partition_id=context.partition_id,
            first_sequence=window[0].sequence,
            closing=lambda: False,
            stop=stop,
        )
