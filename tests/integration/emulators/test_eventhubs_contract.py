"""Contract tests of the test broker's Event Hubs half, driven through the real, unmodified
azure-eventhub 5.15 aio SDK over TCP.

Clients are shared by the module (every client open costs the SDK about a second); each test
uses its own hub so tests do not interfere.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import pytest
import pytest_asyncio
from azure.eventhub import EventData
from azure.eventhub.aio import EventHubConsumerClient, EventHubProducerClient

from tests.emulators.amqp.eventhubs import partition_for_key

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

HUB = "contract"
PARTITIONS = 3
WAIT_S = 15.0


@pytest.fixture(scope="module")
def hub(amqp_broker: Any) -> str:
    amqp_broker.create_hub(HUB, PARTITIONS, consumer_groups=("analytics",))
    return HUB


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def producer(amqp_broker: Any, hub: str) -> AsyncIterator[EventHubProducerClient]:
    client = EventHubProducerClient.from_connection_string(
        amqp_broker.eventhubs_connection_string(hub)
    )
    async with client:
        yield client


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def consumer(amqp_broker: Any, hub: str) -> AsyncIterator[EventHubConsumerClient]:
    client = EventHubConsumerClient.from_connection_string(
        amqp_broker.eventhubs_connection_string(hub), consumer_group="$Default"
    )
    async with client:
        yield client


async def wait_for(condition: Callable[[], bool], what: str, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)


async def receive_from(
    consumer: EventHubConsumerClient,
    partition: str,
    count: int,
    *,
    starting_position: Any,
    inclusive: bool = False,
    **kwargs: Any,
) -> list[EventData]:
    """Receive with receive_batch until `count` events arrived (or fail after WAIT_S)."""
    received: list[EventData] = []

    async def on_batch(_context: Any, events: list[EventData]) -> None:
        received.extend(events)

    task = asyncio.create_task(
        consumer.receive_batch(
            on_batch,
            partition_id=partition,
            starting_position=starting_position,
            starting_position_inclusive=inclusive,
            max_wait_time=0.5,
            **kwargs,
        )
    )
    try:
        await wait_for(lambda: len(received) >= count or task.done(), f"{count} events")
        if task.done():
            task.result()
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    return received


async def send_to_partition(
    producer: EventHubProducerClient, partition: str, bodies: list[str]
) -> None:
    batch = await producer.create_batch(partition_id=partition)
    for body in bodies:
        batch.add(EventData(body))
    await producer.send_batch(batch)


async def test_hub_and_partition_properties(
    amqp_broker: Any, producer: EventHubProducerClient, hub: str
) -> None:
    props = await producer.get_eventhub_properties()
    assert props["eventhub_name"] == hub
    assert props["partition_ids"] == ["0", "1", "2"]
    assert isinstance(props["created_at"], datetime)

    amqp_broker.create_hub("props-empty", 1)
    async with EventHubProducerClient.from_connection_string(
        amqp_broker.eventhubs_connection_string("props-empty")
    ) as other:
        empty = await other.get_partition_properties("0")
        assert empty["is_empty"] is True
        assert empty["last_enqueued_sequence_number"] == -1
        await send_to_partition(other, "0", ["a", "bb"])
        filled = await other.get_partition_properties("0")
    stored = amqp_broker.events("props-empty", "0")
    assert filled["is_empty"] is False
    assert filled["beginning_sequence_number"] == 0
    assert filled["last_enqueued_sequence_number"] == 1
    assert filled["last_enqueued_offset"] == str(stored[-1].offset)
    assert filled["last_enqueued_time_utc"] == datetime.fromtimestamp(
        stored[-1].enqueued_time_ms / 1000, UTC
    )


async def test_partition_key_batches_land_on_one_stable_partition(
    amqp_broker: Any, producer: EventHubProducerClient, hub: str
) -> None:
    before = {p: len(amqp_broker.events(hub, p)) for p in ("0", "1", "2")}
    for key in ("app-a", "app-b", "app-c", "app-a"):
        batch = await producer.create_batch(partition_key=key)
        for i in range(3):
            batch.add(EventData(f"{key}:{i}"))
        await producer.send_batch(batch)

    grown: dict[str, list[str]] = {}
    for p in ("0", "1", "2"):
        new = amqp_broker.events(hub, p)[before[p] :]
        grown[p] = [e.partition_key for e in new]
    for key, expected_count in (("app-a", 6), ("app-b", 3), ("app-c", 3)):
        home = str(partition_for_key(key, PARTITIONS))
        assert grown[home].count(key) == expected_count
        others = [p for p in grown if p != home]
        assert all(key not in grown[p] for p in others)


async def test_send_single_events_and_explicit_partition(
    amqp_broker: Any, producer: EventHubProducerClient, hub: str
) -> None:
    before = len(amqp_broker.events(hub, "2"))
    await send_to_partition(producer, "2", ["x1", "x2"])
    await producer.send_event(EventData("x3"), partition_id="2")
    bodies = [e.message for e in amqp_broker.events(hub, "2")[before:]]
    assert len(bodies) == 3
    assert all(b"x" in body for body in bodies)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def seeded(amqp_broker: Any, producer: EventHubProducerClient) -> str:
    """Partition 1 of a dedicated hub with 9 events in 3 batches, each batch enqueued in a
    later millisecond than the one before (so enqueued-time boundaries are meaningful)."""
    amqp_broker.create_hub("positions", 2)
    async with EventHubProducerClient.from_connection_string(
        amqp_broker.eventhubs_connection_string("positions")
    ) as positions:
        for b in range(3):
            await send_to_partition(positions, "1", [f"b{b}e{i}" for i in range(3)])
            last = amqp_broker.events("positions", "1")[-1].enqueued_time_ms
            await wait_for(lambda last=last: time.time() * 1000 >= last + 2, "the clock to tick")
    assert len(amqp_broker.events("positions", "1")) == 9
    return "positions"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def positions_consumer(
    amqp_broker: Any, seeded: str
) -> AsyncIterator[EventHubConsumerClient]:
    client = EventHubConsumerClient.from_connection_string(
        amqp_broker.eventhubs_connection_string(seeded), consumer_group="$Default"
    )
    async with client:
        yield client


def _first_index(amqp_broker: Any, matches: Callable[[Any], bool]) -> int:
    events = amqp_broker.events("positions", "1")
    return next(i for i, e in enumerate(events) if matches(e))


@pytest.mark.parametrize(
    ("kind", "inclusive"),
    [
        ("offset", True),
        ("offset", False),
        ("sequence", True),
        ("sequence", False),
        ("enqueued", True),
        ("enqueued", False),
    ],
)
async def test_start_positions(
    amqp_broker: Any, positions_consumer: EventHubConsumerClient, kind: str, inclusive: bool
) -> None:
    stored = amqp_broker.events("positions", "1")
    boundary = stored[4]
    position: Any
    if kind == "offset":
        position = str(boundary.offset)
        first = 4 if inclusive else 5
    elif kind == "sequence":
        position = boundary.sequence_number
        first = 4 if inclusive else 5
    else:
        # The boundary is the first event of the middle batch: one millisecond for the batch.
        boundary = stored[3]
        position = datetime.fromtimestamp(boundary.enqueued_time_ms / 1000, UTC)
        ms = boundary.enqueued_time_ms
        first = _first_index(
            amqp_broker,
            (lambda e: e.enqueued_time_ms >= ms)
            if inclusive
            else (lambda e: e.enqueued_time_ms > ms),
        )
        assert first == (3 if inclusive else 6)
    expected = stored[first:]
    received = await receive_from(
        positions_consumer, "1", len(expected), starting_position=position, inclusive=inclusive
    )
    assert [e.sequence_number for e in received] == [e.sequence_number for e in expected]
    assert [e.offset for e in received] == [str(e.offset) for e in expected]
    assert received[0].body_as_str() == f"b{first // 3}e{first % 3}"


async def test_start_from_beginning_reads_everything_with_annotations(
    amqp_broker: Any, positions_consumer: EventHubConsumerClient
) -> None:
    stored = amqp_broker.events("positions", "1")
    received = await receive_from(positions_consumer, "1", len(stored), starting_position="-1")
    assert [e.sequence_number for e in received] == list(range(len(stored)))
    for event, record in zip(received, stored, strict=True):
        assert event.offset == str(record.offset)
        assert event.enqueued_time == datetime.fromtimestamp(record.enqueued_time_ms / 1000, UTC)
        assert event.partition_key is None


async def test_start_at_latest_sees_only_new_events(
    amqp_broker: Any, seeded: str, positions_consumer: EventHubConsumerClient
) -> None:
    received: list[EventData] = []

    async def on_batch(_context: Any, events: list[EventData]) -> None:
        received.extend(events)

    before = len(amqp_broker.receivers(seeded, "0"))
    task = asyncio.create_task(
        positions_consumer.receive_batch(
            on_batch, partition_id="0", starting_position="@latest", max_wait_time=0.5
        )
    )
    try:
        await wait_for(lambda: len(amqp_broker.receivers(seeded, "0")) > before, "the link")
        async with EventHubProducerClient.from_connection_string(
            amqp_broker.eventhubs_connection_string(seeded)
        ) as late:
            existing = len(amqp_broker.events(seeded, "0"))
            await send_to_partition(late, "0", ["new-1", "new-2"])
        await wait_for(lambda: len(received) >= 2, "the new events")
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert [e.body_as_str() for e in received] == ["new-1", "new-2"]
    assert received[0].sequence_number == existing


async def test_partition_key_annotation_is_delivered(
    amqp_broker: Any, producer: EventHubProducerClient, consumer: EventHubConsumerClient, hub: str
) -> None:
    home = str(partition_for_key("tenant-42", PARTITIONS))
    start = len(amqp_broker.events(hub, home))
    await producer.send_event(EventData("keyed"), partition_key="tenant-42")
    stored = amqp_broker.events(hub, home)
    received = await receive_from(
        consumer, home, 1, starting_position=stored[start].sequence_number, inclusive=True
    )
    assert received[0].body_as_str() == "keyed"
    assert received[0].partition_key == b"tenant-42"


async def test_epoch_receiver_steals_partition(
    amqp_broker: Any, producer: EventHubProducerClient, consumer: EventHubConsumerClient, hub: str
) -> None:
    errors: list[Exception] = []
    first_events: list[EventData] = []
    second_events: list[EventData] = []

    async def on_error(_context: Any, error: Exception) -> None:
        errors.append(error)

    async def collect_into(target: list[EventData]) -> Any:
        async def on_event(_context: Any, event: EventData | None) -> None:
            if event is not None:
                target.append(event)

        return on_event

    first = asyncio.create_task(
        consumer.receive(
            await collect_into(first_events),
            partition_id="0",
            owner_level=1,
            starting_position="@latest",
            on_error=on_error,
        )
    )
    async with EventHubConsumerClient.from_connection_string(
        amqp_broker.eventhubs_connection_string(hub), consumer_group="$Default"
    ) as thief_client:
        try:
            await wait_for(
                lambda: [r["epoch"] for r in amqp_broker.receivers(hub, "0")] == [1],
                "the epoch-1 receiver",
            )
            second = asyncio.create_task(
                thief_client.receive(
                    await collect_into(second_events),
                    partition_id="0",
                    owner_level=2,
                    starting_position="@latest",
                )
            )
            try:
                await wait_for(
                    lambda: [r["epoch"] for r in amqp_broker.receivers(hub, "0")] == [2],
                    "the epoch-2 receiver to own the partition",
                )
                await wait_for(lambda: bool(errors), "the stolen receiver's error")
                assert "stolen" in str(errors[0]).lower()
                await send_to_partition(producer, "0", ["after-steal"])
                await wait_for(lambda: bool(second_events), "the thief to receive")
                assert [e.body_as_str() for e in second_events] == ["after-steal"]
                assert first_events == []
            finally:
                second.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await second
        finally:
            first.cancel()
            with pytest.raises(asyncio.CancelledError):
                await first


async def test_lower_epoch_and_plain_receivers_are_refused_while_an_epoch_owns(
    amqp_broker: Any, consumer: EventHubConsumerClient, hub: str
) -> None:
    async def ignore(_context: Any, _event: Any) -> None:
        return None

    owner = asyncio.create_task(
        consumer.receive(ignore, partition_id="1", owner_level=5, starting_position="@latest")
    )
    try:
        await wait_for(
            lambda: [r["epoch"] for r in amqp_broker.receivers(hub, "1")] == [5], "the owner"
        )
        async with EventHubConsumerClient.from_connection_string(
            amqp_broker.eventhubs_connection_string(hub), consumer_group="$Default"
        ) as other:
            for owner_level, expected in ((3, "lower than the current epoch 5"), (None, "owns")):
                errors: list[Exception] = []

                async def on_error(_context: Any, error: Exception, errors: Any = errors) -> None:
                    errors.append(error)

                attempt = asyncio.create_task(
                    other.receive(
                        ignore, partition_id="1", owner_level=owner_level, on_error=on_error
                    )
                )
                try:
                    await wait_for(lambda errors=errors: bool(errors), f"refusal of {owner_level}")
                finally:
                    attempt.cancel()
                    with pytest.raises(asyncio.CancelledError):
                        await attempt
                assert "amqp:link:stolen" in str(errors[0])
                assert expected in str(errors[0])
        assert [r["epoch"] for r in amqp_broker.receivers(hub, "1")] == [5]
    finally:
        owner.cancel()
        with pytest.raises(asyncio.CancelledError):
            await owner


async def test_consumer_group_must_exist(amqp_broker: Any, hub: str) -> None:
    errors: list[Exception] = []

    async def on_error(_context: Any, error: Exception) -> None:
        errors.append(error)

    async def on_event(_context: Any, _event: Any) -> None:
        return None

    async with EventHubConsumerClient.from_connection_string(
        amqp_broker.eventhubs_connection_string(hub), consumer_group="nope"
    ) as missing:
        task = asyncio.create_task(missing.receive(on_event, partition_id="0", on_error=on_error))
        try:
            await wait_for(lambda: bool(errors), "the attach error")
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
    assert "consumer group" in str(errors[0]).lower()


async def test_retention_drops_oldest_events(amqp_broker: Any) -> None:
    amqp_broker.create_hub("retained", 1, max_events=3)
    async with EventHubProducerClient.from_connection_string(
        amqp_broker.eventhubs_connection_string("retained")
    ) as client:
        await send_to_partition(client, "0", [f"r{i}" for i in range(5)])
        props = await client.get_partition_properties("0")
    stored = amqp_broker.events("retained", "0")
    assert [e.sequence_number for e in stored] == [2, 3, 4]
    assert props["beginning_sequence_number"] == 2
    assert props["last_enqueued_sequence_number"] == 4


class BalancedConsumer:
    """One load-balanced EventHubConsumerClient with a BlobCheckpointStore, checkpointing every
    event, recording what it received and any errors."""

    def __init__(self, name: str, connection_string: str, store: Any) -> None:
        self.name = name
        self.client = EventHubConsumerClient.from_connection_string(
            connection_string,
            consumer_group="$Default",
            checkpoint_store=store,
            load_balancing_interval=0.5,
            partition_ownership_expiration_interval=3,
        )
        self.received: list[tuple[str, int, str]] = []
        self.errors: list[Exception] = []
        self.task: asyncio.Task[None] | None = None

    async def on_event(self, context: Any, event: EventData | None) -> None:
        if event is None:
            return
        self.received.append((context.partition_id, event.sequence_number, event.body_as_str()))
        await context.update_checkpoint(event)

    async def on_error(self, _context: Any, error: Exception) -> None:
        self.errors.append(error)

    def start(self) -> None:
        self.task = asyncio.create_task(
            self.client.receive(self.on_event, on_error=self.on_error, starting_position="-1")
        )

    async def stop(self) -> None:
        # close() stops the processor gracefully: it relinquishes its ownerships.
        await self.client.close()
        if self.task is not None:
            await asyncio.wait_for(self.task, WAIT_S)

    def bodies(self) -> set[str]:
        return {body for _, _, body in self.received}


async def _ownership(store: Any, namespace: str, hub_name: str) -> dict[str, str]:
    """partition id → owner id of the current, non-relinquished ownerships."""
    rows = await store.list_ownership(namespace, hub_name, "$Default")
    return {r["partition_id"]: r["owner_id"] for r in rows if r.get("owner_id")}


async def test_load_balanced_receive_with_blob_checkpoints(amqp_broker: Any, azurite: Any) -> None:
    from azure.eventhub.extensions.checkpointstoreblobaio import BlobCheckpointStore
    from azure.storage.blob.aio import BlobServiceClient

    hub_name = "balanced"
    amqp_broker.create_hub(hub_name, 4)
    container = "checkpoints-balanced"
    async with BlobServiceClient.from_connection_string(azurite.connection_string) as blobs:
        await blobs.create_container(container)
    store = BlobCheckpointStore.from_connection_string(azurite.connection_string, container)
    connection_string = amqp_broker.eventhubs_connection_string(hub_name)
    # The SDK keys ownerships and checkpoints by the namespace it parsed: host and port here.
    namespace = f"127.0.0.1:{amqp_broker.port}"

    async def send_round(label: str) -> set[str]:
        async with EventHubProducerClient.from_connection_string(connection_string) as p:
            sent: set[str] = set()
            for partition in ("0", "1", "2", "3"):
                bodies = [f"{label}-p{partition}-{i}" for i in range(2)]
                await send_to_partition(p, partition, bodies)
                sent.update(bodies)
        return sent

    first_round = await send_round("r1")
    a = BalancedConsumer("a", connection_string, store)
    b = BalancedConsumer("b", connection_string, store)
    async with store:
        try:
            a.start()
            await wait_for(lambda: a.bodies() >= first_round, "consumer a to read round 1")
            b.start()
            owners: dict[str, str] = {}

            async def balanced() -> bool:
                nonlocal owners
                owners = await _ownership(store, namespace, hub_name)
                counts = sorted(list(owners.values()).count(o) for o in set(owners.values()))
                return len(owners) == 4 and counts == [2, 2]

            deadline = time.monotonic() + 30
            while not await balanced():
                assert time.monotonic() < deadline, f"never balanced: {owners}"
                await asyncio.sleep(0.2)
            # Both clients read from their own partitions now.
            second_round = await send_round("r2")
            await wait_for(
                lambda: (a.bodies() | b.bodies()) >= second_round, "round 2 across both clients"
            )
            assert b.bodies() & second_round, "consumer b received nothing after balancing"
            assert a.bodies() & second_round, "consumer a received nothing after balancing"

            # Takeover: b stops (relinquishing), a takes every partition and reads on.
            await b.stop()
            deadline = time.monotonic() + 30
            while True:
                owners = await _ownership(store, namespace, hub_name)
                if len(owners) == 4 and len(set(owners.values())) == 1:
                    break
                assert time.monotonic() < deadline, "a never took over b's partitions"
                await asyncio.sleep(0.2)
            third_round = await send_round("r3")
            await wait_for(lambda: a.bodies() >= third_round, "a to read round 3 everywhere")
            # Checkpoints land after the events (each one is awaited in on_event).
            deadline = time.monotonic() + WAIT_S
            while True:
                rows = await store.list_checkpoints(namespace, hub_name, "$Default")
                checkpoints = {c["partition_id"]: c["sequence_number"] for c in rows}
                if checkpoints == {p: 5 for p in ("0", "1", "2", "3")}:
                    break
                assert time.monotonic() < deadline, f"checkpoints stuck at {checkpoints}"
                await asyncio.sleep(0.1)
        finally:
            await a.stop()
            if b.task is not None and not b.task.done():
                await b.stop()

        # Resume: a fresh client starts from the checkpoints and sees only newer events.
        fourth_round = await send_round("r4")
        c = BalancedConsumer("c", connection_string, store)
        c.start()
        try:
            await wait_for(lambda: c.bodies() >= fourth_round, "c to read round 4")
        finally:
            await c.stop()
        assert c.bodies() == fourth_round


async def test_last_enqueued_event_properties_when_tracked(
    amqp_broker: Any, positions_consumer: EventHubConsumerClient
) -> None:
    stored = amqp_broker.events("positions", "1")
    seen: list[dict[str, Any] | None] = []

    async def on_batch(context: Any, events: list[EventData]) -> None:
        if events:
            seen.append(context.last_enqueued_event_properties)

    task = asyncio.create_task(
        positions_consumer.receive_batch(
            on_batch,
            partition_id="1",
            starting_position="-1",
            track_last_enqueued_event_properties=True,
            max_wait_time=0.5,
        )
    )
    try:
        await wait_for(lambda: bool(seen), "a batch with runtime metrics")
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    last = stored[-1]
    assert seen[0] is not None
    assert seen[0]["sequence_number"] == last.sequence_number
    assert seen[0]["offset"] == str(last.offset)
    assert seen[0]["enqueued_time"] == datetime.fromtimestamp(last.enqueued_time_ms / 1000, UTC)


async def test_large_event_spans_several_frames_both_ways(
    amqp_broker: Any, producer: EventHubProducerClient, consumer: EventHubConsumerClient, hub: str
) -> None:
    # 300 KB: more than four 64 KB frames on the way in (client) and out (broker).
    body = bytes(range(256)) * 1200
    start = len(amqp_broker.events(hub, "2"))
    await producer.send_event(EventData(body), partition_id="2")
    stored = amqp_broker.events(hub, "2")
    assert len(stored) == start + 1
    received = await receive_from(
        consumer, "2", 1, starting_position=stored[start].sequence_number, inclusive=True
    )
    assert b"".join(received[0].body) == body


def _sync_round_trip(connection_string: str) -> tuple[dict[str, Any], list[str]]:
    """The sync SDK (pyamqp's blocking transport): send a keyed batch, read partition
    properties, then receive the batch back."""
    from azure.eventhub import EventHubConsumerClient as SyncConsumer
    from azure.eventhub import EventHubProducerClient as SyncProducer

    with SyncProducer.from_connection_string(connection_string) as producer:
        batch = producer.create_batch(partition_id="0")
        for i in range(3):
            batch.add(EventData(f"sync-{i}"))
        producer.send_batch(batch)
        props = producer.get_partition_properties("0")
    received: list[EventData] = []
    with SyncConsumer.from_connection_string(
        connection_string, consumer_group="$Default"
    ) as consumer:

        def on_batch(_context: Any, events: list[EventData]) -> None:
            received.extend(events)
            if len(received) >= 3:
                consumer.close()  # makes receive_batch return

        # receive_batch blocks until the client is closed: bound it in case events never come.
        guard = threading.Timer(WAIT_S, consumer.close)
        guard.start()
        try:
            consumer.receive_batch(on_batch, partition_id="0", starting_position="-1")
        finally:
            guard.cancel()
    bodies = [e.body_as_str() for e in received]
    return props, bodies


async def test_sync_clients_round_trip(amqp_broker: Any) -> None:
    amqp_broker.create_hub("sync", 1)
    props, bodies = await asyncio.to_thread(
        _sync_round_trip, amqp_broker.eventhubs_connection_string("sync")
    )
    assert props["last_enqueued_sequence_number"] == 2
    assert bodies == ["sync-0", "sync-1", "sync-2"]
