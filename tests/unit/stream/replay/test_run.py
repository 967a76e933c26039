"""Replay (stream/replay/run.py) over a store set up wrongly: it stops, it does not retry for
ever."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest

from schemas import QuarantineRecord, TelemetryDocument
from store.exceptions import StoreMisconfigured
from store.sqlite import SqliteStore
from stream.replay.job import JobFile
from stream.replay.ports import Window
from stream.replay.readers.ndjson import NdjsonReader
from stream.replay.run import JobStore, RateLimit, Replay
from tests.unit.stream.replay.test_replay_parts import replay_pipeline

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
GONE = "upsert telemetry/x: Cosmos DB answered 404 — container 'telemetry' does not exist"


class GoneAfter(SqliteStore):
    """Writes ``writes`` batches, then fails every write as a deleted container does."""

    def __init__(self, path: Path, writes: int) -> None:
        super().__init__(path)
        self.writes = writes

    async def write(
        self, documents: Sequence[TelemetryDocument], quarantined: Sequence[QuarantineRecord]
    ) -> list[TelemetryDocument]:
        if self.writes == 0:
            raise StoreMisconfigured(GONE)
        self.writes -= 1
        return await super().write(documents, quarantined)


async def test_a_store_set_up_wrongly_stops_the_replay_with_its_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "events.ndjson"
    path.write_bytes(
        b"\n".join(
            orjson.dumps(
                {
                    "app_id": "a",
                    "timestamp": (T0 + timedelta(seconds=n)).isoformat(),
                    "trace_id": f"t{n}",
                }
            )
            for n in range(50)
        )
    )
    window = Window(T0, T0 + timedelta(hours=1))
    reader = NdjsonReader([path], T0)
    plans = await reader.plan(window, timedelta())
    job = JobFile(tmp_path / "job.db")
    job.create(b"{}", plans)
    async with GoneAfter(tmp_path / "store.db", writes=2) as store:
        job_store = JobStore(job, store, collect=False, totals=Counter())
        pipeline = replay_pipeline(job_store, window, enqueued_times=False)
        replay = Replay(
            reader=reader,
            pipeline=pipeline,
            store=job_store,
            window=window,
            max_future_skew=timedelta(),
            batch_size=10,
            rate=RateLimit(None),
        )
        stop = asyncio.Event()
        with caplog.at_level(logging.DEBUG):
            async with asyncio.timeout(30):  # it retried for ever before
                with pytest.raises(StoreMisconfigured, match="container 'telemetry'"):
                    await replay.run([(plan, plan.after) for plan in plans], stop)
        assert stop.is_set()
        assert await store.count("telemetry") == 20
    # The job resumes after the two batches written, not after the one that failed.
    [plan] = plans
    read = [event.sequence async for batch in reader.read(plan, plan.after, 10) for event in batch]
    [(_, position, finished)] = job.plans()
    assert (position, finished) == (read[19], False)
    # Said once, by the command from the error raised: nothing logged above INFO, no retry.
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    job.close()
