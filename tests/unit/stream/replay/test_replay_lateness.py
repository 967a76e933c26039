"""A reprocess of part of the embedded log stores what the live processor stored for the same
events, ``ingest.late`` included: lateness depends on the partition's watermark, which the
events before the replayed range and those the window leaves out moved live."""

from __future__ import annotations

import asyncio
import time
import types
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

import stream.sources.local_log as local_log_module
from common.sqlite import sqlite3
from schemas import AppDirectory
from store.sqlite import SqliteStore
from stream.decode import Decoder
from stream.enrich import Enricher
from stream.pipeline import Pipeline
from stream.ports import Selection
from stream.replay.job import JobFile
from stream.replay.ports import TimeBasis, Window
from stream.replay.readers.local_log import LogReader
from stream.replay.run import JobStore, RangeSelection, RateLimit, Replay
from stream.sources.local_log import LocalLog
from stream.stats import ProcessorStats
from tests.unit.stream.test_pipeline import Context

# Event times an hour back: the decoder checks them against the enqueued time.
T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
EVENTS = 240
SKEW = timedelta(minutes=1)


def _at(i: int) -> datetime:
    return T0 + timedelta(seconds=10 * i)


# An event enqueued under a clock 9 minutes ahead, its time 2.5 minutes ahead of the
# events around it: the events after it are late (and enqueued out of sequence order).
AHEAD = 120


def _event_time(i: int) -> datetime:
    """Every 10 s an event; every 7th one held back 2 minutes: late by the 1-minute allowance
    once the partition's watermark has passed it, whichever app moved it."""
    if i == AHEAD:
        return _at(135)
    return _at(i) - (timedelta(minutes=2) if i % 7 == 3 else timedelta())


def _enqueued(i: int) -> datetime:
    return _at(175 if i == AHEAD else i) + timedelta(seconds=2)


def _body(i: int) -> bytes:
    return orjson.dumps(
        {
            # Runs of 20 events per app.
            "app_id": "ab"[i // 20 % 2],
            "timestamp": _event_time(i).isoformat(),
            "trace_id": f"t{i}",
            "latency_ms": float(i),
        }
    )


@pytest.fixture
def log_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A one-partition log whose events were enqueued over 40 minutes."""
    path = tmp_path / "events.db"
    clock = {"now": 0.0}
    with monkeypatch.context() as patch:
        patch.setattr(
            local_log_module,
            "time",
            types.SimpleNamespace(time=lambda: clock["now"], monotonic=time.monotonic),
        )
        log = LocalLog(path, 1)
        try:
            for i in range(EVENTS):
                clock["now"] = _enqueued(i).timestamp()
                log.append([(None, _body(i))])
        finally:
            log.close()
    return path


def _pipeline(store: Any, selection: Selection | None) -> Pipeline:
    return Pipeline(
        store=store,
        decoder=Decoder(),
        enricher=Enricher(AppDirectory(), b"k", LogReader.source),
        consumer_group="$Default",
        lateness=timedelta(minutes=1),
        checkpoint_interval_s=0,
        stats=ProcessorStats(),
        selection=selection,
    )


def _stored(path: Path) -> dict[str, bytes]:
    """Stored documents by id, as stored but for the two processing-time fields."""
    connection = sqlite3.connect(path)
    try:
        out = {}
        for id_, doc in connection.execute("SELECT id, doc FROM telemetry"):
            fields = orjson.loads(doc)
            del fields["ingest"]["processed_at"], fields["ingest"]["lag_ms"]
            out[id_] = orjson.dumps(fields)
        return out
    finally:
        connection.close()


async def _live(log_path: Path, store_path: Path) -> None:
    """The live processor's pipeline over the whole partition, in batches of 25."""
    log = LocalLog(log_path, 1)
    try:
        async with SqliteStore(store_path) as store:
            pipeline = _pipeline(store, None)
            context = Context()
            await pipeline.on_partition_initialize(context)
            after = -1
            while events := await log.read_async(0, after, 25):
                await pipeline.on_batch(context, events)
                after = events[-1].sequence
    finally:
        await log.aclose()


async def _reprocess(log_path: Path, store_path: Path, job_path: Path, window: Window) -> None:
    async with LogReader(log_path, 1) as reader, SqliteStore(store_path) as store:
        plans = await reader.plan(window, SKEW)
        job = JobFile(job_path)
        try:
            job.create(b"{}", plans)
            job_store = JobStore(job, store, collect=False, totals=Counter())
            replay = Replay(
                reader=reader,
                pipeline=_pipeline(job_store, RangeSelection(window, enqueued_times=True)),
                store=job_store,
                window=window,
                max_future_skew=SKEW,
                batch_size=20,
                rate=RateLimit(None),
            )
            assert await replay.run([(plan, plan.after) for plan in plans], asyncio.Event())
        finally:
            job.close()


@pytest.mark.parametrize(
    "window",
    [
        # Late events enqueued after the window, their times in it.
        Window(_at(80), _at(160)),
        # The first event read (94) is late by the events before it; those after AHEAD are
        # late by it, although it was enqueued after the window.
        Window(_enqueued(94), _enqueued(170), TimeBasis.ENQUEUED),
        # The first event of app a's run (80) is late by app b's run before it.
        Window(_at(60), _at(160), apps=frozenset({"a"})),
    ],
    ids=["event-time", "enqueued-time", "one-app"],
)
async def test_a_reprocessed_sub_range_stores_the_live_documents(
    log_path: Path, tmp_path: Path, window: Window
) -> None:
    await _live(log_path, tmp_path / "live.db")
    live = _stored(tmp_path / "live.db")
    await _reprocess(log_path, tmp_path / "replay.db", tmp_path / "job.db", window)
    replayed = _stored(tmp_path / "replay.db")

    assert replayed
    # Something to compare: the range holds late events, and those before it were late too.
    assert sum(b'"late":true' in doc for doc in replayed.values()) >= 5
    assert {id_: live[id_] for id_ in replayed} == replayed
