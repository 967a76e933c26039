"""The replay transforms batch N+1 while batch N's write waits, without changing what is
written or when it is checkpointed: writes and job checkpoints stay in order, and a batch
transformed ahead from a watermark that later moved is transformed again."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from schemas import AppDirectory, QuarantineRecord, TelemetryDocument, TelemetryEvent
from store.ports import StateSnapshot
from stream.decode import Decoder
from stream.enrich import Enricher
from stream.pipeline import Pipeline, Prepared
from stream.ports import PartitionContext, ReceivedEvent
from stream.replay.job import JobFile
from stream.replay.ports import PartitionPlan, ReplayReader, Window
from stream.replay.run import AHEAD, JobContext, JobStore, RateLimit, Replay
from stream.stats import ProcessorStats

T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)


def received(i: int, seconds: int | None = None, trace: str | None = None) -> ReceivedEvent:
    """Event ``i`` of partition 0, enqueued at its event time ``seconds`` after T0 (default
    ``i``)."""
    at = T0 + timedelta(seconds=i if seconds is None else seconds)
    body = orjson.dumps({"app_id": "a", "timestamp": at.isoformat(), "trace_id": trace or f"t{i}"})
    return ReceivedEvent(body, "0", i, at, str(i))


class SlowStore:
    """A store whose every write waits on the loop (as one does when the file is busy) and
    that records what happened in ``log``, shared with the job's checkpoints."""

    def __init__(self, log: list[str]) -> None:
        self.log = log
        self.documents: dict[str, TelemetryDocument] = {}
        self.quarantined: list[QuarantineRecord] = []

    async def write(
        self, documents: Sequence[TelemetryDocument], quarantined: Sequence[QuarantineRecord]
    ) -> list[TelemetryDocument]:
        first = documents[0].ingest.sequence if documents else "quarantine"
        self.log.append(f"write {first}")
        await asyncio.sleep(0.01)
        self.documents.update((doc.id, doc) for doc in documents)
        self.quarantined.extend(quarantined)
        self.log.append(f"written {first}")
        return []

    async def load_state(self, consumer_group: str, partition: str) -> StateSnapshot | None:
        return None

    async def save_state(self, snapshot: StateSnapshot) -> None:
        raise AssertionError("a replay's snapshots go to its job")


class FailingEnricher(Enricher):
    """Fails on events of trace ``poison``, as a bug in enrichment would."""

    def document(self, event: TelemetryEvent, *args: Any) -> TelemetryDocument:
        if event.trace_id == "poison":
            raise ValueError("enrichment bug")
        return super().document(event, *args)


class LoggingPipeline(Pipeline):
    def __init__(self, store: JobStore, log: list[str]) -> None:
        super().__init__(
            store=store,
            decoder=Decoder(),
            enricher=FailingEnricher(AppDirectory(), b"k", "local"),
            consumer_group="replay",
            lateness=timedelta(seconds=60),
            checkpoint_interval_s=0,
            stats=ProcessorStats(),
        )
        self.log = log

    def prepare(
        self, context: PartitionContext, events: list[ReceivedEvent], after: Prepared | None
    ) -> Prepared:
        self.log.append(f"prepare {events[0].sequence}")
        return super().prepare(context, events, after)


class ListReader:
    source = "test"
    unreadable: dict[str, str] = {}  # noqa: RUF012

    def __init__(self, events: list[ReceivedEvent]) -> None:
        self.events = events

    async def plan(self, window: Window, max_future_skew: timedelta) -> list[PartitionPlan]:
        return [PartitionPlan("0", -1, len(self.events) - 1)]

    async def read(self, plan: PartitionPlan, after: int, batch_size: int):  # type: ignore[no-untyped-def]
        for start in range(after + 1, plan.last + 1, batch_size):
            yield self.events[start : start + batch_size]


class LoggingJob(JobFile):
    def __init__(self, path: Path, log: list[str]) -> None:
        super().__init__(path)
        self.log = log

    async def checkpoint(self, partition: str, position: int, *args: object, **kw: object) -> None:
        self.log.append(f"checkpoint {position}")
        await super().checkpoint(partition, position, *args, **kw)  # type: ignore[arg-type]


async def replay(tmp_path: Path, events: list[ReceivedEvent]) -> tuple[list[str], SlowStore]:
    log: list[str] = []
    job = LoggingJob(tmp_path / "job.db", log)
    reader: ReplayReader = ListReader(events)  # type: ignore[assignment]
    plans = await reader.plan(Window(T0 - timedelta(days=1), T0 + timedelta(days=1)), timedelta())
    job.create(b"{}", plans)
    store = SlowStore(log)
    job_store = JobStore(job, store, shadow=False)
    run = Replay(
        reader=reader,
        pipeline=LoggingPipeline(job_store, log),
        store=job_store,
        window=Window(T0 - timedelta(days=1), T0 + timedelta(days=1)),
        max_future_skew=timedelta(minutes=15),
        batch_size=10,
        rate=RateLimit(None),
    )
    assert await run.run([(plans[0], -1)], asyncio.Event())
    await job.aclose()
    return log, store


async def test_the_next_batches_are_transformed_while_a_write_waits(tmp_path: Path) -> None:
    log, store = await replay(tmp_path, [received(i) for i in range(60)])
    # Batches 10-19 to 30-39 are transformed while 0-9 is being written (no more: AHEAD);
    # each write starts after the one before ended, each checkpoint follows the write it
    # covers.
    assert log[: log.index("written 0")] == [
        "prepare 0", "write 0", "prepare 10", "prepare 20", "prepare 30"
    ]  # fmt: skip
    assert AHEAD == 3
    assert [entry for entry in log if not entry.startswith("prepare")] == [
        step
        for first in range(0, 60, 10)
        for step in (f"write {first}", f"written {first}", f"checkpoint {first + 9}")
    ] + ["checkpoint 59"]
    assert len(store.documents) == 60


async def test_an_event_that_fails_its_transform_ahead_is_quarantined_as_live(
    tmp_path: Path,
) -> None:
    events = [received(i, trace="poison" if i == 15 else None) for i in range(60)]
    _, store = await replay(tmp_path, events)
    assert [record.issues[0].code for record in store.quarantined] == ["processing_error"]
    assert store.quarantined[0].sequence == 15
    assert len(store.documents) == 59


async def test_a_batch_prepared_from_a_watermark_that_moved_is_transformed_again(
    tmp_path: Path,
) -> None:
    log: list[str] = []
    job = JobFile(tmp_path / "job.db")
    job.create(b"{}", [PartitionPlan("0", -1, 1)])
    store = SlowStore(log)
    job_store = JobStore(job, store, shadow=False)
    pipeline = LoggingPipeline(job_store, log)
    context = JobContext(job_store, PartitionPlan("0", -1, 1), -1)
    await pipeline.on_partition_initialize(context)
    # The second event is 10 minutes older than the first: late once the first is processed.
    first, second = [received(0, 600)], [received(1, 0)]
    stale = pipeline.prepare(context, second, None)  # as if the first batch were not there
    assert not stale.documents[0].ingest.late
    await pipeline.on_batch(context, first)
    await pipeline.on_batch(context, second, stale)
    [late] = [doc for doc in store.documents.values() if doc.ingest.sequence == 1]
    assert late.ingest.late
    await job.aclose()
