"""EventHubsSource and EventHubsSink over the real azure-eventhub SDK, against the AMQP test
broker (Event Hubs) and Azurite (Blob checkpoints), driving the real Pipeline over SQLite.

Each test uses its own hub and checkpoint container (the servers are shared by the session).
"""

from __future__ import annotations

import asyncio
import base64
import functools
import gc
import hashlib
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from azure.cosmos.aio import CosmosClient
from azure.eventhub.aio import EventHubProducerClient
from azure.eventhub.amqp import AmqpAnnotatedMessage
from azure.eventhub.extensions.checkpointstoreblobaio import BlobCheckpointStore
from azure.storage.blob.aio import ContainerClient
from pydantic import SecretStr

from schemas import AppDirectory
from schemas.quarantine import MAX_QUARANTINE_RAW_BYTES
from store.cosmos import CosmosStore
from store.exceptions import ContainerNotFound
from store.ports import StateSnapshot
from store.sqlite import SqliteStore
from stream.config import ProcessorSettings
from stream.decode import Decoder
from stream.enrich import Enricher, document_id, partition_key
from stream.exceptions import PartitionLost, SourceError
from stream.pipeline import Pipeline
from stream.ports import CloseReason, EventSource, PartitionContext, ReceivedEvent
from stream.processor import Processor
from stream.producers.simulator import Simulator
from stream.pseudonyms import scrub_user_ids
from stream.sources.eventhubs_config import EventHubsSettings
from stream.sources.eventhubs_consumer import (
    CHECKPOINT_API_VERSION,
    SOURCE_NAME,
    EventHubsSource,
    PartitionPosition,
    partition_positions,
)
from stream.sources.eventhubs_partition import CheckpointStore
from stream.sources.eventhubs_producer import EventHubsSink
from stream.sources.subprocess_source import SubprocessSource
from stream.stats import ProcessorStats

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

PARTITIONS = ("0", "1", "2", "3")
# The pipeline's enricher: quarantine hashes user ids with its key.
ENRICHER = Enricher(AppDirectory(), b"test-key", SOURCE_NAME)
WAIT_S = 40.0
CONSUMER_GROUP = "$Default"


async def wait_for(condition: Callable[[], bool], what: str, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)


@dataclass
class Expected:
    """What the store must hold after every sent body was processed exactly once."""

    telemetry: set[tuple[str, str]] = field(default_factory=set)
    # Raw bodies of the invalid events (as the quarantine stores them), with multiplicity.
    quarantined: Counter[bytes] = field(default_factory=Counter)

    def add(self, bodies: list[tuple[str | None, bytes]]) -> None:
        decoder, now = Decoder(), datetime.now(UTC)
        for _, body in bodies:
            decoded = decoder.decode(body, now)
            for accepted in decoded.accepted:
                event = accepted.event
                self.telemetry.add(
                    (partition_key(event.app_id, event.timestamp), document_id(event))
                )
            for rejected in decoded.rejected:
                # Quarantine keeps a hash in place of any user_id (the pipeline's key).
                raw = scrub_user_ids(rejected.raw, ENRICHER.user_hash)
                self.quarantined[raw[:MAX_QUARANTINE_RAW_BYTES]] += 1

    @property
    def events(self) -> int:
        return len(self.telemetry) + sum(self.quarantined.values())


def simulated(count: int, seed: int) -> list[tuple[str | None, bytes]]:
    simulator = Simulator(
        apps=8,
        seed=seed,
        start=datetime.now(UTC) - timedelta(hours=1),
        invalid_fraction=0.05,
    )
    return [(event.app_id, event.body) for event in simulator.events(count)]


class ProcessedStats(ProcessorStats):
    """ProcessorStats that also adds up the events of every batch the pipeline processed, as
    it finishes it. ProcessorStats counts a batch only once a checkpoint covers it; a test
    that acts while batches are still in flight (not checkpointed yet) waits on this."""

    processed: int = 0

    def record_counts(
        self,
        partition_id: str,
        last_sequence: int,
        documents: int,
        quarantine_codes: Sequence[str],
        *args: Any,
        **kwargs: Any,
    ) -> None:
        self.processed += documents + len(quarantine_codes)
        super().record_counts(
            partition_id, last_sequence, documents, quarantine_codes, *args, **kwargs
        )


class Recorder:
    """BatchHandler in front of the Pipeline: records deliveries and closes, and can fail the
    next ``failures`` batches (before they reach the pipeline) to test redelivery."""

    def __init__(self, pipeline: Pipeline, stats: ProcessedStats) -> None:
        self.pipeline = pipeline
        self.stats = stats
        self.delivered: dict[str, list[int]] = {}
        self.closes: list[tuple[str, CloseReason]] = []
        # Partitions started (their initialisation done) and not closing: the pipeline holds
        # a partition from the start of its initialisation to the end of its close.
        self.holding: set[str] = set()
        self.failures = 0
        self.failed = 0
        self.empty_batches = 0
        # Skip the pipeline's close (and so its final checkpoint), as a crash would.
        self.crash_on_close = False
        # When set, batches wait at the door once this many events were processed (whether
        # checkpointed or not).
        self.hold_after: int | None = None
        self.held = 0
        self.release = asyncio.Event()
        # Partitions whose batch found the partition taken over (one entry per attempt).
        self.lost: list[str] = []
        self.initialized: list[str] = []
        # When set, a close of partition ``hold_close[0]`` waits for ``hold_close[1]``.
        self.hold_close: tuple[str, asyncio.Event] | None = None

    async def on_partition_initialize(self, context: PartitionContext) -> None:
        await self.pipeline.on_partition_initialize(context)
        self.initialized.append(context.partition_id)
        self.holding.add(context.partition_id)

    async def on_batch(self, context: PartitionContext, events: list[ReceivedEvent]) -> None:
        if not events:
            self.empty_batches += 1
        if self.hold_after is not None and self.stats.processed >= self.hold_after:
            self.held += 1
            await self.release.wait()
        if self.failures > 0:
            self.failures -= 1
            self.failed += 1
            raise RuntimeError("injected batch failure")
        try:
            await self.pipeline.on_batch(context, events)
        except PartitionLost:
            self.lost.append(context.partition_id)
            raise
        self.delivered.setdefault(context.partition_id, []).extend(e.sequence for e in events)

    async def on_idle(self, context: PartitionContext) -> None:
        await self.pipeline.on_idle(context)

    async def on_partition_close(self, context: PartitionContext, reason: CloseReason) -> None:
        self.closes.append((context.partition_id, reason))
        self.holding.discard(context.partition_id)
        if self.hold_close is not None and self.hold_close[0] == context.partition_id:
            await self.hold_close[1].wait()
        if not self.crash_on_close:
            await self.pipeline.on_partition_close(context, reason)

    def owned(self) -> set[str]:
        return set(self.pipeline._partitions)


async def covered_in(path: Path, partitions: list[str]) -> dict[str, int]:
    """What the snapshots in the store at ``path`` cover (as the processor's wiring gives the
    source; a module function, so a child process's source can be given it too)."""
    covered = {}
    async with SqliteStore(path) as store:
        for partition in partitions:
            snapshot = await store.load_state(CONSUMER_GROUP, partition)
            if snapshot is not None:
                covered[partition] = snapshot.covered_sequence
    return covered


class Harness:
    """One hub + checkpoint container + SQLite store; builds sources and runs them."""

    def __init__(self, broker: Any, azurite: Any, tmp: Path, hub: str) -> None:
        self.broker = broker
        self.hub = hub
        self.container = f"cp-{hub}"
        self.azurite = azurite
        self.settings = EventHubsSettings(
            connection_string=SecretStr(broker.eventhubs_connection_string(hub)),
            eventhub_name=hub,
            checkpoint_connection_string=SecretStr(azurite.connection_string),
            checkpoint_container=self.container,
            load_balancing_interval_s=0.5,
            partition_ownership_expiration_s=4.0,
        )
        self.store = SqliteStore(tmp / "store.db")
        self.expected = Expected()
        # The SDK keys ownerships and checkpoints by the namespace it parsed: host and port.
        self.namespace = f"127.0.0.1:{broker.port}"

    def recorder(self, checkpoint_interval_s: float = 0.0) -> Recorder:
        stats = ProcessedStats()
        pipeline = Pipeline(
            store=self.store,
            decoder=Decoder(),
            enricher=ENRICHER,
            consumer_group=CONSUMER_GROUP,
            lateness=timedelta(seconds=300),
            checkpoint_interval_s=checkpoint_interval_s,
            stats=stats,
        )
        return Recorder(pipeline, stats)

    def source(
        self, batch_size: int = 300, client_options: dict[str, Any] | None = None
    ) -> EventHubsSource:
        processor = ProcessorSettings(
            consumer_group=CONSUMER_GROUP, batch_size=batch_size, batch_wait_s=0.05
        )
        return EventHubsSource(
            self.settings,
            processor,
            client_options=client_options,
            covered=functools.partial(covered_in, self.store.path),
        )

    def child_source(
        self, batch_size: int = 300, client_options: dict[str, Any] | None = None
    ) -> SubprocessSource:
        """The same source as ``source``, receiving in a child process (the shipped default)."""
        processor = ProcessorSettings(
            consumer_group=CONSUMER_GROUP, batch_size=batch_size, batch_wait_s=0.05
        )
        return SubprocessSource(
            functools.partial(
                EventHubsSource,
                self.settings,
                processor,
                client_options=client_options,
                covered=functools.partial(covered_in, self.store.path),
            )
        )

    async def send(self, sink: EventHubsSink, bodies: list[tuple[str | None, bytes]]) -> None:
        for start in range(0, len(bodies), 500):
            await sink.append(bodies[start : start + 500])
        self.expected.add(bodies)

    def last_sequences(self) -> dict[str, int]:
        return {p: self.broker.events(self.hub, p)[-1].sequence_number for p in PARTITIONS}

    async def checkpoints(self) -> dict[str, int]:
        store = BlobCheckpointStore.from_connection_string(
            self.azurite.connection_string, self.container
        )
        async with store:
            rows = await store.list_checkpoints(self.namespace, self.hub, CONSUMER_GROUP)
        return {row["partition_id"]: row["sequence_number"] for row in rows}

    async def assert_store_exact(self) -> None:
        assert set(await self.store.telemetry_ids()) == self.expected.telemetry
        assert await self.store.count("telemetry") == len(self.expected.telemetry)
        stored: Counter[bytes] = Counter()
        async for record in self.store.quarantine_records(limit=100_000):
            raw = (
                base64.b64decode(record.raw)
                if record.raw_encoding == "base64"
                else record.raw.encode()
            )
            stored[raw] += 1
            assert record.partition in PARTITIONS
            assert record.source == SOURCE_NAME
        assert stored == self.expected.quarantined

    async def assert_exact_and_checkpointed_to_the_end(self) -> None:
        await self.assert_store_exact()
        assert await self.checkpoints() == self.last_sequences()


async def processed_to_the_end(harness: Harness, recorder: Recorder) -> None:
    """Wait until every partition's last event (as the broker holds them now) was delivered."""
    last = harness.last_sequences()
    await wait_for(
        lambda: all(max(recorder.delivered.get(p, [-1])) >= last[p] for p in PARTITIONS),
        "every partition processed to its last event",
    )


class Running:
    """A source running a recorder in a background task, with its own stop event."""

    def __init__(self, source: EventSource, recorder: Recorder) -> None:
        self.source = source
        self.recorder = recorder
        self.stop_event = asyncio.Event()
        self.task = asyncio.create_task(source.run(recorder, self.stop_event))

    @property
    def events(self) -> int:
        """Events counted: processed in batches a checkpoint covers."""
        return self.recorder.stats.events

    @property
    def processed(self) -> int:
        """Events processed, checkpointed or not (a batch processed twice counts twice)."""
        return self.recorder.stats.processed

    async def stop(self) -> None:
        self.stop_event.set()
        await asyncio.wait_for(self.task, WAIT_S)


async def read_to_the_end(harness: Harness) -> Recorder:
    """A source of its own reads every event sent so far and stops: its recorder."""
    recorder = harness.recorder()
    running = Running(harness.source(), recorder)
    try:
        await processed_to_the_end(harness, recorder)
    finally:
        await running.stop()
    return recorder


@pytest_asyncio.fixture(loop_scope="module")
async def harness(
    amqp_broker: Any, azurite: Any, tmp_path: Path, request: Any
) -> AsyncIterator[Harness]:
    # Unique per test and parameter set; container names allow 63 characters.
    digest = hashlib.sha1(request.node.name.encode()).hexdigest()[:8]
    slug = request.node.name.replace("_", "-")[5:37].lower().strip("-")
    hub = f"es-{slug}-{digest}"
    amqp_broker.create_hub(hub, len(PARTITIONS))
    h = Harness(amqp_broker, azurite, tmp_path, hub)
    try:
        yield h
    finally:
        amqp_broker.clear_faults()
        await h.store.close()
        # The SDK leaves dead connections as cyclic garbage; collected during a later
        # ast.parse, CPython 3.11.7 raises "AST constructor recursion depth mismatch"
        # (see tests/integration/emulators/test_servicebus_faults.py).
        gc.collect()


@pytest_asyncio.fixture(loop_scope="module")
async def sink(harness: Harness) -> AsyncIterator[EventHubsSink]:
    async with EventHubsSink(harness.settings) as s:
        yield s


@pytest.mark.parametrize("receiver", ["same-process", "child-process"])
async def test_processes_every_event_once_and_checkpoints_the_last_sequence(
    harness: Harness, sink: EventHubsSink, receiver: str
) -> None:
    await harness.send(sink, simulated(2000, seed=1))
    assert sum(harness.expected.quarantined.values()) > 20  # the run includes invalid events
    recorder = harness.recorder(checkpoint_interval_s=0.2)
    # Three failed batches: each must be delivered again, not skipped.
    recorder.failures = 3
    source = harness.source() if receiver == "same-process" else harness.child_source()
    running = Running(source, recorder)
    await wait_for(lambda: running.events >= harness.expected.events, "every event processed")
    # Lag from the service's last enqueued sequence (partition properties) and our progress.
    assert await recorder.pipeline.stats.lag() == {p: 0 for p in PARTITIONS}
    # Idle, every partition checkpoints the end of the stream while running (not only at the
    # stop): a crash now would not process any of it again.
    last = harness.last_sequences()
    async with asyncio.timeout(WAIT_S):
        while await harness.checkpoints() != last:
            await asyncio.sleep(0.05)
    await running.stop()

    await harness.assert_store_exact()
    assert running.events == harness.expected.events
    assert recorder.failed == 3
    assert recorder.empty_batches == 0
    assert sorted(recorder.closes) == [(p, CloseReason.SHUTDOWN) for p in PARTITIONS]
    assert await harness.checkpoints() == last
    for p in PARTITIONS:
        # Every sequence of the partition was delivered successfully, in order, none skipped.
        assert sorted(set(recorder.delivered[p])) == list(range(last[p] + 1))


async def test_restart_resumes_after_the_checkpoints(harness: Harness, sink: EventHubsSink) -> None:
    await harness.send(sink, simulated(600, seed=2))
    first = harness.recorder()
    running = Running(harness.source(), first)
    await wait_for(lambda: running.events >= harness.expected.events, "the first round")
    await running.stop()
    checkpoints = await harness.checkpoints()
    assert checkpoints == harness.last_sequences()

    await harness.send(sink, simulated(400, seed=3))
    second = harness.recorder()
    running = Running(harness.source(), second)
    await wait_for(lambda: running.events >= 400, "the second round")
    await running.stop()
    assert running.events == 400
    for p in PARTITIONS:
        delivered = second.delivered.get(p, [])
        assert delivered == list(range(checkpoints[p] + 1, harness.last_sequences()[p] + 1))
    await harness.assert_exact_and_checkpointed_to_the_end()

    # A crash: the processor checkpoints on its cadence only (its close never runs). The
    # restart repeats exactly the events after each partition's last checkpoint.
    await harness.send(sink, simulated(600, seed=11))
    crashing = harness.recorder(checkpoint_interval_s=0.3)
    crashing.crash_on_close = True
    running = Running(harness.source(batch_size=50), crashing)
    # Processed, not counted: counted events are checkpointed ones, and stopping only once
    # every one is would leave nothing for the restart to repeat.
    await wait_for(lambda: running.processed >= 600, "the round before the crash")
    await running.stop()
    last = harness.last_sequences()
    at_crash = await harness.checkpoints()
    assert all(at_crash[p] <= last[p] for p in PARTITIONS)
    repeated = sum(last[p] - at_crash[p] for p in PARTITIONS)

    third = harness.recorder()
    running = Running(harness.source(), third)
    await wait_for(lambda: running.events >= repeated, "the events after the checkpoints")
    await running.stop()
    assert running.events == repeated
    for p in PARTITIONS:
        assert third.delivered.get(p, []) == list(range(at_crash[p] + 1, last[p] + 1))
    await harness.assert_store_exact()
    assert await harness.checkpoints() == last


async def test_abandoned_failed_batch_is_delivered_again_after_restart(
    harness: Harness, sink: EventHubsSink
) -> None:
    await harness.send(sink, simulated(400, seed=4))
    failing = harness.recorder()
    failing.failures = 10**6  # every batch fails until the source is stopped
    running = Running(harness.source(), failing)
    await wait_for(lambda: failing.failed >= 8, "several failed attempts")
    await running.stop()
    assert running.events == 0
    assert failing.delivered == {}
    # Closed on shutdown without a checkpoint past the failed batches.
    assert await harness.checkpoints() == {}

    healthy = harness.recorder()
    running = Running(harness.source(), healthy)
    await wait_for(lambda: running.events >= harness.expected.events, "the redelivery")
    await running.stop()
    for p in PARTITIONS:
        assert healthy.delivered[p][0] == 0
    await harness.assert_exact_and_checkpointed_to_the_end()


@pytest.mark.parametrize(
    "metadata",
    [{"offset": "12", "sequencenumber": "not-a-number"}, {}],
    ids=["unparsable-sequence", "no-metadata"],
)
async def test_an_unreadable_checkpoint_restarts_its_partition_and_stops_no_other(
    harness: Harness, sink: EventHubsSink, metadata: dict[str, str]
) -> None:
    await harness.send(sink, simulated(400, seed=12))
    running = Running(harness.source(), harness.recorder())
    await wait_for(lambda: running.events >= harness.expected.events, "the first round")
    await running.stop()
    checkpoints = await harness.checkpoints()
    # Someone (a tool, another SDK's format, a partial restore) leaves partition 1's
    # checkpoint blob unreadable to the checkpoint store.
    blob = f"{harness.namespace}/{harness.hub}/{CONSUMER_GROUP}/checkpoint/1".lower()
    async with ContainerClient.from_connection_string(
        harness.azurite.connection_string, harness.container, api_version=CHECKPOINT_API_VERSION
    ) as container:
        await container.get_blob_client(blob).set_blob_metadata(metadata)

    await harness.send(sink, simulated(400, seed=13))
    recorder = await read_to_the_end(harness)
    # Partition 1 is read again from its start (what its snapshot covers is not stored
    # again); the others carry on after their checkpoints.
    assert recorder.delivered["1"][0] == 0
    for p in ("0", "2", "3"):
        assert recorder.delivered[p][0] == checkpoints[p] + 1
    await harness.assert_exact_and_checkpointed_to_the_end()


async def test_a_checkpoint_container_deleted_while_running_is_made_again(
    harness: Harness, sink: EventHubsSink
) -> None:
    await harness.send(sink, simulated(200, seed=14))
    recorder = harness.recorder()
    running = Running(harness.source(), recorder)
    try:
        await wait_for(lambda: running.events >= harness.expected.events, "the first events")
        async with ContainerClient.from_connection_string(
            harness.azurite.connection_string,
            harness.container,
            api_version=CHECKPOINT_API_VERSION,
        ) as container:
            await container.delete_container()
        await harness.send(sink, simulated(200, seed=15))
        # Every batch failed at its checkpoint (404 ContainerNotFound) and was delivered again,
        # for ever; as at start, the source makes the container again.
        await processed_to_the_end(harness, recorder)
    finally:
        await running.stop()
    await harness.assert_exact_and_checkpointed_to_the_end()


async def test_two_sources_share_the_partitions_and_one_takes_over(
    harness: Harness, sink: EventHubsSink
) -> None:
    await harness.send(sink, simulated(1000, seed=5))
    a_recorder, b_recorder = harness.recorder(0.2), harness.recorder(0.2)
    a = Running(harness.source(batch_size=50), a_recorder)
    b = Running(harness.source(batch_size=50), b_recorder)
    try:
        # During a hand-over both may hold a partition for a moment (the old owner's close
        # runs after the new owner's start): wait for a settled split, each partition started
        # by one source and closing in neither.
        await wait_for(
            lambda: (
                len(a_recorder.holding) == 2
                and len(b_recorder.holding) == 2
                and a_recorder.holding.isdisjoint(b_recorder.holding)
                and a_recorder.owned() == a_recorder.holding
                and b_recorder.owned() == b_recorder.holding
            ),
            "the partitions to be shared two and two",
        )
        await harness.send(sink, simulated(1000, seed=6))
        await wait_for(lambda: b.events > 0 and a.events > 0, "both sources to process")
        # What b holds when it stops (the load balancers may still move a partition after the
        # split settled: one b was still starting is not closed by a stop that cancels it).
        b_partitions, closes_before = set(b_recorder.holding), len(b_recorder.closes)
        await b.stop()
        assert b_partitions
        assert sorted(b_recorder.closes[closes_before:]) == [
            (p, CloseReason.SHUTDOWN) for p in sorted(b_partitions)
        ]
        await wait_for(lambda: a_recorder.owned() == set(PARTITIONS), "a to take every partition")
        await harness.send(sink, simulated(500, seed=8))
        last = harness.last_sequences()
        await wait_for(
            lambda: all(max(a_recorder.delivered.get(p, [-1])) >= last[p] for p in PARTITIONS),
            "a to finish every partition",
        )
    finally:
        if not b.task.done():
            await b.stop()
        await a.stop()
    await harness.assert_exact_and_checkpointed_to_the_end()
    # Between them, both delivered every event at least once (a takeover may repeat a few).
    assert a.events + b.events >= harness.expected.events
    assert b.events > 0 and a.events > 0


@pytest.mark.parametrize("receiver", ["same-process", "child-process"])
@pytest.mark.parametrize(
    "retry_total",
    [
        # The SDK reconnects inside the partition's receive loop and carries on.
        None,
        # No retries: the receive fails, the partition closes (the batch in flight finishes
        # first) and is claimed again from its checkpoint.
        0,
    ],
    ids=["sdk-reconnects", "reclaimed-from-checkpoint"],
)
async def test_connection_drop_mid_stream_loses_nothing(
    harness: Harness, sink: EventHubsSink, retry_total: int | None, receiver: str
) -> None:
    await harness.send(sink, simulated(1000, seed=9))
    recorder = harness.recorder(0.1)
    recorder.hold_after = 300
    options = None if retry_total is None else {"retry_total": retry_total}
    source = (
        harness.source(batch_size=50, client_options=options)
        if receiver == "same-process"
        else harness.child_source(batch_size=50, client_options=options)
    )
    running = Running(source, recorder)
    try:
        # Batches are held in flight while every connection drops.
        await wait_for(lambda: recorder.held >= 2, "batches held in flight")
        processed = running.processed
        assert 300 <= processed < harness.expected.events
        dropped = harness.broker.drop_connections()
        assert dropped >= 2  # at least the sink's and the source's connections
        recorder.hold_after = None
        recorder.release.set()
        await harness.send(sink, simulated(1000, seed=10))
        # Not a count of processed events: a partition claimed again repeats the events
        # after its checkpoint.
        await processed_to_the_end(harness, recorder)
    finally:
        # A batch still held would keep its partition, and the stop, waiting for ever.
        recorder.release.set()
        await running.stop()
    await harness.assert_exact_and_checkpointed_to_the_end()
    # Counted once each (counts are of checkpointed batches, so a partition claimed again
    # from its checkpoint would not count what it repeats twice).
    assert running.events == harness.expected.events
    for p in PARTITIONS:
        assert set(recorder.delivered[p]) == set(range(harness.last_sequences()[p] + 1))
    lost = [p for p, reason in recorder.closes if reason is CloseReason.OWNERSHIP_LOST]
    if retry_total == 0:
        # The SDK's error reached the source (in the child, only its effect is visible here).
        assert not isinstance(source, EventHubsSource) or source.errors >= 1
        assert lost, "no partition went through close and re-claim"
    else:
        assert lost == []


async def test_settings_without_credentials_are_refused() -> None:
    with pytest.raises(SourceError, match="connection_string or fully_qualified_namespace"):
        EventHubsSink(EventHubsSettings())
    with pytest.raises(SourceError, match="checkpoint"):
        EventHubsSource(
            EventHubsSettings(
                connection_string=SecretStr(
                    "Endpoint=sb://x/;SharedAccessKeyName=k;SharedAccessKey=a2V5"
                )
            ),
            ProcessorSettings(),
        )


async def test_sdk_errors_map_to_retryable_or_permanent_source_errors() -> None:
    from azure.core.exceptions import HttpResponseError, ServiceRequestError
    from azure.eventhub.exceptions import (
        AuthenticationError,
        ConnectionLostError,
        EventDataSendError,
    )

    from stream.exceptions import SourceUnavailable
    from stream.sources.eventhubs_sdk import map_error

    assert isinstance(map_error(ConnectionLostError("gone"), "receive"), SourceUnavailable)
    assert isinstance(map_error(ServiceRequestError("refused"), "checkpoint"), SourceUnavailable)
    busy = EventDataSendError("com.microsoft:server-busy: try later")
    assert map_error(busy, "send").retryable is True
    too_big = EventDataSendError("amqp:link:message-size-exceeded")
    assert map_error(too_big, "send").retryable is False
    denied = map_error(AuthenticationError("bad key"), "receive")
    assert type(denied) is SourceError and denied.retryable is False
    throttled = HttpResponseError("slow down")
    throttled.status_code = 503
    assert map_error(throttled, "checkpoint").retryable is True
    forbidden = HttpResponseError("no")
    forbidden.status_code = 403
    assert map_error(forbidden, "checkpoint").retryable is False


async def process_amqp_messages(harness: Harness, messages: list[AmqpAnnotatedMessage]) -> None:
    """Send ``messages`` to partition 0 as they are and run the source until all were read."""
    async with EventHubProducerClient.from_connection_string(
        harness.broker.eventhubs_connection_string(harness.hub), eventhub_name=harness.hub
    ) as producer:
        for message in messages:
            await producer.send_event(message, partition_id="0")
    recorder = harness.recorder()
    running = Running(harness.source(), recorder)
    try:
        await wait_for(
            lambda: len(recorder.delivered.get("0", [])) == len(messages), "every message"
        )
    finally:
        await running.stop()


async def test_value_and_sequence_bodies_keep_their_content_in_quarantine(
    harness: Harness,
) -> None:
    # Producers of other SDKs may send AMQP value or sequence bodies instead of data.
    good = b'{"app_id":"v","trace_id":"t","timestamp":"2026-12-06T21:00:00Z","latency_ms":5}'
    messages = [
        AmqpAnnotatedMessage(value_body=good),
        AmqpAnnotatedMessage(value_body=b"\xff\xfe not UTF-8"),
        AmqpAnnotatedMessage(sequence_body=[[1, "x"], [2]]),
    ]
    await process_amqp_messages(harness, messages)

    assert await harness.store.count("telemetry") == 1
    kept = {r.sequence: r async for r in harness.store.quarantine_records(limit=10)}
    assert sorted(kept) == [1, 2]
    # The value's bytes themselves, not their repr; the sequence's values, not a generator's.
    assert kept[1].raw_encoding == "base64"
    assert base64.b64decode(kept[1].raw) == b"\xff\xfe not UTF-8"
    # (pyamqp reads the AMQP string back as bytes.)
    assert kept[2].raw in ("[[1, 'x'], [2]]", "[[1, b'x'], [2]]")


async def test_user_ids_in_value_and_sequence_bodies_are_scrubbed_in_quarantine(
    harness: Harness,
) -> None:
    # Kept as their Python repr, single-quoted (and, read back by pyamqp, as bytes literals).
    event = {"app_id": "v", "user_id": "alice smith", "metadata": {"user_id": 987654321}}
    messages = [
        AmqpAnnotatedMessage(value_body=event),
        AmqpAnnotatedMessage(sequence_body=[[event], ["bob jones", {"user_id": "bob jones"}]]),
    ]
    await process_amqp_messages(harness, messages)

    kept = [r.raw async for r in harness.store.quarantine_records(limit=10)]
    assert len(kept) == 2
    for raw in kept:
        assert "user_id" in raw
        assert "alice" not in raw and "smith" not in raw and "987654321" not in raw, raw
    # Only the user_id member's value goes: the sequence's own text stays.
    assert sum("bob jones" in raw for raw in kept) == 1


async def test_sink_refuses_use_outside_its_context_and_reuse(harness: Harness) -> None:
    sink = EventHubsSink(harness.settings)
    with pytest.raises(SourceError, match="outside 'async with'"):
        await sink.append([("app", b"{}")])
    async with sink:
        pass
    with pytest.raises(SourceError, match="outside 'async with'"):
        await sink.append([("app", b"{}")])
    with pytest.raises(SourceError, match="opened once"):
        await sink.__aenter__()


async def test_sink_splits_full_batches_and_keeps_one_key_in_order(
    harness: Harness, sink: EventHubsSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.emulators.amqp.eventhubs import partition_for_key

    client = sink._client
    assert client is not None
    sent_batches: list[int] = []
    send_batch = client.send_batch

    async def counting_send(batch: Any, **kwargs: Any) -> None:
        sent_batches.append(len(batch))
        await send_batch(batch, **kwargs)

    monkeypatch.setattr(client, "send_batch", counting_send)

    padding = b"x" * 4000
    bodies: list[tuple[str | None, bytes]] = [
        ("big-app", b"marker-%04d-" % i + padding) for i in range(400)
    ]
    await sink.append(bodies)
    home = str(partition_for_key("big-app", len(PARTITIONS)))
    stored = harness.broker.events(harness.hub, home)
    assert len(stored) == 400
    # ~1.6 MB cannot travel as one batch: several sends, still in order on one partition.
    assert len(sent_batches) >= 2 and sum(sent_batches) == 400
    order = [int(event.message.split(b"marker-")[1][:4]) for event in stored]
    assert order == list(range(400))
    for other in PARTITIONS:
        if other != home:
            assert harness.broker.events(harness.hub, other) == []

    with pytest.raises(SourceError, match="exceeds the hub's maximum message size") as caught:
        await sink.append([("big-app", b"y" * (2 * 1024 * 1024))])
    assert caught.value.retryable is False


async def test_stop_finishes_the_batches_in_flight_before_closing(
    harness: Harness, sink: EventHubsSink
) -> None:
    await harness.send(sink, simulated(200, seed=12))
    recorder = harness.recorder(checkpoint_interval_s=3600)
    recorder.hold_after = 0  # every partition's first batch waits at the door
    source = harness.source()
    running = Running(source, recorder)
    await wait_for(lambda: recorder.held == len(PARTITIONS), "a batch held on every partition")
    running.stop_event.set()
    client = source._client
    assert client is not None
    # The SDK's close has begun: it cancels the partition tasks while the batches are held.
    await wait_for(
        lambda: all(not p._running for p in client._event_processors.values()),
        "the consumer client to start closing",
    )
    assert recorder.closes == []
    recorder.release.set()
    await asyncio.wait_for(running.task, WAIT_S)
    # Each held batch was processed, then its partition closed and checkpointed it.
    assert sorted(recorder.closes) == [(p, CloseReason.SHUTDOWN) for p in PARTITIONS]
    checkpoints = await harness.checkpoints()
    for p in PARTITIONS:
        assert recorder.delivered[p], f"the held batch of partition {p} was not processed"
        assert checkpoints[p] == max(recorder.delivered[p])


class NewOwner:
    """Stands in for another processor taking a partition over: claims its ownership blob
    (with the etag the current owner left), then saves its snapshot and checkpoint."""

    SNAPSHOT = b"the new owner's snapshot"

    def __init__(self, harness: Harness, partition: str) -> None:
        self.harness = harness
        self.partition = partition
        self.claimed: dict[str, Any] = {}

    def _blob_store(self) -> BlobCheckpointStore:
        return BlobCheckpointStore.from_connection_string(
            self.harness.azurite.connection_string, self.harness.container
        )

    async def take_over(self) -> None:
        harness = self.harness
        async with self._blob_store() as store:
            ownerships = await store.list_ownership(harness.namespace, harness.hub, CONSUMER_GROUP)
            (current,) = [o for o in ownerships if o["partition_id"] == self.partition]
            claimed = await store.claim_ownership([{**current, "owner_id": "the-new-owner"}])
            assert [o["partition_id"] for o in claimed] == [self.partition]
            self.claimed = claimed[0]

    async def release(self) -> None:
        """Give the claim up, as the SDK does for its partitions when it shuts down."""
        async with self._blob_store() as store:
            released = await store.claim_ownership([{**self.claimed, "owner_id": ""}])
            assert [o["partition_id"] for o in released] == [self.partition]

    async def save(self) -> int:
        """The new owner's snapshot and checkpoint at the partition's last event."""
        harness = self.harness
        last = harness.broker.events(harness.hub, self.partition)[-1]
        await harness.store.save_state(
            StateSnapshot(CONSUMER_GROUP, self.partition, last.sequence_number, self.SNAPSHOT)
        )
        async with self._blob_store() as store:
            await store.update_checkpoint(
                {
                    "fully_qualified_namespace": harness.namespace,
                    "eventhub_name": harness.hub,
                    "consumer_group": CONSUMER_GROUP,
                    "partition_id": self.partition,
                    "offset": str(last.offset),
                    "sequence_number": last.sequence_number,
                }
            )
        return int(last.sequence_number)


@pytest.mark.parametrize(
    "noticed",
    [
        # The load balancer's next round is far off: only the ownership blob tells.
        False,
        # The load balancer saw the new owner and closes the partition (OWNERSHIP_LOST), which
        # waits for the batch in flight.
        True,
    ],
    ids=["before-the-sdk-notices", "after-the-sdk-closes-the-partition"],
)
async def test_a_batch_finishing_after_a_takeover_writes_neither_snapshot_nor_checkpoint(
    harness: Harness, sink: EventHubsSink, noticed: bool
) -> None:
    # The stand-in owner does not renew its claim: it must not expire during the test.
    harness.settings = harness.settings.model_copy(
        update={
            "load_balancing_interval_s": 0.5 if noticed else 30.0,
            "partition_ownership_expiration_s": 120.0,
        }
    )
    await harness.send(sink, simulated(400, seed=16))
    recorder = harness.recorder()  # every batch saves a snapshot and checkpoints
    recorder.hold_after = 0  # every partition's first batch waits at the door
    source = harness.source(batch_size=20)
    running = Running(source, recorder)
    new_owner = NewOwner(harness, "1")
    try:
        await wait_for(lambda: recorder.held == len(PARTITIONS), "a batch held on every partition")
        await new_owner.take_over()
        covered = await new_owner.save()
        if noticed:
            assert source._client is not None
            (processor,) = source._client._event_processors.values()
            await wait_for(
                lambda: processor._tasks["1"].cancelling() > 0,
                "the load balancer to cancel partition 1",
            )
        recorder.hold_after = None
        recorder.release.set()
        last = harness.last_sequences()
        await wait_for(
            lambda: all(max(recorder.delivered.get(p, [-1])) >= last[p] for p in ("0", "2", "3")),
            "the partitions still owned to be processed",
        )
        # Partition 1's batch ran into the takeover: given up (or, without the ownership
        # check, processed and its position written).
        await wait_for(
            lambda: (
                "1" in recorder.delivered
                or "1" not in source._partitions
                or source._partitions["1"].abandoned
            ),
            "partition 1's held batch to end",
        )
    finally:
        await running.stop()
    assert await harness.store.load_state(CONSUMER_GROUP, "1") == StateSnapshot(
        CONSUMER_GROUP, "1", covered, NewOwner.SNAPSHOT
    )
    checkpoints = await harness.checkpoints()
    assert checkpoints["1"] == covered
    assert "1" not in recorder.delivered
    for p in ("0", "2", "3"):
        assert checkpoints[p] == last[p]


@pytest.mark.parametrize("receiver", ["same-process", "child-process"])
async def test_a_partition_claimed_by_an_owner_that_died_before_receiving_comes_back(
    harness: Harness, sink: EventHubsSink, receiver: str
) -> None:
    # Another processor claims partition 1 and dies before it attaches a receiver (killed
    # while initialising it), and its claim is gone before this processor's load balancer
    # looks again: the SDK then claims the partition back without ever having closed it.
    harness.settings = harness.settings.model_copy(
        update={"load_balancing_interval_s": 10.0, "partition_ownership_expiration_s": 60.0}
    )
    await harness.send(sink, simulated(400, seed=21))
    recorder = harness.recorder()  # every batch checkpoints, so checks its ownership first
    recorder.hold_after = 0  # every partition's first batch waits at the door
    source = (
        harness.source(batch_size=20)
        if receiver == "same-process"
        else harness.child_source(batch_size=20)
    )
    running = Running(source, recorder)
    new_owner = NewOwner(harness, "1")
    try:
        await wait_for(lambda: recorder.held == len(PARTITIONS), "a batch held on every partition")
        await new_owner.take_over()
        recorder.hold_after = None
        recorder.release.set()
        await wait_for(lambda: "1" in recorder.lost, "partition 1's batch to find the new owner")
        await new_owner.release()
        await harness.send(sink, simulated(400, seed=22))
        # Claimed back without a close, the partition must deliver again (it delivered
        # nothing, for ever).
        await processed_to_the_end(harness, recorder)
    finally:
        await running.stop()
    await harness.assert_exact_and_checkpointed_to_the_end()


async def test_a_partition_claimed_back_while_its_close_still_runs_starts_after_it(
    harness: Harness, sink: EventHubsSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Partition 1 is taken over and its close takes longer than load-balancing rounds (a
    # batch in flight, a slow store); the new owner dies meanwhile and the partition is free
    # to claim again. Its next start must come after that close, or the close ends what the
    # start set up (both name the same partition).
    rounds = 0
    list_ownership = CheckpointStore.list_ownership

    async def counted(self: CheckpointStore, *args: Any, **kwargs: Any) -> Any:
        nonlocal rounds
        rounds += 1
        return await list_ownership(self, *args, **kwargs)

    monkeypatch.setattr(CheckpointStore, "list_ownership", counted)
    await harness.send(sink, simulated(400, seed=23))
    recorder = harness.recorder()
    release_close = asyncio.Event()
    recorder.hold_close = ("1", release_close)
    source = harness.source(batch_size=20)
    running = Running(source, recorder)
    new_owner = NewOwner(harness, "1")
    try:
        await processed_to_the_end(harness, recorder)
        assert source._client is not None
        (processor,) = source._client._event_processors.values()
        await new_owner.take_over()
        await wait_for(
            lambda: ("1", CloseReason.OWNERSHIP_LOST) in recorder.closes,
            "the load balancer to close partition 1",
        )
        # The SDK cancels the partition again at its next round: its task ends, though the
        # close goes on (shielded), and the SDK forgets it.
        await wait_for(lambda: "1" not in processor._tasks, "the SDK to drop partition 1's task")
        await new_owner.release()
        since = rounds
        await wait_for(lambda: rounds >= since + 3, "three load-balancing rounds")
        starts_during_the_close = recorder.initialized.count("1")
        release_close.set()
        await harness.send(sink, simulated(400, seed=24))
        await processed_to_the_end(harness, recorder)
    finally:
        release_close.set()
        await running.stop()
    assert starts_during_the_close == 1, "partition 1 started again before its close ended"
    await harness.assert_exact_and_checkpointed_to_the_end()


@pytest.mark.parametrize("receiver", ["same-process", "child-process"])
async def test_a_partition_whose_checkpoint_blob_is_deleted_resumes_after_its_snapshot(
    harness: Harness, sink: EventHubsSink, caplog: pytest.LogCaptureFixture, receiver: str
) -> None:
    await harness.send(sink, simulated(400, seed=17))
    await read_to_the_end(harness)
    before = await harness.checkpoints()
    snapshot = await harness.store.load_state(CONSUMER_GROUP, "1")
    assert snapshot is not None and snapshot.covered_sequence == before["1"]
    # Partition 1's checkpoint blob is lost (deleted by hand, a cleanup, a partial restore)
    # while events keep coming.
    blob = f"{harness.namespace}/{harness.hub}/{CONSUMER_GROUP}/checkpoint/1".lower()
    async with ContainerClient.from_connection_string(
        harness.azurite.connection_string, harness.container, api_version=CHECKPOINT_API_VERSION
    ) as container:
        await container.delete_blob(blob)
    await harness.send(sink, simulated(400, seed=18))

    # New partitions start at the newest event; this one has a snapshot.
    harness.settings = harness.settings.model_copy(update={"starting_position": "latest"})
    second = harness.recorder()
    caplog.set_level(logging.WARNING, logger="stream.sources.eventhubs_partition")
    source = harness.source() if receiver == "same-process" else harness.child_source()
    running = Running(source, second)
    try:
        await processed_to_the_end(harness, second)
    finally:
        await running.stop()
    # Not from the latest event: every event after the snapshot, none it covers.
    assert second.delivered["1"][0] == before["1"] + 1
    for p in ("0", "2", "3"):
        assert second.delivered[p][0] == before[p] + 1
    if receiver == "same-process":  # the child's log lines go to its stderr
        assert any(
            "partition 1 has no checkpoint but a snapshot covering sequence "
            f"{before['1']}: starting after it, not at @latest" in r.getMessage()
            for r in caplog.records
        )
    await harness.assert_exact_and_checkpointed_to_the_end()


async def delete_checkpoint_blobs(harness: Harness, partitions: tuple[str, ...]) -> None:
    async with ContainerClient.from_connection_string(
        harness.azurite.connection_string, harness.container, api_version=CHECKPOINT_API_VERSION
    ) as container:
        for p in partitions:
            blob = f"{harness.namespace}/{harness.hub}/{CONSUMER_GROUP}/checkpoint/{p}"
            await container.delete_blob(blob.lower())


@pytest.mark.parametrize("receiver", ["same-process", "child-process"])
async def test_snapshots_at_the_end_without_checkpoints_get_them_and_show_no_lag(
    harness: Harness, sink: EventHubsSink, caplog: pytest.LogCaptureFixture, receiver: str
) -> None:
    """Every checkpoint blob lost after everything was processed, and nothing new: reading
    resumed after the snapshots, but no event came to checkpoint, so the lag counted each
    whole partition for ever (``--until-idle`` never stopped) and the next start was no
    cleaner. The warning was said 5 times per partition."""
    await harness.send(sink, simulated(400, seed=19))
    await read_to_the_end(harness)
    last = harness.last_sequences()
    assert await harness.checkpoints() == last
    await delete_checkpoint_blobs(harness, PARTITIONS)

    caplog.set_level(logging.WARNING, logger="stream.sources.eventhubs_start")
    second = harness.recorder()
    source = harness.source() if receiver == "same-process" else harness.child_source()
    running = Running(source, second)
    try:
        await wait_for(
            lambda: set(second.initialized) == set(PARTITIONS), "every partition initialised"
        )
        assert await second.pipeline.stats.lag() == {p: 0 for p in PARTITIONS}
        assert await harness.checkpoints() == last
    finally:
        await running.stop()
    assert second.delivered == {}
    if receiver == "same-process":  # the child's log lines go to its stderr
        # Its own lines: another test in this process may have let other loggers say more.
        said = [
            r.getMessage() for r in caplog.records if r.name == "stream.sources.eventhubs_start"
        ]
        assert sorted(said) == [
            f"partition {p} has no checkpoint but a snapshot covering sequence {last[p]}, its "
            "last event: checkpoint written there"
            for p in PARTITIONS
        ]


@pytest.mark.parametrize("receiver", ["same-process", "child-process"])
async def test_a_hub_deleted_and_created_again_is_read_from_its_start(
    harness: Harness, caplog: pytest.LogCaptureFixture, receiver: str
) -> None:
    """Its numbers start again: checkpoints and snapshots past the partitions' new ends made
    every new event up to them be skipped, without a word."""
    async with EventHubsSink(harness.settings) as sink:
        await harness.send(sink, simulated(800, seed=20))
    await read_to_the_end(harness)
    before = await harness.checkpoints()
    assert before == harness.last_sequences()

    harness.broker.delete_hub(harness.hub)
    harness.broker.create_hub(harness.hub, len(PARTITIONS))
    async with EventHubsSink(harness.settings) as sink:
        await harness.send(sink, simulated(200, seed=21))
    last = harness.last_sequences()
    assert all(last[p] < before[p] for p in PARTITIONS)

    caplog.set_level(logging.WARNING, logger="stream.sources.eventhubs_start")
    second = harness.recorder()
    source = harness.source() if receiver == "same-process" else harness.child_source()
    running = Running(source, second)
    try:
        await processed_to_the_end(harness, second)
        async with asyncio.timeout(WAIT_S):
            while await harness.checkpoints() != last:
                await asyncio.sleep(0.05)
    finally:
        await running.stop()
    for p in PARTITIONS:
        assert second.delivered[p] == list(range(last[p] + 1))
        snapshot = await harness.store.load_state(CONSUMER_GROUP, p)
        assert snapshot is not None and snapshot.covered_sequence == last[p]
    await harness.assert_exact_and_checkpointed_to_the_end()
    if receiver == "same-process":
        errors = [
            r.getMessage()
            for r in caplog.records
            if r.levelno == logging.ERROR and r.name == "stream.sources.eventhubs_start"
        ]
        assert sorted(errors) == [
            f"partition {p}: its checkpoint at sequence {before[p]} and snapshot at sequence "
            f"{before[p]} but its last event is {last[p]}: the event hub was deleted and "
            "created again (its sequence numbers start again); reading the partition from its "
            "start (what the store holds is written again unchanged)"
            for p in PARTITIONS
        ]


async def test_partition_positions_are_the_hubs_ends_and_the_checkpoints(
    harness: Harness, sink: EventHubsSink
) -> None:
    """What ``evalstream status`` shows on Azure (it showed only the store's counts)."""
    assert await partition_positions(harness.settings, CONSUMER_GROUP) == [
        PartitionPosition(p, -1, None) for p in PARTITIONS
    ]
    await harness.send(sink, simulated(300, seed=22))
    await read_to_the_end(harness)
    await delete_checkpoint_blobs(harness, ("2",))
    last = harness.last_sequences()
    assert await partition_positions(harness.settings, CONSUMER_GROUP) == [
        PartitionPosition(p, last[p], None if p == "2" else last[p]) for p in PARTITIONS
    ]


async def test_a_checkpoint_never_moves_backwards_whatever_the_order_of_writes(
    harness: Harness,
) -> None:
    def checkpoint(sequence: int) -> dict[str, Any]:
        return {
            "fully_qualified_namespace": harness.namespace,
            "eventhub_name": harness.hub,
            "consumer_group": CONSUMER_GROUP,
            "partition_id": "2",
            "offset": str(sequence * 10),
            "sequence_number": sequence,
        }

    await harness.source()._ensure_container(None)
    store = CheckpointStore.from_connection_string(
        harness.azurite.connection_string, harness.container
    )
    async with store:
        await store.update_checkpoint(checkpoint(50))
        # A late write of an owner that lost the partition.
        await store.update_checkpoint(checkpoint(20))
        assert await harness.checkpoints() == {"2": 50}
        # Writers racing on the blob (its creation included, on partition 3 below): each
        # write is conditional on the blob it read, so the latest position stays.
        await asyncio.gather(*(store.update_checkpoint(checkpoint(s)) for s in range(70, 50, -1)))
        assert await harness.checkpoints() == {"2": 70}
        racing = [{**checkpoint(s), "partition_id": "3"} for s in (5, 9, 7, 8, 6)]
        await asyncio.gather(*(store.update_checkpoint(c) for c in racing))
        assert await harness.checkpoints() == {"2": 70, "3": 9}


@pytest.mark.parametrize("receiver", ["same-process", "child-process"])
async def test_a_cosmos_container_deleted_while_receiving_stops_the_processor(
    harness: Harness, sink: EventHubsSink, cosmos_server: Any, receiver: str
) -> None:
    database = f"eh-gone-{hashlib.sha1(receiver.encode()).hexdigest()[:8]}-{time.time_ns()}"
    stats = ProcessorStats()
    stop = asyncio.Event()
    await harness.send(sink, simulated(400, seed=11))
    try:
        async with CosmosStore(
            cosmos_server.endpoint, cosmos_server.key, database=database
        ) as store:
            pipeline = Pipeline(
                store=store,
                decoder=Decoder(),
                enricher=ENRICHER,
                consumer_group=CONSUMER_GROUP,
                lateness=timedelta(seconds=300),
                checkpoint_interval_s=0,
                stats=stats,
            )
            source = harness.source() if receiver == "same-process" else harness.child_source()
            running = asyncio.create_task(Processor(source, pipeline, stats, 3600).run(stop))
            last = harness.last_sequences()
            await wait_for(
                lambda: stats.events >= harness.expected.events or running.done(),
                "every event processed",
            )
            async with asyncio.timeout(WAIT_S):
                while await harness.checkpoints() != last and not running.done():
                    await asyncio.sleep(0.05)
            assert not running.done()
            async with CosmosClient(cosmos_server.endpoint, cosmos_server.key) as client:
                await client.get_database_client(database).delete_container("telemetry")
            await harness.send(sink, simulated(200, seed=12))

            async with asyncio.timeout(WAIT_S):  # it retried every batch for ever before
                with pytest.raises(ContainerNotFound, match="container 'telemetry'"):
                    await running
    finally:
        async with CosmosClient(cosmos_server.endpoint, cosmos_server.key) as client:
            await client.delete_database(database)
    assert stop.is_set()
    # No checkpoint passed the batches that could not be written.
    assert await harness.checkpoints() == last
