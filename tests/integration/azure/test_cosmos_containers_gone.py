"""Cosmos containers deleted under a running processor and under the store's reads, against
cosmosdb-server: a missing container is an error that stops the processor (one error line, no
checkpoint past an unwritten batch, the events read again after a restart), never "no
snapshot" or "no document"."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from azure.cosmos.aio import CosmosClient

from schemas import AppDirectory, Breach
from store.cosmos import CosmosStore
from store.exceptions import ContainerNotFound
from store.ports import StateSnapshot
from stream.decode import Decoder
from stream.enrich import Enricher
from stream.hotpath import HotPath
from stream.pipeline import Pipeline
from stream.ports import ReceivedEvent
from stream.processor import Processor
from stream.producers.simulator import Simulator
from stream.sources.local_log import LocalLog, LocalLogSource
from stream.stats import ProcessorStats
from tests.emulators.npm_fixtures import CosmosServer

pytestmark = pytest.mark.integration

PARTITIONS = 2
FIRST, LATER = 200, 100
START = datetime(2026, 11, 21, tzinfo=UTC)
# Far longer than the processor needs to stop (well under a second here); before containers
# were told apart it never stopped.
STOP_WITHIN_S = 30.0


@pytest.fixture
async def database(cosmos_server: CosmosServer) -> AsyncIterator[str]:
    name = f"gone-{uuid.uuid4().hex[:12]}"
    yield name
    async with CosmosClient(cosmos_server.endpoint, cosmos_server.key) as client:
        await client.delete_database(name)


async def delete_container(server: CosmosServer, database: str, name: str) -> None:
    async with CosmosClient(server.endpoint, server.key) as client:
        await client.get_database_client(database).delete_container(name)


class Publisher:
    async def publish(self, breaches: Sequence[Breach]) -> None:
        pass


def processor(store: CosmosStore, log_path: Path, stats: ProcessorStats) -> Processor:
    apps = AppDirectory()
    pipeline = Pipeline(
        store=store,
        decoder=Decoder(),
        enricher=Enricher(apps, b"test-key", "embedded"),
        consumer_group="$Default",
        lateness=timedelta(seconds=300),
        checkpoint_interval_s=0,
        stats=stats,
        hot_path=lambda blob: HotPath.restore(apps, blob) if blob else HotPath(apps),
        publisher=Publisher(),
    )
    source = LocalLogSource(log_path, PARTITIONS, "$Default", 50, 0.02, 3600)
    return Processor(source, pipeline, stats, 3600, lambda _: None)


def append(log_path: Path, bodies: list[bytes]) -> None:
    log = LocalLog(log_path, PARTITIONS)
    try:
        log.append([(None, body) for body in bodies])
    finally:
        log.close()


def caught_up(log_path: Path) -> bool:
    """Every event of the log checkpointed."""
    checkpoints, last = positions(log_path)
    return checkpoints == last


def positions(log_path: Path) -> tuple[list[int], list[int]]:
    """Per partition: the checkpoint, and the last event's sequence."""
    log = LocalLog(log_path, PARTITIONS)
    try:
        checkpoints = [log.checkpoint("$Default", p) for p in range(PARTITIONS)]
        return checkpoints, [log.last_sequence(p) for p in range(PARTITIONS)]
    finally:
        log.close()


async def until(condition: Callable[[], bool], what: str) -> None:
    try:
        async with asyncio.timeout(STOP_WITHIN_S):
            while not condition():
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"{what}: not within {STOP_WITHIN_S:g} s") from None


@pytest.mark.parametrize("deleted", ["telemetry", "quarantine", "state"])
async def test_a_container_deleted_while_processing_stops_the_processor_with_one_error(
    cosmos_server: CosmosServer,
    database: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    deleted: str,
) -> None:
    simulator = Simulator(apps=3, rate=10.0, seed=7, start=START, invalid_fraction=0.2)
    simulated = list(simulator.events(FIRST + LATER))
    log_path = tmp_path / "log.db"
    append(log_path, [event.body for event in simulated[:FIRST]])
    stats = ProcessorStats()
    stop = asyncio.Event()
    async with CosmosStore(cosmos_server.endpoint, cosmos_server.key, database=database) as store:
        running = asyncio.create_task(processor(store, log_path, stats).run(stop))
        # Counted once checkpointed: the pipeline counts just after the log's checkpoint (a
        # write in another thread) that ``caught_up`` may already see.
        await until(
            lambda: (caught_up(log_path) and stats.events >= FIRST) or running.done(),
            "first events checkpointed and counted",
        )
        assert not running.done() and stats.events == FIRST
        checkpointed = positions(log_path)[0]

        await delete_container(cosmos_server, database, deleted)
        append(log_path, [event.body for event in simulated[FIRST:]])
        with caplog.at_level(logging.DEBUG):
            async with asyncio.timeout(STOP_WITHIN_S):
                with pytest.raises(ContainerNotFound) as raised:
                    await running

    assert stop.is_set()
    assert f"container {deleted!r}" in str(raised.value)
    # Said once, by whoever runs the processor (the command: one error line, exit 2), from
    # the error raised: nothing logged above INFO, neither the error nor a "batch failed ...;
    # retry 1 of ∞" warning with its traceback per partition, nor a partition closing
    # without its checkpoint for that reason.
    said = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert said == [], [r.getMessage() for r in said]
    stops = [r for r in caplog.records if r.getMessage().startswith("processing stops")]
    assert len(stops) == 1 and "ContainerNotFound" in stops[0].getMessage()
    # Nothing after the deletion was checkpointed: none of its batches was written whole.
    assert positions(log_path)[0] == checkpointed

    # Restarted (as an orchestrator does), the store creates the container again and the
    # events after the checkpoint are processed: none was skipped.
    restarted = ProcessorStats()
    stop_again = asyncio.Event()
    async with CosmosStore(cosmos_server.endpoint, cosmos_server.key, database=database) as store:
        again = asyncio.create_task(processor(store, log_path, restarted).run(stop_again))
        await until(lambda: caught_up(log_path) or again.done(), "later events checkpointed")
        assert not again.done()
        stop_again.set()
        await again
        later = simulated[FIRST:]
        stored = await store.count("telemetry")
        quarantined = await store.count("quarantine")
    valid_later = sum(1 for event in later if event.valid)
    if deleted == "telemetry":
        assert stored == valid_later
    elif deleted == "quarantine":
        assert quarantined == len(later) - valid_later
    # With the snapshots gone, the store covers nothing while the log's checkpoint is further:
    # the pipeline says the store lost writes and reads the log again from its start, so the
    # detectors are rebuilt rather than started from nothing.
    assert restarted.events == (FIRST + LATER if deleted == "state" else LATER)


async def test_a_deleted_state_container_is_an_error_not_a_missing_snapshot(
    cosmos_server: CosmosServer, database: str
) -> None:
    async with CosmosStore(cosmos_server.endpoint, cosmos_server.key, database=database) as store:
        await store.save_state(StateSnapshot("$Default", "0", 41, b"detectors"))
        assert await store.load_state("$Default", "1") is None  # no snapshot: a fresh partition

        await delete_container(cosmos_server, database, "state")

        with pytest.raises(ContainerNotFound, match="container 'state'"):
            await store.load_state("$Default", "0")
        with pytest.raises(ContainerNotFound, match="container 'state'"):
            await store.load_state("$Default", "1")
        with pytest.raises(ContainerNotFound, match="container 'state'"):
            await store.save_state(StateSnapshot("$Default", "0", 42, b"detectors"))


async def test_a_partition_does_not_start_from_nothing_when_the_state_container_is_gone(
    cosmos_server: CosmosServer, database: str, tmp_path: Path
) -> None:
    async with CosmosStore(cosmos_server.endpoint, cosmos_server.key, database=database) as store:
        await store.save_state(StateSnapshot("$Default", "0", 41, b""))
        await delete_container(cosmos_server, database, "state")
        pipeline = processor(store, tmp_path / "log.db", ProcessorStats()).pipeline

        with pytest.raises(ContainerNotFound):
            await pipeline.on_partition_initialize(Partition())
    assert "0" not in pipeline._partitions  # not started with fresh detectors
    assert pipeline.failure is not None and pipeline.failed.is_set()


class Partition:
    """Partition 0 of a source that cannot rewind (as Event Hubs)."""

    partition_id = "0"
    rewindable = False

    async def checkpoint(self, event: ReceivedEvent) -> None:
        raise AssertionError("nothing to checkpoint")

    async def last_enqueued_sequence(self) -> int | None:
        return None

    async def checkpointed_sequence(self) -> int | None:
        return 41

    async def resume_after(self, sequence: int) -> bool:
        return False


async def test_a_deleted_telemetry_container_is_an_error_not_a_missing_document(
    cosmos_server: CosmosServer, database: str
) -> None:
    async with CosmosStore(cosmos_server.endpoint, cosmos_server.key, database=database) as store:
        assert await store.get_telemetry("nothing", "a:2026-11-21") is None
        await delete_container(cosmos_server, database, "telemetry")

        with pytest.raises(ContainerNotFound, match="container 'telemetry'"):
            await store.get_telemetry("nothing", "a:2026-11-21")
        with pytest.raises(ContainerNotFound, match="container 'telemetry'"):
            await store.count("telemetry")
        with pytest.raises(ContainerNotFound, match="container 'telemetry'"):
            async for _ in store.telemetry_window(["a"], START, START + timedelta(hours=1)):
                pass
