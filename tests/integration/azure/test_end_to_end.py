"""Azure backend end to end: two processors share a 4-partition hub, one is SIGKILLed and the
other takes over; Cosmos holds exactly the expected documents and the Service Bus subscription
receives exactly the breaches of an uninterrupted embedded run of the same stream, each once."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from alerts.config import SubscriptionSpec
from alerts.servicebus_config import ServiceBusSettings
from alerts.servicebus_receiver import servicebus_receiver
from store.cosmos import cosmos_store
from store.cosmos_config import CosmosSettings
from stream.producers.simulator import Incident, Simulator
from stream.sources.eventhubs_config import EventHubsSettings
from stream.sources.eventhubs_producer import eventhubs_sink
from tests.integration.processor_harness import IN_PROCESS, drain_subscription, prepare

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

EVENTS = 6_000
INCIDENTS = [
    Incident.parse("latency_regression:app-000@60+90x5"),
    Incident.parse("error_burst:app-001@120+60x0.5"),
]


def stream() -> list[tuple[str | None, bytes]]:
    simulator = Simulator(
        apps=4,
        rate=20.0,
        seed=1234,
        start=datetime.now(UTC) - timedelta(hours=1),
        incidents=INCIDENTS,
        invalid_fraction=0.02,
    )
    return [(event.app_id, event.body) for event in simulator.events(EVENTS)]


def run(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """Start evalstream with its output in ``log`` (a pipe nobody reads could fill and block)."""
    with open(log, "wb") as handle:
        return subprocess.Popen(
            [sys.executable, "-m", "evalstream", *args],
            env={**os.environ, **env},
            stdout=handle,
            stderr=subprocess.STDOUT,
        )


def initialised(log: Path) -> set[str]:
    """Partitions an instance initialised, from its log."""
    return set(re.findall(r"partition initialised partition=(\d+)", log.read_text()))


def story(log: Path) -> str:
    """What a log says of partitions and trouble (every such line), then its last lines."""
    lines = log.read_text().splitlines()
    said = [
        line[:300]
        for line in lines
        if re.search(r"WARNING|ERROR|partition (initialised|closed)", line)
        and "Cosmos store open" not in line
    ]
    return "\n".join([*said[-60:], "... last lines:", *lines[-8:]])


async def wait_for(
    condition: Callable[[], Any], what: str, timeout: float, logs: list[Path]
) -> None:
    deadline = time.monotonic() + timeout
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout} s waiting for {what}\n"
                + "\n".join(f"--- {log.name}\n{story(log)}" for log in logs)
            )
        await asyncio.sleep(0.2)


async def drain_servicebus(settings: ServiceBusSettings) -> list[str]:
    ids: list[str] = []
    async with servicebus_receiver(settings, SubscriptionSpec(name="all", filter={})) as receiver:
        while alerts := await receiver.receive(max_count=100, max_wait_s=2.0):
            for alert in alerts:
                ids.append(alert.message_id)
                await receiver.complete(alert)
    return ids


def test_two_processors_on_azure_match_the_embedded_reference(
    tmp_path: Path, amqp_broker: Any, azurite: Any, cosmos_server: Any
) -> None:
    bodies = stream()
    name = f"e2e-{uuid.uuid4().hex[:8]}"

    # The reference: the same stream, uninterrupted, on the embedded backend.
    reference_dir = tmp_path / "embedded"
    expected = prepare(reference_dir, bodies)
    reference = run(
        ["process", "--data-dir", str(reference_dir), "--no-ingest", "--until-idle", "1"],
        IN_PROCESS,
        tmp_path / "reference.log",
    )
    assert reference.wait(timeout=300) == 0, (tmp_path / "reference.log").read_text()
    reference_breaches = asyncio.run(drain_subscription(reference_dir))
    assert len(reference_breaches) >= 2

    amqp_broker.create_hub(name, 4)
    # One namespace serves both protocols here: the topic needs a name of its own.
    topic = f"{name}-breaches"
    amqp_broker.create_topic(topic)
    amqp_broker.create_subscription(topic, "all")
    eventhubs = EventHubsSettings(
        connection_string=SecretStr(amqp_broker.eventhubs_connection_string(name)),
        eventhub_name=name,
        checkpoint_connection_string=SecretStr(azurite.connection_string),
        checkpoint_container=name,
    )
    cosmos = CosmosSettings(
        endpoint=cosmos_server.endpoint, key=SecretStr(cosmos_server.key), database=name
    )
    servicebus = ServiceBusSettings(
        connection_string=SecretStr(amqp_broker.servicebus_connection_string()), topic=topic
    )
    eventhubs_connection = amqp_broker.eventhubs_connection_string(name)
    servicebus_connection = amqp_broker.servicebus_connection_string()
    env = {
        "EVALSTREAM_BACKEND": "azure",
        "EVALSTREAM_USER_HASH_KEY": "shared-test-key",
        "EVALSTREAM_AZURE__EVENTHUBS__CONNECTION_STRING": eventhubs_connection,
        "EVALSTREAM_AZURE__EVENTHUBS__EVENTHUB_NAME": name,
        "EVALSTREAM_AZURE__EVENTHUBS__CHECKPOINT_CONNECTION_STRING": azurite.connection_string,
        "EVALSTREAM_AZURE__EVENTHUBS__CHECKPOINT_CONTAINER": name,
        "EVALSTREAM_AZURE__EVENTHUBS__LOAD_BALANCING_INTERVAL_S": "1",
        "EVALSTREAM_AZURE__EVENTHUBS__PARTITION_OWNERSHIP_EXPIRATION_S": "5",
        "EVALSTREAM_AZURE__COSMOS__ENDPOINT": cosmos_server.endpoint,
        "EVALSTREAM_AZURE__COSMOS__KEY": cosmos_server.key,
        "EVALSTREAM_AZURE__COSMOS__DATABASE": name,
        "EVALSTREAM_AZURE__SERVICEBUS__CONNECTION_STRING": servicebus_connection,
        "EVALSTREAM_AZURE__SERVICEBUS__TOPIC": topic,
        "EVALSTREAM_PROCESSOR__CHECKPOINT_INTERVAL_S": "0.5",
        "EVALSTREAM_PROCESSOR__BATCH_SIZE": "200",
    }

    async def send() -> None:
        async with eventhubs_sink(eventhubs) as sink:
            for start in range(0, len(bodies), 500):
                await sink.append(bodies[start : start + 500])

    asyncio.run(send())
    total = len(expected.telemetry) + len(expected.quarantine)

    async def counts() -> tuple[int, int]:
        async with cosmos_store(cosmos) as store:
            return await store.count("telemetry"), await store.count("quarantine")

    first = run(["process", "--no-ingest"], env, tmp_path / "first.log")
    second = run(["process", "--no-ingest"], env, tmp_path / "second.log")
    try:

        async def progressed() -> bool:
            assert first.poll() is None and second.poll() is None, "a processor exited early"
            telemetry, quarantined = await counts()
            return telemetry + quarantined >= total // 3

        logs = [tmp_path / "first.log", tmp_path / "second.log"]
        asyncio.run(wait_for(progressed, "a third of the stream stored", 240, logs))
        first.kill()
        first.wait(timeout=30)

        async def finished() -> bool:
            telemetry, quarantined = await counts()
            return telemetry + quarantined >= total

        asyncio.run(wait_for(finished, "the whole stream stored", 240, logs))
    finally:
        if first.poll() is None:
            first.kill()
        second.terminate()
        second.wait(timeout=120)
    assert second.returncode == 0, (tmp_path / "second.log").read_text()
    # Both instances owned partitions, and the survivor took over the killed one's.
    owned_by_first = initialised(tmp_path / "first.log")
    owned_by_second = initialised(tmp_path / "second.log")
    assert owned_by_first, "the killed instance never owned a partition"
    assert owned_by_first <= owned_by_second == {"0", "1", "2", "3"}

    async def stored() -> tuple[set[tuple[str, str]], int]:
        async with cosmos_store(cosmos) as store:
            ids: set[tuple[str, str]] = set()
            pages = store.telemetry_window(
                sorted({pk.split(":")[0] for pk, _ in expected.telemetry}),
                datetime.now(UTC) - timedelta(days=2),
                datetime.now(UTC) + timedelta(hours=1),
                page_size=1000,
            )
            async for page in pages:
                ids.update((doc.pk, doc.id) for doc in page)
            return ids, await store.count("telemetry")

    telemetry_ids, telemetry_count = asyncio.run(stored())
    assert telemetry_ids == expected.telemetry
    assert telemetry_count == len(expected.telemetry)
    assert asyncio.run(counts())[1] == len(expected.quarantine)

    # Counted where publishing happens: the topic accepted each breach once; what the killed
    # instance had published and the survivor published again (at-least-once) was dropped
    # there as a duplicate of its message id, so subscribers got each breach once.
    accepted, dropped = amqp_broker.servicebus_sent(topic)
    assert accepted == len(reference_breaches), (accepted, dropped)
    delivered = asyncio.run(drain_servicebus(servicebus))
    assert sorted(delivered) == sorted(reference_breaches)
