"""How ``process`` (evalstream/runtime.run_processor) stops when processing, or a task beside
it, fails for good: the rest ends as on a signal (the processor checkpoints, the ingest pool
drains), then the one failure is raised."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from common.sqlite import sqlite3
from evalstream import runtime, wiring
from evalstream.settings import Settings, load_settings
from store.exceptions import StoreMisconfigured
from stream.exceptions import StreamError
from stream.producers.simulator import Simulator
from stream.sources.local_log import LocalLog
from tests.unit.stream.test_processor import GONE, GoneStore

START = datetime(2026, 12, 1, tzinfo=UTC)


def _append_simulated(settings: Settings, simulator: Simulator, count: int) -> None:
    log = LocalLog(settings.embedded.log_path, settings.embedded.partitions)
    try:
        log.append([(event.app_id, event.body) for event in simulator.events(count)])
    finally:
        log.close()


class DrainingPool:
    """Stands for the ingest pool: once ``stop`` is set its workers drain (answer the requests
    they accepted) until ``drain`` is set."""

    def __init__(self) -> None:
        self.drain = asyncio.Event()
        self.drained = False
        self.cancelled = False

    async def run(self, stop: asyncio.Event) -> None:
        await stop.wait()
        try:
            await self.drain.wait()
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        self.drained = True


async def test_a_processing_failure_lets_the_ingest_pool_drain_then_is_raised_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = load_settings(embedded={"data_dir": tmp_path})
    _append_simulated(settings, Simulator(apps=2, rate=10.0, seed=3, start=START), 20)
    pool = DrainingPool()

    @contextlib.asynccontextmanager
    async def ingest_in_workers(*_: Any) -> AsyncIterator[DrainingPool]:
        yield pool

    monkeypatch.setattr(wiring, "store", lambda s: GoneStore(s.embedded.store_path))
    monkeypatch.setattr(runtime, "ingest_in_workers", ingest_in_workers)
    stopped = asyncio.Event()

    def on_status(line: str) -> None:
        if line.startswith("stopped: "):
            stopped.set()  # the processor ended; its failure is raised next

    running = asyncio.create_task(
        runtime.run_processor(
            settings,
            ingest=True,
            ingest_port=0,
            simulate=None,
            until_idle_s=None,
            on_status=on_status,
            ingest_workers=1,
        )
    )
    async with asyncio.timeout(30):
        await stopped.wait()
    assert not running.done()  # waiting for the pool's workers to drain
    pool.drain.set()
    await asyncio.wait([running])
    assert pool.drained and not pool.cancelled
    # The failure itself, not a group of the tasks it cut short: one line at the command line.
    with pytest.raises(StoreMisconfigured, match=GONE):
        running.result()


class FailingPool:
    """Stands for an ingest pool whose workers keep failing at start: it fails once the
    processor has stored ``after`` documents."""

    def __init__(self, store_path: Path, after: int) -> None:
        self.store_path = store_path
        self.after = after

    async def run(self, stop: asyncio.Event) -> None:
        while _stored(self.store_path) < self.after:
            await asyncio.sleep(0.01)
        raise StreamError("ingest workers keep exiting at start (5 in a row, last exit code 1)")


def _stored(path: Path) -> int:
    if not path.exists():
        return 0
    connection = sqlite3.connect(path)
    try:
        return int(connection.execute("SELECT COUNT(*) FROM telemetry").fetchone()[0])
    except sqlite3.OperationalError:  # the table is not made yet
        return 0
    finally:
        connection.close()


async def test_a_failure_beside_the_processor_stops_it_as_a_signal_would_then_is_raised_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = load_settings(
        embedded={"data_dir": tmp_path}, processor={"batch_size": 50, "checkpoint_interval_s": 3600}
    )
    _append_simulated(settings, Simulator(apps=3, rate=100.0, seed=4, start=START), 2000)
    pool = FailingPool(settings.embedded.store_path, after=100)

    @contextlib.asynccontextmanager
    async def ingest_in_workers(*_: Any) -> AsyncIterator[FailingPool]:
        yield pool

    monkeypatch.setattr(runtime, "ingest_in_workers", ingest_in_workers)
    statuses: list[str] = []
    with pytest.raises(StreamError, match="keep exiting at start"):
        async with asyncio.timeout(60):
            await runtime.run_processor(
                settings,
                ingest=True,
                ingest_port=0,
                simulate=None,
                until_idle_s=None,
                on_status=statuses.append,
                ingest_workers=1,
            )
    # Ended as on a signal (a cancelled processor says nothing), its batches checkpointed:
    # each partition's checkpoint is the last event stored of it, although the checkpoint
    # interval had not passed.
    assert any(line.startswith("stopped: ") for line in statuses)
    store = sqlite3.connect(settings.embedded.store_path)
    try:
        stored = dict(
            store.execute(
                "SELECT doc ->> '$.ingest.partition', MAX(doc ->> '$.ingest.sequence') "
                "FROM telemetry GROUP BY 1"
            ).fetchall()
        )
    finally:
        store.close()
    log_file = sqlite3.connect(settings.embedded.log_path)
    try:
        checkpoints = {
            str(partition): sequence
            for partition, sequence in log_file.execute(
                "SELECT partition, sequence FROM checkpoints"
            ).fetchall()
        }
    finally:
        log_file.close()
    assert sum(last + 1 for last in stored.values()) >= 100  # events covered
    assert checkpoints == stored
