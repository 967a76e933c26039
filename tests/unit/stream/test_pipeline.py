"""The pipeline's ordering promises, with the SQLite store and a recording hot path."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest

from alerts.exceptions import AlertBusError
from schemas import (
    AppDirectory,
    Breach,
    BreachKind,
    BreachSource,
    BreachState,
    Severity,
    TelemetryDocument,
    TelemetryEvent,
)
from store.exceptions import StoreError, StoreMisconfigured, StoreUnavailable
from store.sqlite import SqliteStore
from stream.decode import Decoded, Decoder
from stream.enrich import Enricher
from stream.exceptions import PartitionLost
from stream.pipeline import Pipeline
from stream.ports import CloseReason, ReceivedEvent
from stream.stats import ProcessorStats
from tests.unit.store.event_id_conflicts import stored_raw

# Event times an hour back: the pipeline validates against the wall clock.
T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)


def body(i: int, **extra: object) -> bytes:
    ts = (T0 + timedelta(seconds=i)).isoformat()
    return orjson.dumps({"app_id": "a", "timestamp": ts, "trace_id": f"t{i}", **extra})


def received(i: int, payload: bytes | None = None) -> ReceivedEvent:
    return ReceivedEvent(payload or body(i), "0", i, T0 + timedelta(seconds=i), str(i))


@dataclass
class Context:
    partition_id: str = "0"
    rewindable: bool = True
    checkpoints: list[int] = field(default_factory=list)
    log: list[str] | None = None
    # False once another processor took the partition over.
    still_owned: bool = True

    async def checkpoint(self, event: ReceivedEvent) -> None:
        self.checkpoints.append(event.sequence)
        if self.log is not None:
            self.log.append(f"checkpoint {event.sequence}")

    async def owned(self) -> bool:
        return self.still_owned

    async def last_enqueued_sequence(self) -> int | None:
        return None

    async def checkpointed_sequence(self) -> int | None:
        return self.checkpoints[-1] if self.checkpoints else None

    async def resume_after(self, sequence: int) -> bool:
        self.resumed_after = sequence
        return True


@dataclass
class RecordingHotPath:
    """Counts what it observed and opens a breach on every tenth event."""

    seen: list[int] = field(default_factory=list)

    def observe(self, doc: TelemetryDocument) -> list[Breach]:
        self.seen.append(doc.ingest.sequence)
        if len(self.seen) % 10:
            return []
        return [
            Breach(
                breach_id=f"b{len(self.seen)}",
                state=BreachState.OPENED,
                severity=Severity.WARNING,
                kind=BreachKind.DRIFT,
                source=BreachSource.HOT,
                app_id=doc.app_id,
                signal="latency_ms",
                detector="count",
                observed=len(self.seen),
                window_start=doc.timestamp,
                window_end=doc.timestamp,
                opened_at=doc.timestamp,
            )
        ]

    def snapshot(self) -> bytes:
        return orjson.dumps(self.seen)

    @classmethod
    def restore(cls, blob: bytes | None) -> RecordingHotPath:
        return cls(seen=orjson.loads(blob) if blob else [])


@dataclass
class Publisher:
    published: list[str] = field(default_factory=list)
    failures: int = 0
    log: list[str] | None = None

    async def publish(self, breaches: Sequence[Breach]) -> None:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("bus down")
        self.published.extend(b.breach_id for b in breaches)
        if self.log is not None:
            self.log.append("publish")


class FailingStore(SqliteStore):
    def __init__(self, path: Path, failures: int) -> None:
        super().__init__(path)
        self.failures = failures
        self.error: Exception = ConnectionError("store down")

    async def write(self, documents, quarantined):  # type: ignore[no-untyped-def]
        if self.failures:
            self.failures -= 1
            raise self.error
        return await super().write(documents, quarantined)


def make_pipeline(
    store: SqliteStore, publisher: Publisher | None = None, hot: bool = True
) -> Pipeline:
    return Pipeline(
        store=store,
        decoder=Decoder(),
        enricher=Enricher(AppDirectory(), b"k", "local"),
        consumer_group="$Default",
        lateness=timedelta(seconds=60),
        checkpoint_interval_s=0,
        stats=ProcessorStats(),
        hot_path=RecordingHotPath.restore if hot else None,
        publisher=publisher or Publisher() if hot else None,
    )


async def started(pipeline: Pipeline) -> Context:
    """The context of partition 0, initialised as the source would."""
    context = Context()
    await pipeline.on_partition_initialize(context)
    return context


async def test_bad_events_are_quarantined_and_neighbours_stored(tmp_path: Path) -> None:
    async with SqliteStore(tmp_path / "s.db") as store:
        pipeline = make_pipeline(store, hot=False)
        context = Context()
        await pipeline.on_partition_initialize(context)
        batch = [
            received(0),
            received(1, b"{oops"),
            received(2, body(2, latency_ms=-1)),
            received(3),
        ]
        await pipeline.on_batch(context, batch)
        assert await store.count("telemetry") == 2
        assert await store.count("quarantine") == 2
        assert context.checkpoints == [3]
        reasons = [r.issues[0].code async for r in store.quarantine_records()]
        assert sorted(reasons) == ["greater_than_equal", "malformed_json"]


class CommonReadings(Decoder):
    """Counts the common shape's readings of each body, wherever they happen."""

    def __init__(self) -> None:
        super().__init__()
        self.readings: Counter[bytes] = Counter()

    def common_event(self, body: bytes, now: datetime) -> TelemetryEvent | None:
        self.readings[body] += 1
        return super().common_event(body, now)

    def decode(self, body: bytes, now: datetime | None = None, *, common: bool = True) -> Decoded:
        self.readings[body] += common
        return super().decode(body, now, common=common)


async def test_each_body_is_read_as_the_common_shape_once(tmp_path: Path) -> None:
    # A body the common reading leaves to the decoder is not read that way a second time.
    async with SqliteStore(tmp_path / "s.db") as store:
        pipeline = make_pipeline(store, hot=False)
        decoder = pipeline.decoder = CommonReadings()
        context = await started(pipeline)
        batch = [received(0), received(1, b"{oops"), received(2, body(2, latency_ms=-1))]
        await pipeline.on_batch(context, batch)
        assert await store.count("telemetry") == 1
        assert await store.count("quarantine") == 2
        assert sorted(decoder.readings.values()) == [1, 1, 1]


async def test_a_reused_event_id_is_quarantined_and_kept_from_the_detectors(
    tmp_path: Path,
) -> None:
    async with SqliteStore(tmp_path / "s.db") as store:
        hot = RecordingHotPath()
        pipeline = make_pipeline(store)
        pipeline.hot_path = lambda blob: hot
        context = Context()
        await pipeline.on_partition_initialize(context)
        same = body(0, event_id="e-1")
        await pipeline.on_batch(context, [received(0, same), received(1, body(1, event_id="e-1"))])
        await pipeline.on_batch(context, [received(2, same)])  # the same event again: kept

        assert await store.count("telemetry") == 1
        stored = await store.get_telemetry("e-1", f"a:{T0.date().isoformat()}")
        assert stored is not None and stored.trace_id == "t0" and stored.ingest.sequence == 2
        [record] = [r async for r in store.quarantine_records()]
        assert [issue.code for issue in record.issues] == ["duplicate_event_id_conflict"]
        assert (record.partition, record.sequence, record.app_id) == ("0", 1, "a")
        assert orjson.loads(record.raw)["trace_id"] == "t1"
        assert hot.seen == [0, 2]
        assert pipeline.stats.quarantined == 1


async def test_a_replay_updates_a_document_stored_raw_or_with_another_key(
    tmp_path: Path,
) -> None:
    """A document an older version stored with its metadata.user_id raw, or one hashed with a
    key since changed, was taken for another event under its id: the replay was quarantined
    (duplicate_event_id_conflict) and the raw value stayed. The replay now replaces it."""
    async with SqliteStore(tmp_path / "s.db") as store:
        events = [
            body(0, event_id="e-1", user_id="u-1", metadata={"user_id": "u-1"}),
            body(1, user_id="u-2", metadata={"user_id": 42}),
        ]
        before = Enricher(AppDirectory(), b"the key before", "local")
        decoded = [Decoder().decode(event, T0).accepted[0].event for event in events]
        stored = [
            before.document(event, received(i), 0, T0, False) for i, event in enumerate(decoded)
        ]
        older = [stored_raw(stored[0], "u-1"), stored_raw(stored[1], 42)]
        assert await store.write(older, []) == []

        pipeline = make_pipeline(store, hot=False)
        await pipeline.on_batch(
            await started(pipeline), [received(i, b) for i, b in enumerate(events)]
        )

        assert await store.count("quarantine") == 0 and await store.count("telemetry") == 2
        for doc, user_id, tag in zip(stored, ("u-1", "u-2"), ("u-1", "42"), strict=True):
            replayed = await store.get_telemetry(doc.id, doc.pk)
            assert replayed is not None
            assert replayed.user_hash == pipeline.enricher.user_hash(user_id)
            assert replayed.metadata["user_id"] == pipeline.enricher.user_hash(tag)


async def test_a_failed_write_is_not_checkpointed(tmp_path: Path) -> None:
    async with FailingStore(tmp_path / "s.db", failures=1) as store:
        pipeline = make_pipeline(store, hot=False)
        context = Context()
        await pipeline.on_partition_initialize(context)
        with pytest.raises(ConnectionError):
            await pipeline.on_batch(context, [received(0), received(1)])
        assert context.checkpoints == []
        await pipeline.on_batch(context, [received(0), received(1)])
        assert context.checkpoints == [1]
        assert await store.count("telemetry") == 2


async def test_publish_happens_before_snapshot_and_checkpoint(tmp_path: Path) -> None:
    log: list[str] = []
    async with SqliteStore(tmp_path / "s.db") as store:
        publisher = Publisher(log=log)
        pipeline = make_pipeline(store, publisher)
        context = Context(log=log)
        await pipeline.on_partition_initialize(context)
        await pipeline.on_batch(context, [received(i) for i in range(10)])
        assert log == ["publish", "checkpoint 9"]
        snapshot = await store.load_state("$Default", "0")
        assert snapshot is not None and snapshot.covered_sequence == 9


async def test_failed_publish_keeps_breaches_and_does_not_double_count(tmp_path: Path) -> None:
    async with SqliteStore(tmp_path / "s.db") as store:
        publisher = Publisher(failures=1)
        pipeline = make_pipeline(store, publisher)
        context = Context()
        await pipeline.on_partition_initialize(context)
        batch = [received(i) for i in range(10)]
        with pytest.raises(ConnectionError):
            await pipeline.on_batch(context, batch)
        assert context.checkpoints == []
        await pipeline.on_batch(context, batch)  # the source delivers the batch again
        assert publisher.published == ["b10"]
        assert context.checkpoints == [9]
        hot = pipeline._partitions["0"].hot
        assert isinstance(hot, RecordingHotPath)
        assert hot.seen == list(range(10))


async def with_a_breach_unpublished(store: SqliteStore) -> tuple[Pipeline, Context]:
    """A pipeline whose second batch (5-11) was stored and observed, then failed publishing
    its breach (the bus busy or down); nothing checkpointed (a long interval)."""
    pipeline = make_pipeline(store, Publisher(failures=1))
    pipeline.checkpoint_interval_s = 3600
    context = await started(pipeline)
    await pipeline.on_batch(context, [received(i) for i in range(5)])
    with pytest.raises(ConnectionError):
        await pipeline.on_batch(context, [received(i) for i in range(5, 12)])
    return pipeline, context


async def test_a_shutdown_while_the_bus_is_down_leaves_the_breaches_to_the_next_owner(
    tmp_path: Path,
) -> None:
    # A batch stored and observed, its breach not published (the bus busy or down), then the
    # partition closes (SIGTERM, or moved to another worker): a snapshot then would hold the
    # detectors past the batch, and the next owner would never publish its breach.
    async with SqliteStore(tmp_path / "s.db") as store:
        first, context = await with_a_breach_unpublished(store)
        await first.on_partition_close(context, CloseReason.SHUTDOWN)

        publisher = Publisher()
        second = make_pipeline(store, publisher)
        await second.on_partition_initialize(context)
        await second.on_batch(context, [received(i) for i in range(12)])
        assert publisher.published == ["b10"]
        hot = second._partitions["0"].hot
        assert isinstance(hot, RecordingHotPath) and hot.seen == list(range(12))
        assert context.checkpoints == [11]


async def test_an_idle_turn_after_a_batch_whose_breaches_are_unpublished_checkpoints_nothing(
    tmp_path: Path,
) -> None:
    # As at a close: a snapshot would hold the detectors past the checkpoint.
    async with SqliteStore(tmp_path / "s.db") as store:
        pipeline, context = await with_a_breach_unpublished(store)
        pipeline.checkpoint_interval_s = 0
        await pipeline.on_idle(context)
        assert context.checkpoints == []
        assert await store.load_state("$Default", "0") is None
        # Once the batch is delivered again and its breach published, the idle turn does.
        pipeline.checkpoint_interval_s = 3600
        await pipeline.on_batch(context, [received(i) for i in range(5, 12)])
        assert context.checkpoints == []
        pipeline.checkpoint_interval_s = 0
        await pipeline.on_idle(context)
        assert context.checkpoints == [11]


async def test_restart_skips_detectors_for_covered_events(tmp_path: Path) -> None:
    async with SqliteStore(tmp_path / "s.db") as store:
        first = make_pipeline(store)
        context = Context()
        await first.on_partition_initialize(context)
        await first.on_batch(context, [received(i) for i in range(5)])
        # Crash: the source redelivers from an older checkpoint (here: from the start).
        second = make_pipeline(store)
        await second.on_partition_initialize(context)
        await second.on_batch(context, [received(i) for i in range(8)])
        hot = second._partitions["0"].hot
        assert isinstance(hot, RecordingHotPath)
        assert hot.seen == list(range(8))  # 0-4 from the snapshot, 5-7 newly observed
        assert await store.count("telemetry") == 8


async def test_a_partition_without_checkpoint_resumes_after_its_snapshot(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with SqliteStore(tmp_path / "s.db") as store:
        pipeline = make_pipeline(store)
        context = await started(pipeline)
        await pipeline.on_batch(context, [received(i) for i in range(5)])
        # The checkpoint is gone (or the stop came between snapshot and checkpoint).
        fresh = Context()
        await make_pipeline(store).on_partition_initialize(fresh)
        assert getattr(fresh, "resumed_after", None) == 4
        assert "partition 0 has no checkpoint but a snapshot covering sequence 4" in caplog.text


async def test_shutdown_checkpoints_pending_work(tmp_path: Path) -> None:
    async with SqliteStore(tmp_path / "s.db") as store:
        pipeline = make_pipeline(store, hot=False)
        pipeline.checkpoint_interval_s = 3600
        context = Context()
        await pipeline.on_partition_initialize(context)
        await pipeline.on_batch(context, [received(0), received(1)])
        assert context.checkpoints == []
        await pipeline.on_partition_close(context, CloseReason.SHUTDOWN)
        assert context.checkpoints == [1]


async def test_lost_partition_is_not_checkpointed(tmp_path: Path) -> None:
    async with SqliteStore(tmp_path / "s.db") as store:
        pipeline = make_pipeline(store, hot=False)
        pipeline.checkpoint_interval_s = 3600
        context = Context()
        await pipeline.on_partition_initialize(context)
        await pipeline.on_batch(context, [received(0)])
        await pipeline.on_partition_close(context, CloseReason.OWNERSHIP_LOST)
        assert context.checkpoints == []


async def test_a_batch_ending_after_a_takeover_writes_neither_snapshot_nor_checkpoint(
    tmp_path: Path,
) -> None:
    async with SqliteStore(tmp_path / "s.db") as store:
        pipeline = make_pipeline(store)
        context = await started(pipeline)
        await pipeline.on_batch(context, [received(i) for i in range(5)])
        saved = await store.load_state("$Default", "0")
        assert saved is not None and saved.covered_sequence == 4
        # Another processor owns the partition by the time the next batch is done.
        context.still_owned = False
        with pytest.raises(PartitionLost, match="partition 0 is owned by another processor"):
            await pipeline.on_batch(context, [received(i) for i in range(5, 9)])
        assert await store.load_state("$Default", "0") == saved
        assert context.checkpoints == [4]


async def test_late_events_are_stored_and_flagged(tmp_path: Path) -> None:
    async with SqliteStore(tmp_path / "s.db") as store:
        pipeline = make_pipeline(store, hot=False)
        context = Context()
        await pipeline.on_partition_initialize(context)
        late = ReceivedEvent(body(-600), "0", 2, T0, "2")
        await pipeline.on_batch(context, [received(0), received(1), late])
        docs = [
            doc
            async for page in store.telemetry_window(
                ["a"], T0 - timedelta(hours=1), T0 + timedelta(hours=1)
            )
            for doc in page
        ]
        assert [(doc.trace_id, doc.ingest.late) for doc in docs] == [
            ("t-600", True),
            ("t0", False),
            ("t1", False),
        ]


class PoisonStore(SqliteStore):
    """Refuses (not transiently) any write holding the document of trace ``poison``."""

    async def write(self, documents, quarantined):  # type: ignore[no-untyped-def]
        if any(doc.trace_id == "poison" for doc in documents):
            raise StoreError("document too large")
        return await super().write(documents, quarantined)


def _docs_without_processing_time(docs: list[TelemetryDocument]) -> list[dict[str, object]]:
    kept = []
    for doc in docs:
        fields = orjson.loads(doc.json_bytes())
        del fields["ingest"]["processed_at"], fields["ingest"]["lag_ms"]
        kept.append(fields)
    return sorted(kept, key=lambda fields: str(fields["id"]))


async def _stored(store: SqliteStore) -> list[TelemetryDocument]:
    return [
        doc
        async for page in store.telemetry_window(
            ["a"], T0 - timedelta(hours=2), T0 + timedelta(hours=2)
        )
        for doc in page
    ]


async def test_an_event_that_fails_alone_is_quarantined_and_the_rest_stored(
    tmp_path: Path,
) -> None:
    async with PoisonStore(tmp_path / "s.db") as store:
        pipeline = make_pipeline(store)
        context = Context()
        await pipeline.on_partition_initialize(context)
        batch = [received(i) for i in range(10)]
        batch[6] = received(6, body(6, trace_id="poison"))
        await pipeline.on_batch(context, batch)

        assert sorted(doc.ingest.sequence for doc in await _stored(store)) == [
            0, 1, 2, 3, 4, 5, 7, 8, 9,
        ]  # fmt: skip
        [record] = [r async for r in store.quarantine_records()]
        assert (record.sequence, record.issues[0].code) == (6, "processing_error")
        assert "StoreError: document too large" in record.issues[0].message
        assert orjson.loads(record.raw)["trace_id"] == "poison"
        assert context.checkpoints == [9]
        hot = pipeline._partitions["0"].hot
        assert isinstance(hot, RecordingHotPath) and 6 not in hot.seen


class PoisonRawStore(PoisonStore):
    """Also refuses any quarantine record that holds the poison event's bytes."""

    async def write(self, documents, quarantined):  # type: ignore[no-untyped-def]
        if any("poison" in record.raw for record in quarantined):
            raise StoreError("record too large")
        return await super().write(documents, quarantined)


async def test_an_event_whose_quarantine_record_is_refused_is_kept_without_its_bytes(
    tmp_path: Path,
) -> None:
    async with PoisonRawStore(tmp_path / "s.db") as store:
        pipeline = make_pipeline(store, hot=False)
        context = await started(pipeline)
        poison = body(1, trace_id="poison")
        await pipeline.on_batch(context, [received(0), received(1, poison), received(2)])

        assert await store.count("telemetry") == 2 and context.checkpoints == [2]
        [record] = [r async for r in store.quarantine_records()]
        assert (record.sequence, record.raw, record.raw_size) == (1, "", len(poison))
        assert record.truncated and record.issues[0].code == "processing_error"
        message = record.issues[0].message
        assert "document too large" in message and "record too large" in message


async def test_an_event_enrichment_cannot_handle_is_quarantined(tmp_path: Path) -> None:
    async with SqliteStore(tmp_path / "s.db") as store:
        pipeline = make_pipeline(store, hot=False)
        document = pipeline.enricher.document

        def broken_for_one(event, *args):  # type: ignore[no-untyped-def]
            if event.trace_id == "t3":
                raise ValueError("cannot enrich")
            return document(event, *args)

        pipeline.enricher.document = broken_for_one  # type: ignore[method-assign]
        context = Context()
        await pipeline.on_partition_initialize(context)
        await pipeline.on_batch(context, [received(i) for i in range(5)])
        assert await store.count("telemetry") == 4
        [record] = [r async for r in store.quarantine_records()]
        assert record.sequence == 3 and "ValueError: cannot enrich" in record.issues[0].message


@dataclass
class BrokenOnOneHotPath(RecordingHotPath):
    """Fails on trace ``t3`` every time it sees it, as a detector bug would."""

    def observe(self, doc: TelemetryDocument) -> list[Breach]:
        if doc.trace_id == "t3":
            raise ZeroDivisionError("division by zero")
        return super().observe(doc)

    @classmethod
    def restore(cls, blob: bytes | None) -> BrokenOnOneHotPath:
        return cls(seen=orjson.loads(blob) if blob else [])


async def test_an_event_the_detectors_fail_on_is_stored_and_the_partition_moves_on(
    tmp_path: Path,
) -> None:
    async with SqliteStore(tmp_path / "s.db") as store:
        publisher = Publisher()
        pipeline = make_pipeline(store, publisher)
        pipeline.hot_path = BrokenOnOneHotPath.restore
        context = await started(pipeline)
        await pipeline.on_batch(context, [received(i) for i in range(6)])
        await pipeline.on_batch(context, [received(i) for i in range(6, 12)])

        assert context.checkpoints == [5, 11]
        assert await store.count("telemetry") == 12 and await store.count("quarantine") == 0
        hot = pipeline._partitions["0"].hot
        assert isinstance(hot, BrokenOnOneHotPath)
        assert hot.seen == [0, 1, 2, 4, 5, 6, 7, 8, 9, 10, 11]
        assert publisher.published == ["b10"]  # later events still reach the detectors
        registry = pipeline.stats.metrics.registry
        assert registry.get_sample_value("evalstream_detector_failures_total") == 1


@pytest.mark.parametrize(
    "error",
    [
        StoreUnavailable("throttled"),
        # e.g. Cosmos 404: the telemetry container was removed; every event would fail alone.
        StoreMisconfigured("upsert telemetry: Cosmos DB answered 404: container not found"),
    ],
)
async def test_a_failure_no_event_causes_quarantines_nothing(
    tmp_path: Path, error: StoreError
) -> None:
    async with FailingStore(tmp_path / "s.db", failures=1) as store:
        store.error = error
        pipeline = make_pipeline(store, hot=False)
        context = Context()
        await pipeline.on_partition_initialize(context)
        with pytest.raises(type(error)):
            await pipeline.on_batch(context, [received(0), received(1)])
        assert await store.count("quarantine") == 0 and context.checkpoints == []
        await pipeline.on_batch(context, [received(0), received(1)])  # the store is back
        assert await store.count("telemetry") == 2 and context.checkpoints == [1]


# Minutes apart, so the lateness allowance (60 s) decides which are late.
def _spread(sequence: int, minutes: int) -> ReceivedEvent:
    enqueued = T0 + timedelta(minutes=30)
    payload = body(sequence, timestamp=(T0 + timedelta(minutes=minutes)).isoformat())
    return ReceivedEvent(payload, "0", sequence, enqueued, str(sequence))


BATCHES = [
    [_spread(0, 0), _spread(1, 5), _spread(2, 3)],
    [_spread(3, 4), _spread(4, 10), _spread(5, 2)],
    [_spread(6, 11), _spread(7, 9), _spread(8, 12)],
]


async def _reference(tmp_path: Path) -> list[dict[str, object]]:
    async with SqliteStore(tmp_path / "reference.db") as store:
        pipeline = make_pipeline(store)
        context = Context()
        await pipeline.on_partition_initialize(context)
        for batch in BATCHES:
            await pipeline.on_batch(context, batch)
        stored = await _stored(store)
    assert {doc.trace_id for doc in stored if doc.ingest.late} == {"t2", "t5", "t7"}
    return _docs_without_processing_time(stored)


async def test_a_failed_write_retried_stores_what_a_clean_run_stores(tmp_path: Path) -> None:
    reference = await _reference(tmp_path)
    async with FailingStore(tmp_path / "s.db", failures=0) as store:
        pipeline = make_pipeline(store)
        context = Context()
        await pipeline.on_partition_initialize(context)
        for batch in BATCHES:
            store.failures = 2  # the disk is full twice, then the source delivers again
            for _ in range(2):
                with pytest.raises(ConnectionError):
                    await pipeline.on_batch(context, batch)
            await pipeline.on_batch(context, batch)
        assert _docs_without_processing_time(await _stored(store)) == reference


@dataclass
class BreachOnEveryEvent(RecordingHotPath):
    """Every event it observes opens a breach (so every batch publishes)."""

    def observe(self, doc: TelemetryDocument) -> list[Breach]:
        self.seen.extend([-1] * (9 - len(self.seen) % 10))
        return super().observe(doc)


async def test_a_failed_publish_retried_stores_what_a_clean_run_stores(tmp_path: Path) -> None:
    reference = await _reference(tmp_path)
    async with SqliteStore(tmp_path / "s.db") as store:
        publisher = Publisher()
        pipeline = make_pipeline(store, publisher)
        pipeline.hot_path = lambda blob: BreachOnEveryEvent()
        context = await started(pipeline)
        for batch in BATCHES:
            publisher.failures = 1  # written, then the bus is down: the batch comes again
            with pytest.raises(ConnectionError):
                await pipeline.on_batch(context, batch)
            await pipeline.on_batch(context, batch)
        assert _docs_without_processing_time(await _stored(store)) == reference
        assert len(publisher.published) == 9 and context.checkpoints == [2, 5, 8]


async def test_a_transient_failure_after_a_split_retries_with_the_watermark_before_it(
    tmp_path: Path,
) -> None:
    reference = await _reference(tmp_path)
    async with SqliteStore(tmp_path / "s.db") as store:
        pipeline = make_pipeline(store)
        context = await started(pipeline)
        write = store.write
        calls = 0

        async def poison_then_unavailable(documents, quarantined):  # type: ignore[no-untyped-def]
            nonlocal calls
            calls += 1
            # The batch fails, so do its second half [t1, t2]; t0 then t1 land (the watermark
            # passes t0 + lateness), then t2 meets a throttled store and the batch comes again.
            if calls in (1, 3):
                raise StoreError("document too large")
            if calls == 5:
                raise StoreUnavailable("throttled")
            return await write(documents, quarantined)

        store.write = poison_then_unavailable  # type: ignore[method-assign]
        with pytest.raises(StoreUnavailable):
            await pipeline.on_batch(context, BATCHES[0])
        for batch in BATCHES:
            await pipeline.on_batch(context, batch)
        assert _docs_without_processing_time(await _stored(store)) == reference


class CheckpointKilled(Exception):
    """The process died after the detector snapshot, before the source checkpoint."""


async def _killed_between_snapshot_and_checkpoint(store: SqliteStore) -> None:
    """Batch 0 processed and checkpointed at 2; batch 1 stored and snapshotted, then killed."""
    first = make_pipeline(store)
    context = await started(first)
    await first.on_batch(context, BATCHES[0])

    async def killed(event: ReceivedEvent) -> None:
        raise CheckpointKilled

    context.checkpoint = killed  # type: ignore[method-assign]
    with pytest.raises(CheckpointKilled):
        await first.on_batch(context, BATCHES[1])


async def test_a_kill_between_snapshot_and_checkpoint_stores_what_a_clean_run_stores(
    tmp_path: Path,
) -> None:
    reference = await _reference(tmp_path)
    async with SqliteStore(tmp_path / "s.db") as store:
        await _killed_between_snapshot_and_checkpoint(store)
        snapshot = await store.load_state("$Default", "0")
        assert snapshot is not None and snapshot.covered_sequence == 5  # the snapshot landed

        restarted, again = make_pipeline(store), Context(checkpoints=[2])
        await restarted.on_partition_initialize(again)
        await restarted.on_batch(again, BATCHES[1])  # read again from the checkpoint
        await restarted.on_batch(again, BATCHES[2])
        assert _docs_without_processing_time(await _stored(store)) == reference
        hot = restarted._partitions["0"].hot
        assert isinstance(hot, RecordingHotPath) and hot.seen == list(range(9))


@dataclass
class HeadContext(Context):
    """A partition whose last enqueued event is ``head``."""

    head: int = -1

    async def last_enqueued_sequence(self) -> int | None:
        return self.head


async def test_events_a_snapshot_covers_still_move_the_lag_and_the_checkpoint(
    tmp_path: Path,
) -> None:
    """Killed between the snapshot and the checkpoint at the end of the stream: redelivered,
    the covered events bring nothing new, yet the partition must catch up (``--until-idle``
    waits for a lag of 0 and would wait forever)."""
    async with SqliteStore(tmp_path / "s.db") as store:
        await _killed_between_snapshot_and_checkpoint(store)

        restarted = make_pipeline(store)
        again = HeadContext(checkpoints=[2], head=BATCHES[1][-1].sequence)
        await restarted.on_partition_initialize(again)
        assert await restarted.stats.lag() == {"0": 3}
        await restarted.on_batch(again, BATCHES[1])
        assert await restarted.stats.lag() == {"0": 0}
        assert again.checkpoints == [2, 5]
        assert await store.count("telemetry") == 6


async def test_future_skew_counts_from_the_enqueued_time_not_from_now(tmp_path: Path) -> None:
    async with SqliteStore(tmp_path / "s.db") as store:
        pipeline = make_pipeline(store, hot=False)
        context = Context()
        await pipeline.on_partition_initialize(context)
        enqueued = T0  # an hour ago: both timestamps are in the past by now
        ahead = [
            ReceivedEvent(body(n, timestamp=(T0 + timedelta(minutes=m)).isoformat()), "0", n,
                          enqueued, str(n))
            for n, m in enumerate([10, 20])
        ]  # fmt: skip
        await pipeline.on_batch(context, ahead)
        assert [doc.trace_id for doc in await _stored(store)] == ["t0"]
        [record] = [r async for r in store.quarantine_records()]
        assert (record.sequence, record.issues[0].code) == (1, "timestamp_in_future")


async def test_one_event_from_a_clock_far_ahead_does_not_make_the_rest_late(
    tmp_path: Path,
) -> None:
    async with SqliteStore(tmp_path / "s.db") as store:
        pipeline = make_pipeline(store, hot=False)
        context = Context()
        await pipeline.on_partition_initialize(context)
        batch = [
            received(0),
            received(1, body(1, timestamp=(T0 + timedelta(minutes=14)).isoformat())),
        ]
        batch += [received(i) for i in range(2, 6)]
        await pipeline.on_batch(context, batch)
        assert [doc.trace_id for doc in await _stored(store) if doc.ingest.late] == []


QUOTED_USER = "alice@example.com"


class QuotingStore(SqliteStore):
    """Refuses a document by quoting its event, as a store's error may."""

    async def write(self, documents, quarantined):  # type: ignore[no-untyped-def]
        for doc in documents:
            if doc.trace_id == "quoted":
                raise StoreError(f"cannot store {doc.trace_id} of user {QUOTED_USER}")
        return await super().write(documents, quarantined)


async def test_a_processing_error_never_keeps_a_raw_user_id(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with QuotingStore(tmp_path / "s.db") as store:
        pipeline = make_pipeline(store, hot=False)
        context = await started(pipeline)
        quoted = body(1, trace_id="quoted", user_id="alice@example.com")
        await pipeline.on_batch(context, [received(0), received(1, quoted)])

        [record] = [r async for r in store.quarantine_records()]
        message = record.issues[0].message
        assert "alice" not in message and "alice" not in record.raw
        hashed = pipeline.enricher.user_hash("alice@example.com")  # as its documents' user_hash
        assert f"of user {hashed}" in message and hashed in record.raw
        # Nor logs it: the error's traceback ended in the exception's own message.
        logged = [logging.Formatter().format(r) for r in caplog.records]
        assert any("processing it failed" in line for line in logged)
        assert not [line for line in logged if "alice" in line]
        assert any(f"of user {hashed}" in line and "Traceback" in line for line in logged)


class RefusingPublisher(Publisher):
    """Refuses for good every batch holding breach ``b20`` (a message the bus cannot take)."""

    async def publish(self, breaches: Sequence[Breach]) -> None:
        if any(b.breach_id == "b20" for b in breaches):
            raise AlertBusError("breach message does not fit into an empty batch")
        await super().publish(breaches)


async def test_a_breach_the_bus_refuses_for_good_is_kept_and_the_partition_moves_on(
    tmp_path: Path,
) -> None:
    async with SqliteStore(tmp_path / "s.db") as store:
        publisher = RefusingPublisher()
        pipeline = make_pipeline(store, publisher)
        context = await started(pipeline)
        await pipeline.on_batch(context, [received(i) for i in range(40)])

        assert publisher.published == ["b10", "b30", "b40"]
        assert context.checkpoints == [39] and await store.count("telemetry") == 40
        [record] = [r async for r in store.quarantine_records()]
        assert record.issues[0].code == "breach_unpublishable"
        assert orjson.loads(record.raw)["breach_id"] == "b20"
        assert "does not fit" in record.issues[0].message


async def test_a_bus_that_is_down_still_fails_the_batch(tmp_path: Path) -> None:
    async with SqliteStore(tmp_path / "s.db") as store:
        pipeline = make_pipeline(store, Publisher(failures=1))
        context = await started(pipeline)
        with pytest.raises(ConnectionError):
            await pipeline.on_batch(context, [received(i) for i in range(10)])
        assert context.checkpoints == [] and [r async for r in store.quarantine_records()] == []


@pytest.mark.parametrize("checkpointed", [None, 41])
async def test_a_checkpoint_without_a_snapshot_on_a_source_that_cannot_rewind_is_said_loudly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, checkpointed: int | None
) -> None:
    # Every checkpoint follows a saved snapshot: a checkpoint without one means the store lost
    # its snapshots (the state container emptied or created again), not a first start.
    context = Context(rewindable=False, checkpoints=[] if checkpointed is None else [41])
    async with SqliteStore(tmp_path / "s.db") as store:
        pipeline = make_pipeline(store)
        with caplog.at_level(logging.ERROR, logger="stream.pipeline"):
            await pipeline.on_partition_initialize(context)
    said = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    if checkpointed is None:
        assert said == []  # a first start
    else:
        assert len(said) == 1 and "checkpoint is at sequence 41" in said[0]
        assert "lost its snapshots" in said[0]


class FullDiskStore(SqliteStore):
    """Its snapshots fail ``failures`` times as on a full disk."""

    def __init__(self, path: Path, failures: int) -> None:
        super().__init__(path)
        self.failures = failures

    async def save_state(self, snapshot, *, replace=False):  # type: ignore[no-untyped-def]
        if self.failures:
            self.failures -= 1
            raise StoreUnavailable("save state: SQLite: database or disk is full", retryable=True)
        return await super().save_state(snapshot, replace=replace)


async def test_idle_checkpoints_on_a_full_disk_are_said_once_and_their_end_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Tried at every idle turn (0.1 s), each failure was a warning with its traceback."""
    caplog.set_level(logging.WARNING, logger="stream.pipeline")
    async with FullDiskStore(tmp_path / "s.db", failures=20) as store:
        pipeline = make_pipeline(store, hot=False)
        pipeline.checkpoint_interval_s = 3600
        context = await started(pipeline)
        await pipeline.on_batch(context, [received(i) for i in range(5)])
        pipeline.checkpoint_interval_s = 0
        for _ in range(21):
            await pipeline.on_idle(context)
        assert context.checkpoints == [4]
    assert [(r.levelno, r.getMessage(), r.exc_info) for r in caplog.records] == [
        (
            logging.ERROR,
            "idle checkpoints failing: save state: SQLite: database or disk is full"
            " (partition 0); retrying until they succeed, nothing is lost",
            None,
        ),
        (logging.WARNING, "idle checkpoints succeed again, after 20 failures over 0 s", None),
    ]


async def test_without_a_checkpoint_the_lag_counts_from_the_snapshot(tmp_path: Path) -> None:
    """Event Hubs resumes a partition without a checkpoint after its snapshot: the events the
    snapshot covers are not waiting. Counted from the missing checkpoint, the whole partition
    was shown as lag (and ``--until-idle`` never stopped)."""
    async with SqliteStore(tmp_path / "s.db") as store:
        first = make_pipeline(store)
        await first.on_batch(await started(first), [received(i) for i in range(50)])

        again = make_pipeline(store)
        checkpoint_lost = HeadContext(rewindable=False, head=51)
        await again.on_partition_initialize(checkpoint_lost)
        assert await again.stats.lag() == {"0": 2}


async def test_a_snapshot_past_the_partitions_end_is_set_back_and_its_events_detected(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The event hub deleted and created again: its numbers start again, below what the
    snapshot covers. Its events were all taken for ones the snapshot covers (stored, kept
    from the detectors), and the snapshot, never moved back, kept it so after a restart."""
    caplog.set_level(logging.WARNING, logger="stream.pipeline")
    async with SqliteStore(tmp_path / "s.db") as store:
        first = make_pipeline(store)
        context = await started(first)
        await first.on_batch(context, [received(i) for i in range(50)])
        saved = await store.load_state("$Default", "0")
        assert saved is not None and saved.covered_sequence == 49

        again = make_pipeline(store)
        created_again = HeadContext(rewindable=False, head=9)
        await again.on_partition_initialize(created_again)
        snapshot = await store.load_state("$Default", "0")
        assert snapshot is not None and snapshot.covered_sequence == -1
        new = [received(100 + i) for i in range(10)]
        new = [ReceivedEvent(e.body, "0", i, e.enqueued_time, str(i)) for i, e in enumerate(new)]
        await again.on_batch(created_again, new)

        hot = again._partitions["0"].hot
        # The detectors kept their state and saw the new events.
        assert isinstance(hot, RecordingHotPath) and hot.seen == list(range(50)) + list(range(10))
        stored = await store.load_state("$Default", "0")
        assert stored is not None and stored.covered_sequence == 9
        assert created_again.checkpoints == [9]
    assert [r.getMessage() for r in caplog.records] == [
        "partition 0: the store's snapshot covers sequence 49, past the partition's last event "
        "9 (its numbers started again): its events go to the detectors from its start, and the "
        "detectors keep their state"
    ]


@dataclass
class LetGoContext(Context):
    """A partition its source let go of, knowing why."""

    async def owned(self) -> bool:
        raise PartitionLost("the SDK closed partition 0's receiver: its receive failed (boom)")


async def test_a_partition_let_go_says_why_not_that_another_processor_owns_it(
    tmp_path: Path,
) -> None:
    async with SqliteStore(tmp_path / "s.db") as store:
        pipeline = make_pipeline(store, hot=False)
        context = LetGoContext()
        await pipeline.on_partition_initialize(context)
        with pytest.raises(PartitionLost) as raised:
            await pipeline.on_batch(context, [received(0)])
        assert str(raised.value) == (
            "the SDK closed partition 0's receiver: its receive failed (boom): snapshot and "
            "checkpoint at sequence 0 not written"
        )
        assert await store.load_state("$Default", "0") is None
