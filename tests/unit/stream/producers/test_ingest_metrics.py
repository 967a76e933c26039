"""Ingest's metrics agree with the store: every event it refuses and keeps in quarantine is
counted by the code of its first issue, as the processor counts the ones it quarantines."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry

from schemas import AppDirectory
from store.sqlite import SqliteStore
from stream.decode import Decoder
from stream.enrich import Enricher
from stream.metrics import IngestMetrics
from stream.producers.ingest import IngestApp
from stream.sources.local_log import LocalLogSink

WHEN = datetime.now(UTC).isoformat()


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    async with SqliteStore(tmp_path / "store.db") as store:
        yield store


async def test_events_refused_at_the_door_are_counted_by_code_as_stored(
    tmp_path: Path, store: SqliteStore
) -> None:
    registry = CollectorRegistry()
    async with LocalLogSink(tmp_path / "log.db", 2) as sink:
        app = IngestApp(
            Decoder(),
            Enricher(AppDirectory(), b"k", "ingest"),
            sink,
            store,
            metrics=IngestMetrics(registry),
        )
        transport = httpx.ASGITransport(app=app.app, client=("127.0.0.1", 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://evalstream") as http:
            good = {"app_id": "a", "timestamp": WHEN, "trace_id": "t"}
            mixed = await http.post(
                "/api/telemetry", json=[good, {"app_id": "a"}, {"app_id": "b", "trace_id": "u"}]
            )
            assert mixed.status_code == 207
            broken = await http.post("/api/telemetry", content=b"[{not json")
            assert broken.status_code == 400

    def counted(code: str) -> float | None:
        return registry.get_sample_value(
            "evalstream_ingest_quarantined_events_total", {"code": code}
        )

    assert counted("missing") == 2
    assert counted("malformed_json") == 1
    assert await store.count("quarantine") == 3
