"""``stream.processor.drive``, which both the processor and each processing worker run: the
pipeline giving up (the store set up wrongly) stops the source, quietly and for good."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from schemas import AppDirectory, QuarantineRecord, TelemetryDocument
from store.exceptions import StoreMisconfigured
from store.sqlite import SqliteStore
from stream.decode import Decoder
from stream.enrich import Enricher
from stream.pipeline import Pipeline
from stream.processor import drive
from stream.producers.simulator import Simulator
from stream.sources.local_log import LocalLog, LocalLogSource
from stream.stats import ProcessorStats

PARTITIONS = 2
GONE = "telemetry table gone: create it again"


class GoneStore(SqliteStore):
    """Every write fails for good, as with a container deleted under the processor."""

    async def write(
        self, documents: Sequence[TelemetryDocument], quarantined: Sequence[QuarantineRecord]
    ) -> list[TelemetryDocument]:
        raise StoreMisconfigured(GONE)


async def test_a_pipeline_that_gives_up_stops_the_source_without_a_retry_said(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    log = LocalLog(tmp_path / "log.db", PARTITIONS)
    simulator = Simulator(apps=4, rate=10.0, seed=5, start=datetime(2026, 12, 1, tzinfo=UTC))
    try:
        log.append([(event.app_id, event.body) for event in simulator.events(40)])
    finally:
        log.close()
    stop = asyncio.Event()
    async with GoneStore(tmp_path / "store.db") as store:
        pipeline = Pipeline(
            store=store,
            decoder=Decoder(),
            enricher=Enricher(AppDirectory(), b"test-key", "embedded"),
            consumer_group="$Default",
            lateness=timedelta(seconds=300),
            checkpoint_interval_s=0,
            stats=ProcessorStats(),
        )
        source = LocalLogSource(tmp_path / "log.db", PARTITIONS, "$Default", 10, 0.02, 3600)
        with caplog.at_level(logging.DEBUG):
            async with asyncio.timeout(30):
                await drive(source, pipeline, stop)
    assert stop.is_set()
    assert isinstance(pipeline.failure, StoreMisconfigured)
    said = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert said == []
    abandoned = [r for r in caplog.records if r.getMessage().startswith("batch abandoned")]
    assert {r.levelno for r in abandoned} == {logging.DEBUG}
