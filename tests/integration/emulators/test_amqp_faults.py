"""Fault injection through the AMQP test broker, seen by the real azure-eventhub SDK: dropped
connections and stalls are ridden out without losing events, a consumer retries server-busy
attaches, and a producer surfaces server-busy as EventDataSendError (measured, not assumed)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
import pytest_asyncio
from azure.eventhub import EventData
from azure.eventhub.aio import EventHubConsumerClient, EventHubProducerClient
from azure.eventhub.exceptions import EventDataSendError

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

HUB = "faults"
WAIT_S = 30.0


async def wait_for(condition: Callable[[], bool], what: str, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)


@pytest.fixture(scope="module")
def hub(amqp_broker: Any) -> Iterator[str]:
    amqp_broker.create_hub(HUB, 1)
    yield HUB
    amqp_broker.clear_faults()


@pytest.fixture(autouse=True)
def no_faults_left(amqp_broker: Any) -> Iterator[None]:
    yield
    amqp_broker.clear_faults()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def producer(amqp_broker: Any, hub: str) -> AsyncIterator[EventHubProducerClient]:
    client = EventHubProducerClient.from_connection_string(
        amqp_broker.eventhubs_connection_string(hub), retry_backoff_factor=0.2
    )
    async with client:
        yield client


class Reader:
    """A consumer receiving partition 0 from the start in a background task."""

    def __init__(self, connection_string: str) -> None:
        self.client = EventHubConsumerClient.from_connection_string(
            connection_string,
            consumer_group="$Default",
            retry_backoff_factor=0.2,
            # The processor loop sleeps this long between rounds: it bounds how long close()
            # takes and how soon a partition whose consumer gave up is claimed again.
            load_balancing_interval=1,
        )
        self.bodies: list[str] = []
        self.task: asyncio.Task[None] | None = None

    async def on_event(self, _context: Any, event: EventData | None) -> None:
        if event is not None:
            self.bodies.append(event.body_as_str())

    def start(self) -> None:
        self.task = asyncio.create_task(
            self.client.receive(self.on_event, partition_id="0", starting_position="-1")
        )

    async def close(self) -> None:
        await self.client.close()
        if self.task is not None:
            await asyncio.wait_for(self.task, WAIT_S)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def reader(amqp_broker: Any, hub: str) -> AsyncIterator[Reader]:
    r = Reader(amqp_broker.eventhubs_connection_string(hub))
    r.start()
    try:
        yield r
    finally:
        await r.close()


async def test_connection_drop_producer_and_consumer_reconnect(
    amqp_broker: Any, producer: EventHubProducerClient, reader: Reader
) -> None:
    start = len(reader.bodies)
    await producer.send_event(EventData("before-drop"))
    await wait_for(lambda: reader.bodies[start:] == ["before-drop"], "the first event")

    dropped = amqp_broker.drop_connections()
    assert dropped >= 2  # at least the producer's and the consumer's connections

    await producer.send_event(EventData("after-drop"))
    await wait_for(lambda: len(reader.bodies) >= start + 2, "the event sent after the drop")
    # The consumer resumes after the last event it saw: nothing lost, nothing twice.
    assert reader.bodies[start:] == ["before-drop", "after-drop"]
    assert amqp_broker.fault_count("dropped_connections") >= dropped


@pytest.mark.parametrize("mode", ["detach", "reject"])
async def test_server_busy_on_a_live_link_surfaces_as_send_error(
    amqp_broker: Any, producer: EventHubProducerClient, hub: str, mode: str
) -> None:
    # Measured SDK behaviour (azure-eventhub 5.15): a send that meets server-busy, whether as a
    # rejected outcome or as a detach of the sender link, is not retried through to success:
    # the producer raises EventDataSendError within a second (with "detach" the message reads
    # UnknownError, the server-busy condition is lost). Adapters must retry these themselves.
    await producer.send_event(EventData("link-is-open"))
    before = len(amqp_broker.events(hub, "0"))
    hits_before = amqp_broker.fault_count("server_busy_transfer")
    amqp_broker.server_busy(30.0, mode=mode)
    with pytest.raises(EventDataSendError) as caught:
        await producer.send_event(EventData(f"busy-{mode}"))
    amqp_broker.clear_faults()
    assert amqp_broker.fault_count("server_busy_transfer") > hits_before
    if mode == "reject":
        assert "com.microsoft:server-busy" in str(caught.value)
    assert len(amqp_broker.events(hub, "0")) == before
    # The producer recovers by itself once the service is no longer busy.
    await producer.send_event(EventData(f"after-busy-{mode}"))
    assert len(amqp_broker.events(hub, "0")) == before + 1


async def test_server_busy_consumer_attach_retries(amqp_broker: Any, hub: str) -> None:
    stored = [e.message for e in amqp_broker.events(hub, "0")]
    hits_before = amqp_broker.fault_count("server_busy_attach")
    # Longer than opening the client (so the attach meets it), shorter than the retries.
    amqp_broker.server_busy(3.0)
    late = Reader(amqp_broker.eventhubs_connection_string(hub))
    late.start()
    try:
        await wait_for(lambda: len(late.bodies) >= len(stored), "the late reader to catch up")
    finally:
        await late.close()
    assert amqp_broker.fault_count("server_busy_attach") > hits_before
    assert len(late.bodies) == len(stored)


async def test_stall_delays_but_does_not_fail_a_send(
    amqp_broker: Any, producer: EventHubProducerClient, reader: Reader
) -> None:
    start = len(reader.bodies)
    amqp_broker.stall(1.0)
    began = time.monotonic()
    await producer.send_event(EventData("after-stall"))
    assert time.monotonic() - began >= 0.8
    await wait_for(lambda: reader.bodies[start:] == ["after-stall"], "the stalled event")
