"""`evalstream replay` on the Azure backend: from Event Hubs (its own consumer group) while the
live processor keeps consuming, and from a Capture archive in Blob storage; both land on the
live processor's documents and quarantine records in Cosmos DB, and their shadow detection
finds the breaches the live processor published to Service Bus."""

from __future__ import annotations

import asyncio
import io
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import fastavro
import orjson
import pytest
from azure.storage.blob.aio import ContainerClient
from pydantic import SecretStr

from alerts.config import SubscriptionSpec
from alerts.servicebus_config import ServiceBusSettings
from alerts.servicebus_receiver import servicebus_receiver
from schemas import Breach
from store.cosmos import cosmos_store
from store.cosmos_config import CosmosSettings
from stream.replay.readers.capture_blob import CAPTURE_SCHEMA
from stream.sources.eventhubs_config import EventHubsSettings
from stream.sources.eventhubs_producer import eventhubs_sink
from tests.emulators.amqp.codec import SECTION_DATA
from tests.emulators.amqp.message import read_section
from tests.integration.azure.cli import azure_env
from tests.integration.azure.test_end_to_end import run, wait_for
from tests.integration.processor_harness import prepare
from tests.integration.replay.harness import stream

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

FIRST, SECOND = 2_000, 600
REPLAY_GROUP = "evalstream-replay"


async def cosmos_contents(
    settings: CosmosSettings, apps: list[str], start: datetime, end: datetime
) -> tuple[dict[tuple[str, str], Any], set[str]]:
    """Documents by (pk, id) without their ingest fields, and the quarantine record ids."""
    async with cosmos_store(settings) as store:
        documents: dict[tuple[str, str], Any] = {}
        async for page in store.telemetry_window(apps, start, end, page_size=1000):
            for doc in page:
                fields = orjson.loads(doc.json_bytes())
                del fields["ingest"]
                documents[(doc.pk, doc.id)] = fields
        records = {record.id async for record in store.quarantine_records(100_000)}
    return documents, records


def capture_files(amqp_broker: Any, hub: str, last: dict[str, int]) -> dict[str, bytes]:
    """Avro files as Capture writes them, of each partition's events up to ``last``: one
    file per 200 events."""
    files: dict[str, bytes] = {}
    for partition, until in last.items():
        events = [e for e in amqp_broker.events(hub, partition) if e.sequence_number <= until]
        for first in range(0, len(events), 200):
            chunk = events[first : first + 200]
            # Named by when its window opened; the whole wave was sent within a second or two,
            # so each file's window is given a second of its own (as Capture's would differ).
            opened = datetime.fromtimestamp(chunk[0].enqueued_time_ms / 1000, UTC).replace(
                microsecond=0
            ) + timedelta(seconds=first // 200)
            records = [
                {
                    "SequenceNumber": e.sequence_number,
                    "Offset": str(e.offset),
                    # Capture's own format: month/day/year, 12-hour clock, whole seconds.
                    "EnqueuedTimeUtc": datetime.fromtimestamp(
                        e.enqueued_time_ms / 1000, UTC
                    ).strftime("%m/%d/%Y %I:%M:%S %p"),
                    "SystemProperties": {"x-opt-enqueued-time": e.enqueued_time_ms},
                    "Properties": {},
                    "Body": bytes(read_section(e.message, SECTION_DATA)),
                }
                for e in chunk
            ]
            buffer = io.BytesIO()
            fastavro.writer(buffer, CAPTURE_SCHEMA, records, codec="deflate")
            name = f"ns/{hub}/{partition}/{opened:%Y/%m/%d/%H/%M/%S}.avro"
            files[name] = buffer.getvalue()
    return files


async def upload(connection_string: str, container: str, files: dict[str, bytes]) -> None:
    async with ContainerClient.from_connection_string(connection_string, container) as client:
        await client.create_container()
        for name, data in files.items():
            await client.upload_blob(name, data)


async def drain_breaches(settings: ServiceBusSettings) -> list[Breach]:
    breaches: list[Breach] = []
    spec = SubscriptionSpec(name="all", filter={})
    async with servicebus_receiver(settings, spec) as receiver:
        while alerts := await receiver.receive(max_count=100, max_wait_s=2.0):
            for alert in alerts:
                breaches.append(alert.breach)
                await receiver.complete(alert)
    return breaches


async def checkpoint_blobs(connection_string: str, container: str) -> dict[str, int]:
    """Checkpoint blob name -> sequence number, and ownership blob names (-1)."""
    found: dict[str, int] = {}
    async with ContainerClient.from_connection_string(connection_string, container) as client:
        async for blob in client.list_blobs(include=["metadata"]):
            found[blob.name] = int((blob.metadata or {}).get("sequencenumber", -1))
    return found


def test_replays_from_event_hubs_and_capture_land_on_the_live_store(
    tmp_path: Path, amqp_broker: Any, azurite: Any, cosmos_server: Any
) -> None:
    name = f"rp-{uuid.uuid4().hex[:8]}"
    began = datetime.now(UTC) - timedelta(hours=1)
    first_wave = stream(FIRST, 77, began)
    # Other apps than the first wave's, so their breaches can be told apart.
    second_wave = [
        (f"late-{key}", body.replace(b'"app_id":"app-', b'"app_id":"late-app-'))
        for key, body in stream(SECOND, 78, began + timedelta(minutes=30))
    ]
    expected_first = prepare(tmp_path / "expected-first", first_wave)
    expected_all = prepare(tmp_path / "expected-all", first_wave + second_wave)

    amqp_broker.create_hub(name, 4, consumer_groups=(REPLAY_GROUP,))
    topic = f"{name}-breaches"
    amqp_broker.create_topic(topic)
    amqp_broker.create_subscription(topic, "all")
    eventhubs = EventHubsSettings(
        connection_string=SecretStr(amqp_broker.eventhubs_connection_string(name)),
        eventhub_name=name,
    )
    cosmos = CosmosSettings(
        endpoint=cosmos_server.endpoint, key=SecretStr(cosmos_server.key), database=name
    )
    servicebus = ServiceBusSettings(
        connection_string=SecretStr(amqp_broker.servicebus_connection_string()), topic=topic
    )
    env = {
        **azure_env(
            amqp_broker,
            azurite,
            cosmos_server,
            hub=name,
            database=name,
            topic=topic,
            user_hash_key="shared-test-key",
        ),
        "EVALSTREAM_PROCESSOR__CHECKPOINT_INTERVAL_S": "0.5",
        "EVALSTREAM_PROCESSOR__BATCH_SIZE": "200",
        "EVALSTREAM_REPLAY__BATCH_SIZE": "200",
        "EVALSTREAM_REPLAY__CAPTURE__CONNECTION_STRING": azurite.connection_string,
        "EVALSTREAM_REPLAY__CAPTURE__CONTAINER": f"{name}-capture",
        "EVALSTREAM_REPLAY__CAPTURE__PREFIX": f"ns/{name}",
    }
    jobs = ["--data-dir", str(tmp_path / "jobs")]
    apps = sorted({pk.split(":")[0] for pk, _ in expected_all.telemetry})
    span = (began - timedelta(hours=1), datetime.now(UTC) + timedelta(hours=2))

    async def send(bodies: list[tuple[str | None, bytes]]) -> None:
        async with eventhubs_sink(eventhubs) as sink:
            for start in range(0, len(bodies), 500):
                await sink.append(bodies[start : start + 500])

    async def stored() -> int:
        async with cosmos_store(cosmos) as store:
            return await store.count("telemetry") + await store.count("quarantine")

    def all_stored(expected: Any) -> Any:
        total = len(expected.telemetry) + len(expected.quarantine)

        async def check() -> bool:
            assert live.poll() is None, (tmp_path / "live.log").read_text()[-3000:]
            return await stored() >= total

        return check

    asyncio.run(send(first_wave))
    live = run(["process", "--no-ingest"], env, tmp_path / "live.log")
    logs = [tmp_path / "live.log"]
    try:
        asyncio.run(wait_for(all_stored(expected_first), "the first wave stored", 240, logs))
        reference, records = asyncio.run(cosmos_contents(cosmos, apps, *span))
        assert set(reference) == expected_first.telemetry and len(records) == len(
            expected_first.quarantine
        )
        last_first = {
            p: events[-1].sequence_number for p in "0123" if (events := amqp_broker.events(name, p))
        }
        boundary = datetime.now(UTC)
        checkpoints_before = asyncio.run(checkpoint_blobs(azurite.connection_string, name))

        # Replay the first wave from Event Hubs while the second one arrives and the live
        # processor consumes it.
        replaying = run(
            [
                "replay",
                "--source",
                "eventhubs",
                "--mode",
                "both",
                "--by",
                "enqueued",
                "--from",
                span[0].isoformat(),
                "--to",
                boundary.isoformat(),
                "--id",
                "eh",
                "--workers",
                "2",
                *jobs,
            ],
            env,
            tmp_path / "replay-eh.log",
        )
        asyncio.run(send(second_wave))
        assert replaying.wait(timeout=300) == 0, (tmp_path / "replay-eh.log").read_text()
        # The hub's four partitions read by two worker processes, each its own receivers.
        assert "2 worker processes share the partitions" in (tmp_path / "replay-eh.log").read_text()
        asyncio.run(wait_for(all_stored(expected_all), "the second wave stored", 240, logs))

        # Isolation: the live processor's checkpoints only moved forward; the replay's
        # consumer group left no checkpoint or ownership behind.
        checkpoints_after = asyncio.run(checkpoint_blobs(azurite.connection_string, name))
        assert not [blob for blob in checkpoints_after if REPLAY_GROUP in blob.lower()]
        for blob, sequence in checkpoints_before.items():
            assert checkpoints_after[blob] >= sequence, blob
        eh_report = orjson.loads((tmp_path / "jobs" / "replays" / "eh.json").read_bytes())
        assert eh_report["events"]["stored"] == len(expected_first.telemetry)
        assert eh_report["events"]["quarantined"] == len(expected_first.quarantine)

        # Capture: the first wave as Capture archives it, plus a damaged file.
        files = capture_files(amqp_broker, name, last_first)
        damaged = f"ns/{name}/1/{boundary:%Y/%m/%d/%H/%M}/59.avro"
        files[damaged] = next(iter(files.values()))[:300]
        asyncio.run(upload(azurite.connection_string, f"{name}-capture", files))
        captured = run(
            [
                "replay",
                "--source",
                "capture",
                "--mode",
                "both",
                "--from",
                span[0].isoformat(),
                "--to",
                span[1].isoformat(),
                "--id",
                "cap",
                "--workers",
                "2",
                *jobs,
            ],
            env,
            tmp_path / "replay-capture.log",
        )
        assert captured.wait(timeout=300) == 0, (tmp_path / "replay-capture.log").read_text()
        assert "2 worker processes" in (tmp_path / "replay-capture.log").read_text()
        capture_report = orjson.loads((tmp_path / "jobs" / "replays" / "cap.json").read_bytes())
        assert list(capture_report["unreadable"]) == [damaged]
        assert capture_report["events"]["stored"] == len(expected_first.telemetry)
        assert capture_report["events"]["quarantined"] == len(expected_first.quarantine)

        # Both replays left the store as the live processor made it, but for ingest fields.
        documents, after_records = asyncio.run(cosmos_contents(cosmos, apps, *span))
        assert {key: documents[key] for key in reference} == reference
        assert set(documents) == expected_all.telemetry
        assert len(after_records) == len(expected_all.quarantine)
        assert records <= after_records
    finally:
        live.terminate()
        live.wait(timeout=120)
    assert live.returncode == 0, (tmp_path / "live.log").read_text()[-3000:]

    # Shadow detection over the first wave found what the live processor published for its
    # apps (the second wave's apps are others), from either source.
    first_apps = {pk.split(":")[0] for pk, _ in expected_first.telemetry}
    live_breaches = sorted(
        breach.message_id
        for breach in asyncio.run(drain_breaches(servicebus))
        if breach.app_id in first_apps
    )
    assert live_breaches
    for job_report in (eh_report, capture_report):
        replayed = sorted(f"{b['breach_id']}:{b['state']}" for b in job_report["breaches"])
        assert replayed == live_breaches


async def late_flags(settings: CosmosSettings, start: datetime, end: datetime) -> dict[str, bool]:
    """Each stored document's ``ingest.late``, by id."""
    async with cosmos_store(settings) as store:
        apps = [f"app-{n:03d}" for n in range(4)]
        return {
            doc.id: doc.ingest.late
            async for page in store.telemetry_window(apps, start, end, page_size=1000)
            for doc in page
        }


def test_replays_of_a_later_range_flag_late_events_as_the_live_processor_did(
    tmp_path: Path, amqp_broker: Any, azurite: Any, cosmos_server: Any
) -> None:
    """Events enqueued inside the range but timed long before what their partition had seen
    are late, live and replayed alike, from Event Hubs or Capture: the replay takes each
    partition's watermark from the live store's documents of the events before its range.
    Before, both started every partition without one and stored those events as not late."""
    name = f"rl-{uuid.uuid4().hex[:8]}"
    began = datetime.now(UTC) - timedelta(hours=1)
    first = stream(300, 81, began)
    # Timed 20 minutes before the first events: late by far more than processor.lateness_s.
    second = stream(200, 82, began - timedelta(minutes=20))
    amqp_broker.create_hub(name, 2, consumer_groups=(REPLAY_GROUP,))
    topic = f"{name}-breaches"
    amqp_broker.create_topic(topic)
    eventhubs = EventHubsSettings(
        connection_string=SecretStr(amqp_broker.eventhubs_connection_string(name)),
        eventhub_name=name,
    )
    cosmos = CosmosSettings(
        endpoint=cosmos_server.endpoint, key=SecretStr(cosmos_server.key), database=name
    )
    env = {
        **azure_env(amqp_broker, azurite, cosmos_server, hub=name, database=name, topic=topic),
        "EVALSTREAM_REPLAY__CAPTURE__CONNECTION_STRING": azurite.connection_string,
        "EVALSTREAM_REPLAY__CAPTURE__CONTAINER": f"{name}-capture",
        "EVALSTREAM_REPLAY__CAPTURE__PREFIX": f"ns/{name}",
    }
    span = (began - timedelta(hours=1), datetime.now(UTC) + timedelta(hours=1))

    async def send(bodies: list[tuple[str | None, bytes]]) -> None:
        async with eventhubs_sink(eventhubs) as sink:
            await sink.append(bodies)

    def process(log: str) -> None:
        live = run(["process", "--no-ingest", "--until-idle", "1"], env, tmp_path / log)
        assert live.wait(timeout=120) == 0, (tmp_path / log).read_text()[-3000:]

    asyncio.run(send(first))
    process("live-1.log")
    boundary = datetime.now(UTC)
    asyncio.run(send(second))
    process("live-2.log")
    live = asyncio.run(late_flags(cosmos, *span))
    assert sum(live.values()) > 150, "the premise: the second wave's events are late live"

    last = {p: amqp_broker.events(name, p)[-1].sequence_number for p in "01"}
    asyncio.run(
        upload(azurite.connection_string, f"{name}-capture", capture_files(amqp_broker, name, last))
    )
    for source in ("eventhubs", "capture"):
        log = tmp_path / f"replay-{source}.log"
        replay = run(
            [
                "replay",
                "--source",
                source,
                "--mode",
                "reprocess",
                "--by",
                "enqueued",
                "--from",
                boundary.isoformat(),
                "--to",
                span[1].isoformat(),
                "--id",
                source,
                "--workers",
                "1",
                "--data-dir",
                str(tmp_path / "jobs"),
            ],
            env,
            log,
        )
        assert replay.wait(timeout=120) == 0, log.read_text()[-3000:]
        report = orjson.loads((tmp_path / "jobs" / "replays" / f"{source}.json").read_bytes())
        assert report["events"]["stored"] > 150, report
        assert asyncio.run(late_flags(cosmos, *span)) == live, log.read_text()[-3000:]
