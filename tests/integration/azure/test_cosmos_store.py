"""CosmosStore against cosmosdb-server, and through the fault proxy for throttling and outages.

Documents come from the simulator through the real decoder and enricher, so the stored shapes
are the processor's own. Each test gets its own database: counts see only its own writes.
"""

from __future__ import annotations

import asyncio
import gc
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, given, settings

from common.retry import Backoff
from schemas import AppDirectory, Breach, QuarantineRecord, TelemetryDocument
from schemas.telemetry import MAX_ID_CHARS
from store.cosmos import CosmosStore, cosmos_store
from store.exceptions import StoreError, StoreUnavailable
from store.ports import StateSnapshot
from store.sqlite import SqliteStore
from stream.decode import Decoder
from stream.enrich import Enricher
from stream.hotpath import HotPath
from stream.pipeline import Pipeline
from stream.ports import CloseReason, ReceivedEvent
from stream.producers.simulator import Simulator
from stream.stats import ProcessorStats
from tests.emulators.fault_proxy import FaultProxy
from tests.emulators.npm_fixtures import CosmosServer
from tests.unit.store import event_id_conflicts
from tests.unit.store.event_id_conflicts import check_event_id_conflicts
from tests.unit.store.upsert_model import BATCHES, Read, check_upsert_model

pytestmark = pytest.mark.integration

# Fifteen seconds either side of a UTC midnight: windows span two partitions per app, and at
# 10 events/s every tenth event falls on a whole second ("…:00Z" sorts after "…:00.1Z" as text).
MIDNIGHT = datetime(2026, 11, 21, tzinfo=UTC)
START = MIDNIGHT - timedelta(seconds=15)
FAST_RETRY = Backoff(initial_s=0.01, max_s=0.2, max_retries=8)


@dataclass(frozen=True)
class Batch:
    documents: list[TelemetryDocument]
    quarantined: list[QuarantineRecord]


def simulated_batch(
    count: int,
    *,
    seed: int = 1,
    invalid_fraction: float = 0.0,
    apps: int = 3,
    event_ids: list[str] | None = None,
) -> Batch:
    """``count`` simulated inputs decoded and enriched as the processor does (the first events
    carrying ``event_ids`` when given)."""
    simulator = Simulator(
        apps=apps, rate=10.0, seed=seed, start=START, invalid_fraction=invalid_fraction
    )
    decoder = Decoder()
    enricher = Enricher(AppDirectory(), b"test-key", "eventhubs")
    now = datetime.now(UTC)
    batch = Batch([], [])
    for sequence, simulated in enumerate(simulator.events(count)):
        body = simulated.body
        if event_ids and sequence < len(event_ids):
            body = orjson.dumps({**orjson.loads(body), "event_id": event_ids[sequence]})
        position = ReceivedEvent(body, "0", sequence, now, str(sequence * 100))
        decoded = decoder.decode(body, now)
        for accepted in decoded.accepted:
            batch.documents.append(
                enricher.document(accepted.event, position, accepted.index, now, False)
            )
        for rejected in decoded.rejected:
            # Distinct received times, so "newest first" has one right answer.
            received = now - timedelta(milliseconds=sequence)
            batch.quarantined.append(enricher.quarantine(rejected, position, received))
    return batch


def open_store(endpoint: str, key: str, database: str, **options: object) -> CosmosStore:
    return CosmosStore(endpoint, key, database=database, **options)  # type: ignore[arg-type]


@pytest.fixture
async def store(cosmos_server: CosmosServer) -> AsyncIterator[CosmosStore]:
    database = f"store-{uuid.uuid4().hex[:12]}"
    async with open_store(cosmos_server.endpoint, cosmos_server.key, database) as opened:
        try:
            yield opened
        finally:
            await _drop(cosmos_server.endpoint, cosmos_server.key, database)


@pytest.fixture
async def proxied_store(
    cosmos_fault_proxy: FaultProxy, cosmos_server: CosmosServer
) -> AsyncIterator[CosmosStore]:
    database = f"faults-{uuid.uuid4().hex[:12]}"
    async with open_store(
        cosmos_fault_proxy.endpoint, cosmos_server.key, database, backoff=FAST_RETRY
    ) as opened:
        try:
            yield opened
        finally:
            cosmos_fault_proxy.reset()
            await _drop(cosmos_server.endpoint, cosmos_server.key, database)
    # Cancelled and failed SDK requests leave cyclic garbage; a GC pass that collects it in the
    # middle of an ast.parse (pytest rewriting a lazily imported module) makes CPython 3.11.7
    # raise "SystemError: AST constructor recursion depth mismatch" (seen once here, and in
    # test_servicebus_faults.py). Collect it now instead.
    gc.collect()


async def _drop(endpoint: str, key: str, database: str) -> None:
    from azure.cosmos.aio import CosmosClient

    async with CosmosClient(endpoint, key) as client:
        await client.delete_database(database)


async def _stored_ids(store: CosmosStore) -> list[tuple[str, str]]:
    container = store._container_named(store.telemetry_container)
    return [
        (item["pk"], item["id"]) async for item in container.query_items("SELECT c.pk, c.id FROM c")
    ]


async def test_written_documents_read_back_equal(store: CosmosStore) -> None:
    batch = simulated_batch(60, invalid_fraction=0.2)
    assert batch.documents and batch.quarantined  # the batch really has both kinds

    await store.write(batch.documents, batch.quarantined)

    for document in batch.documents:
        assert await store.get_telemetry(document.id, document.pk) == document
    assert await store.count("telemetry") == len(batch.documents)
    assert await store.count("quarantine") == len(batch.quarantined)


async def test_rewriting_a_batch_changes_nothing(store: CosmosStore) -> None:
    batch = simulated_batch(40, invalid_fraction=0.2)
    await store.write(batch.documents, batch.quarantined)

    await store.write(batch.documents, batch.quarantined)
    await store.write(batch.documents[:10], [])

    assert await store.count("telemetry") == len(batch.documents)
    assert await store.count("quarantine") == len(batch.quarantined)
    ids = await _stored_ids(store)
    assert sorted(ids) == sorted((d.pk, d.id) for d in batch.documents)


async def window_ids(store: CosmosStore, documents: list[TelemetryDocument]) -> list[str]:
    """The ids the day's window read of the documents' apps gives, sorted."""
    apps = sorted({d.app_id for d in documents})
    return sorted(
        [
            doc.id
            async for page in store.telemetry_window(apps, START, MIDNIGHT + timedelta(1))
            for doc in page
        ]
    )


async def test_ids_cosmos_refuses_are_stored_and_read_back(store: CosmosStore) -> None:
    # Producers choose event_id; azure-cosmos refuses some characters in ids outright.
    awkward = ["order/42", "a?b#c", "back\\slash", "tab\there", "trailing ", "100%", "~7E"]
    batch = simulated_batch(len(awkward) + 3, event_ids=awkward)
    assert sorted(d.id for d in batch.documents[: len(awkward)]) == sorted(awkward)

    await store.write(batch.documents, [])
    await store.write(batch.documents, [])

    for document in batch.documents:
        assert await store.get_telemetry(document.id, document.pk) == document
    assert await store.count("telemetry") == len(batch.documents)
    assert await window_ids(store, batch.documents) == sorted(d.id for d in batch.documents)
    state = StateSnapshot("group/with?odd#chars", "partition/0", 5, b"s")
    await store.save_state(state)
    assert await store.load_state(state.consumer_group, state.partition) == state


async def test_event_ids_beyond_cosmos_id_limit_are_stored_and_read_back(
    store: CosmosStore,
) -> None:
    # The contract allows 256 characters; Cosmos DB takes ids of at most 1,023 UTF-8 bytes
    # (its limit is in bytes; cosmosdb-server does not enforce it, so the ids sent are checked
    # here). Four-byte characters, and escapes ('/' is sent as '~2F'), go beyond it.
    longest = ["\U0001f600" * MAX_ID_CHARS, "/" * MAX_ID_CHARS, "\U0001f600" * 255 + "/"]
    batch = simulated_batch(len(longest) + 1, event_ids=longest)
    assert [d.id for d in batch.documents[: len(longest)]] == longest

    assert await store.write(batch.documents, []) == []
    assert await store.write(batch.documents, []) == []

    ids = await _stored_ids(store)
    assert len(ids) == len(batch.documents)
    assert all(len(item_id.encode()) <= 1023 for _, item_id in ids)
    for document in batch.documents:
        assert await store.get_telemetry(document.id, document.pk) == document
    assert await window_ids(store, batch.documents) == sorted(d.id for d in batch.documents)
    # Another event under a long event_id is still refused, not stored over the first.
    first = event_id_conflicts.document(1, event_id=longest[0], latency_ms=100.0)
    other = event_id_conflicts.document(2, event_id=longest[0], latency_ms=999.0)
    assert await store.write([first], []) == []
    assert await store.write([other], []) == [other]
    assert await store.get_telemetry(first.id, first.pk) == first


async def test_an_event_id_held_by_another_event_is_refused_and_a_reread_replaces(
    store: CosmosStore,
) -> None:
    await check_event_id_conflicts(store)


# One database for the examples (a database each would cost seconds): each writes an app of its
# own, so its pks and count are its own.
@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(batches=BATCHES)
async def test_the_upsert_decides_as_its_rule_on_generated_batches(
    store: CosmosStore, batches: list[list[Read]]
) -> None:
    await check_upsert_model(store, batches, app_id=f"app-{uuid.uuid4().hex[:8]}")


def placed_documents(positions: list[tuple[str, str, int]]) -> list[TelemetryDocument]:
    """A simulated event's document at each (source, partition, sequence)."""
    simulator = Simulator(apps=3, rate=10.0, seed=5, start=START, invalid_fraction=0.0)
    decoder = Decoder()
    now = datetime.now(UTC)
    documents = []
    for (source, partition, sequence), simulated in zip(
        positions, simulator.events(len(positions)), strict=True
    ):
        enricher = Enricher(AppDirectory(), b"test-key", source)
        position = ReceivedEvent(simulated.body, partition, sequence, now, str(sequence))
        [accepted] = decoder.decode(simulated.body, now).accepted
        documents.append(enricher.document(accepted.event, position, 0, now, False))
    return documents


async def test_marks_before_come_in_whole_sequences_highest_first(store: CosmosStore) -> None:
    """A message of several events is one sequence: a page never ends inside one (the rest
    of it would be skipped), and a message larger than a page comes whole."""
    # On partition "1": sequences 9 ×3 (one message), 8, 7 ×2, 6, 5 ×4 and 3; beside them a
    # document of another source and one of another partition at the same positions.
    shape = [9, 9, 9, 8, 7, 7, 6, 5, 5, 5, 5, 3]
    documents = placed_documents(
        [("eventhubs", "1", sequence) for sequence in shape]
        + [("ndjson", "1", 8), ("eventhubs", "2", 8)]
    )
    await store.write(documents, [])
    placed = documents[: len(shape)]
    times = {(doc.ingest.sequence, doc.timestamp, doc.ingest.enqueued_time) for doc in placed}

    async def pages(below: int, limit: int) -> list[list[int]]:
        found: list[list[int]] = []
        while below >= 0:
            marks = await store.marks_before("eventhubs", "1", below, limit)
            if not marks:
                break
            assert {(m.sequence, m.timestamp, m.enqueued_time) for m in marks} <= times
            found.append([m.sequence for m in marks])
            below = marks[-1].sequence - 1
        return found

    # A full page leaves its lowest sequence to the next call unless that is all it holds.
    assert await pages(9, 4) == [[9, 9, 9], [8, 7, 7], [6], [5, 5, 5, 5], [3]]
    assert await pages(9, 2) == [[9, 9, 9], [8], [7, 7], [6], [5, 5, 5, 5], [3]]
    assert await pages(8, 100) == [[8, 7, 7, 6, 5, 5, 5, 5, 3]]
    assert await pages(2, 100) == []
    assert await store.marks_before("eventhubs", "3", 9, 10) == []


async def test_missing_document_is_none(store: CosmosStore) -> None:
    batch = simulated_batch(1)
    await store.write(batch.documents, [])
    document = batch.documents[0]

    assert await store.get_telemetry("no-such-id", document.pk) is None
    assert await store.get_telemetry(document.id, "no-such-pk") is None
    assert await store.get_telemetry(document.id, document.pk) == document


async def test_quarantine_records_newest_first(store: CosmosStore) -> None:
    batch = simulated_batch(80, invalid_fraction=0.3)
    assert len(batch.quarantined) > 5
    await store.write([], batch.quarantined)

    newest_first = sorted(batch.quarantined, key=lambda r: r.received_at, reverse=True)
    assert [r async for r in store.quarantine_records(limit=5)] == newest_first[:5]
    everything = [r async for r in store.quarantine_records(limit=1000)]
    assert everything == newest_first


async def test_state_round_trip(store: CosmosStore) -> None:
    blob = bytes(range(256)) * 40
    first = StateSnapshot("$Default", "3", 2**62 + 1, blob)

    assert await store.load_state("$Default", "3") is None
    await store.save_state(first)
    assert await store.load_state("$Default", "3") == first

    second = StateSnapshot("$Default", "3", 2**62 + 900, b"")
    await store.save_state(second)
    other_group = StateSnapshot("replay", "3", 7, b"x")
    await store.save_state(other_group)

    assert await store.load_state("$Default", "3") == second
    assert await store.load_state("replay", "3") == other_group
    assert await store.load_state("$Default", "4") is None


async def test_a_snapshot_never_replaces_one_covering_a_later_position(
    store: CosmosStore,
) -> None:
    # The late batch of an owner that lost the partition saves after the new owner did.
    newer = StateSnapshot("$Default", "5", 120, b"new owner")
    await store.save_state(newer)
    await store.save_state(StateSnapshot("$Default", "5", 80, b"old owner"))
    assert await store.load_state("$Default", "5") == newer
    again = StateSnapshot("$Default", "5", 120, b"same position again")
    await store.save_state(again)
    assert await store.load_state("$Default", "5") == again
    # Writers racing on one item: each write is conditional on what it read, so the one
    # covering the latest position is what stays, whatever their order.
    racing = [
        StateSnapshot("$Default", "5", sequence, b"%d" % sequence) for sequence in range(121, 133)
    ]
    await asyncio.gather(*(store.save_state(snapshot) for snapshot in reversed(racing)))
    assert await store.load_state("$Default", "5") == racing[-1]
    # Unless replaced: the partition's numbers started again (its event hub created again).
    restarted = StateSnapshot("$Default", "5", -1, b"numbers start again")
    await store.save_state(restarted, replace=True)
    assert await store.load_state("$Default", "5") == restarted


async def test_window_pages_in_time_order_across_days(store: CosmosStore, tmp_path: Path) -> None:
    batch = simulated_batch(300, apps=3)
    days = {d.pk.rsplit(":", 1)[1] for d in batch.documents}
    assert days == {"2026-11-20", "2026-11-21"}
    await store.write(batch.documents, [])
    # The embedded store is the reference behaviour: same pages, same order.
    async with SqliteStore(tmp_path / "reference.db") as reference:
        await reference.write(batch.documents, [])

        apps = sorted({d.app_id for d in batch.documents}, reverse=True)
        # Both bounds on whole seconds that carry an event: start is inclusive, end exclusive.
        start, end = START + timedelta(seconds=5), MIDNIGHT + timedelta(seconds=8)
        assert any(d.timestamp == start for d in batch.documents)
        assert any(d.timestamp == end for d in batch.documents)

        pages = [page async for page in store.telemetry_window(apps, start, end, page_size=7)]
        expected = [
            page async for page in reference.telemetry_window(apps, start, end, page_size=7)
        ]

    assert pages == expected
    flat = [doc for page in pages for doc in page]
    wanted = sorted(
        (d for d in batch.documents if start <= d.timestamp < end),
        key=lambda d: (apps.index(d.app_id), d.timestamp, d.id),
    )
    assert flat == wanted
    assert len(flat) > 3 * 7  # several pages per app
    for app in apps:
        sizes = [len(page) for page in pages if page[0].app_id == app]
        assert all(size == 7 for size in sizes[:-1]) and 1 <= sizes[-1] <= 7
        assert all(doc.app_id == app for page in pages if page[0].app_id == app for doc in page)


async def test_empty_and_unknown_windows(store: CosmosStore) -> None:
    batch = simulated_batch(30)
    await store.write(batch.documents, [])
    app = batch.documents[0].app_id

    assert [p async for p in store.telemetry_window([app], START, START)] == []
    assert [p async for p in store.telemetry_window(["no-such-app"], START, MIDNIGHT)] == []
    future = MIDNIGHT + timedelta(days=3)
    assert [p async for p in store.telemetry_window([app], future, future + timedelta(1))] == []


async def test_count_of_an_unknown_kind_is_an_error(store: CosmosStore) -> None:
    with pytest.raises(StoreError, match="unknown record kind"):
        await store.count("breaches")


async def test_closed_or_unopened_store_raises(cosmos_server: CosmosServer) -> None:
    database = f"closed-{uuid.uuid4().hex[:12]}"
    unopened = open_store(cosmos_server.endpoint, cosmos_server.key, database)
    with pytest.raises(StoreError, match="not open"):
        await unopened.count("telemetry")

    async with open_store(cosmos_server.endpoint, cosmos_server.key, database) as store:
        assert await store.count("telemetry") == 0
    with pytest.raises(StoreError, match="closed"):
        await store.count("telemetry")
    with pytest.raises(StoreError, match="closed"):
        await store.write(simulated_batch(1).documents, [])
    with pytest.raises(StoreError, match="closed"):
        await store.__aenter__()
    await _drop(cosmos_server.endpoint, cosmos_server.key, database)


async def test_factory_opens_existing_containers_without_creating(
    cosmos_server: CosmosServer, store: CosmosStore
) -> None:
    from pydantic import SecretStr

    from store.cosmos_config import CosmosSettings

    batch = simulated_batch(5)
    await store.write(batch.documents, [])
    settings = CosmosSettings(
        endpoint=cosmos_server.endpoint,
        key=SecretStr(cosmos_server.key),
        database=store.database,
        create_if_missing=False,
        max_concurrency=4,
        max_retries=2,
        enable_endpoint_discovery=False,
    )
    async with cosmos_store(settings) as existing:
        assert (existing.max_concurrency, existing.backoff.max_retries) == (4, 2)
        assert existing.enable_endpoint_discovery is False
        assert await existing.count("telemetry") == len(batch.documents)
        document = batch.documents[0]
        assert await existing.get_telemetry(document.id, document.pk) == document

    missing = settings.model_copy(update={"database": f"absent-{uuid.uuid4().hex[:8]}"})
    with pytest.raises(StoreError) as failure:
        async with cosmos_store(missing):
            pass
    assert failure.value.retryable is False


async def test_a_failed_open_releases_the_credential(cosmos_server: CosmosServer) -> None:
    closed: list[bool] = []

    async def close_credential() -> None:
        closed.append(True)

    absent = CosmosStore(
        cosmos_server.endpoint,
        cosmos_server.key,
        database=f"absent-{uuid.uuid4().hex[:8]}",
        create_if_missing=False,
        close_credential=close_credential,
    )
    with pytest.raises(StoreError, match="answered 404"):
        async with absent:
            pass
    assert closed == [True]
    with pytest.raises(StoreError, match="closed"):
        await absent.__aenter__()


async def test_throttle_burst_while_writing_stores_every_document_once(
    cosmos_fault_proxy: FaultProxy, proxied_store: CosmosStore
) -> None:
    batch = simulated_batch(200)
    cosmos_fault_proxy.throttle(60, retry_after_ms=20, methods={"POST"})

    await proxied_store.write(batch.documents, [])

    assert cosmos_fault_proxy.injected("throttle") == 60
    assert await proxied_store.count("telemetry") == len(batch.documents)
    ids = await _stored_ids(proxied_store)
    assert sorted(ids) == sorted((d.pk, d.id) for d in batch.documents)


async def test_unavailable_burst_while_writing_stores_every_document_once(
    cosmos_fault_proxy: FaultProxy, proxied_store: CosmosStore
) -> None:
    batch = simulated_batch(200)
    # More 503s than the SDK's one retry per request absorbs: the store's own retries must
    # carry the batch through.
    cosmos_fault_proxy.unavailable(60, methods={"POST"})

    await proxied_store.write(batch.documents, [])

    assert cosmos_fault_proxy.injected("unavailable") == 60
    assert await proxied_store.count("telemetry") == len(batch.documents)
    ids = await _stored_ids(proxied_store)
    assert sorted(ids) == sorted((d.pk, d.id) for d in batch.documents)


async def test_long_outage_raises_unavailable_and_a_retry_after_recovery_stores_all(
    cosmos_fault_proxy: FaultProxy, proxied_store: CosmosStore
) -> None:
    batch = simulated_batch(200)
    proxied_store.backoff = Backoff(initial_s=0.01, max_s=0.05, max_retries=2)
    cosmos_fault_proxy.unavailable(100_000, methods={"POST"})

    with pytest.raises(StoreUnavailable) as failure:
        await proxied_store.write(batch.documents, [])

    assert failure.value.retryable is True
    assert failure.value.retry_after is not None and failure.value.retry_after > 0
    assert "503" in str(failure.value)
    cosmos_fault_proxy.reset()

    await proxied_store.write(batch.documents, [])

    assert await proxied_store.count("telemetry") == len(batch.documents)
    ids = await _stored_ids(proxied_store)
    assert sorted(ids) == sorted((d.pk, d.id) for d in batch.documents)


async def test_throttled_reads_and_state_are_retried(
    cosmos_fault_proxy: FaultProxy, proxied_store: CosmosStore
) -> None:
    batch = simulated_batch(20)
    await proxied_store.write(batch.documents, [])
    snapshot = StateSnapshot("$Default", "0", 19, b"state")
    cosmos_fault_proxy.throttle(3, retry_after_ms=10)
    cosmos_fault_proxy.unavailable(3)

    await proxied_store.save_state(snapshot)
    assert await proxied_store.load_state("$Default", "0") == snapshot
    document = batch.documents[0]
    assert await proxied_store.get_telemetry(document.id, document.pk) == document
    assert await proxied_store.count("telemetry") == len(batch.documents)

    assert cosmos_fault_proxy.injected("throttle") == 3
    assert cosmos_fault_proxy.injected("unavailable") == 3


@dataclass
class Context:
    partition_id: str = "0"
    rewindable: bool = False
    checkpoints: list[int] = field(default_factory=list)

    async def checkpoint(self, event: ReceivedEvent) -> None:
        self.checkpoints.append(event.sequence)

    async def owned(self) -> bool:
        return True

    async def last_enqueued_sequence(self) -> int | None:
        return None

    async def checkpointed_sequence(self) -> int | None:
        return self.checkpoints[-1] if self.checkpoints else None

    async def resume_after(self, sequence: int) -> bool:
        return False


@dataclass
class Publisher:
    published: list[str] = field(default_factory=list)

    async def publish(self, breaches: Sequence[Breach]) -> None:
        self.published.extend(b.breach_id for b in breaches)


def cosmos_pipeline(store: CosmosStore, publisher: Publisher) -> Pipeline:
    apps = AppDirectory()
    return Pipeline(
        store=store,
        decoder=Decoder(),
        enricher=Enricher(apps, b"test-key", "eventhubs"),
        consumer_group="$Default",
        lateness=timedelta(seconds=300),
        checkpoint_interval_s=0,
        stats=ProcessorStats(),
        hot_path=lambda blob: HotPath.restore(apps, blob) if blob else HotPath(apps),
        publisher=publisher,
    )


async def test_pipeline_checkpoints_after_durable_writes_and_resumes_from_cosmos_state(
    cosmos_fault_proxy: FaultProxy, proxied_store: CosmosStore, tmp_path: Path
) -> None:
    simulator = Simulator(apps=3, rate=10.0, seed=5, start=START, invalid_fraction=0.05)
    enqueued = datetime.now(UTC)
    events = [
        ReceivedEvent(e.body, "0", n, enqueued, str(n)) for n, e in enumerate(simulator.events(300))
    ]
    valid = sum(1 for e in simulator.events(300) if e.valid)
    first = cosmos_pipeline(proxied_store, Publisher())
    context = Context()
    await first.on_partition_initialize(context)
    cosmos_fault_proxy.throttle(20, retry_after_ms=10, methods={"POST"})
    cosmos_fault_proxy.unavailable(20, methods={"POST"})
    for start in range(0, 200, 100):
        await first.on_batch(context, events[start : start + 100])
    first_hot = first._partitions["0"].hot
    assert first_hot is not None
    detectors_then = first_hot.snapshot()
    await first.on_partition_close(context, CloseReason.SHUTDOWN)

    assert context.checkpoints == [99, 199]
    assert cosmos_fault_proxy.injected() == 40
    saved = await proxied_store.load_state("$Default", "0")
    assert saved is not None and saved.covered_sequence == 199 and len(saved.blob) > 100

    # A new owner restores the detectors from the Cosmos snapshot and goes on from there;
    # re-delivered events are stored again (idempotently) but not counted twice.
    second = cosmos_pipeline(proxied_store, Publisher())
    resumed = Context()
    await second.on_partition_initialize(resumed)
    second_hot = second._partitions["0"].hot
    assert second_hot is not None and second_hot.snapshot() == detectors_then
    await second.on_batch(resumed, events[150:300])
    detectors_after = second_hot.snapshot()
    await second.on_partition_close(resumed, CloseReason.SHUTDOWN)

    # The detectors end where an uninterrupted owner's end: restored, not started afresh.
    async with SqliteStore(tmp_path / "reference.db") as reference_store:
        reference = cosmos_pipeline(reference_store, Publisher())  # type: ignore[arg-type]
        await reference.on_partition_initialize(Context())
        await reference.on_batch(Context(), events[:300])
        reference_hot = reference._partitions["0"].hot
        assert reference_hot is not None and reference_hot.snapshot() == detectors_after

    assert resumed.checkpoints == [299]
    assert await proxied_store.count("telemetry") == valid
    assert await proxied_store.count("quarantine") == 300 - valid


# Values at the edges of what the decoder accepts (tests/unit/stream/test_value_gate.py): the
# store keeps and reads back every one of them, as the embedded store does.
EDGE_TAILS = [
    b',"metadata":{"x":18446744073709551615,"y":-9223372036854775808,"z":1.7976931348623157e308,'
    b'"w":9007199254740993,"v":-0.0}',
    b',"tokens":{"input":18446744073709551615,"output":18446744073709551615},"event_id":"e1"',
    b',"event_id":"e2","metadata":{"id":9223372036854775807}',
    b',"tokens":{"input":9007199254740993,"output":1}',
    b',"latency_ms":5e-324,"scores":{"s":1.7976931348623157e308,"t":-5e-324}',
    b',"input_text":"NUL \\u0000, non-character \\uffff, astral \\ud83d\\ude00"',
]


async def test_values_at_the_edges_of_the_contract_read_back_equal(store: CosmosStore) -> None:
    decoder = Decoder()
    enricher = Enricher(AppDirectory(), b"test-key", "eventhubs")
    now = datetime.now(UTC)
    documents = []
    for sequence, tail in enumerate(EDGE_TAILS):
        body = b'{"app_id":"edge","trace_id":"t%d","timestamp":"%s"%s}' % (
            sequence,
            MIDNIGHT.isoformat().encode(),
            tail,
        )
        decoded = decoder.decode(body, now)
        assert [r.issues for r in decoded.rejected] == []
        position = ReceivedEvent(body, "0", sequence, now, str(sequence))
        documents += [
            enricher.document(a.event, position, a.index, now, False) for a in decoded.accepted
        ]

    assert await store.write(documents, []) == []
    # Written again (a re-read batch): the same events, not others under their event_ids.
    assert await store.write(documents, []) == []
    assert await store.count("telemetry") == len(documents)

    for document in documents:
        read = await store.get_telemetry(document.id, document.pk)
        assert read == document
        # Integers stay integers, to the last digit: 2**64 - 1 is not 1.8446744073709552e19
        # (which equals 2**64), nor 9007199254740993 the double 9007199254740992.
        for key, value in document.metadata.items():
            if type(value) is int:
                assert type(read.metadata[key]) is int and read.metadata[key] == value, key
        assert repr(read.tokens) == repr(document.tokens)
        assert read.derived.tokens_total == document.derived.tokens_total
    window = [
        doc
        async for page in store.telemetry_window(["edge"], MIDNIGHT, MIDNIGHT + timedelta(1))
        for doc in page
    ]
    assert sorted(window, key=lambda d: d.trace_id) == documents
