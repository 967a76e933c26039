"""Ingest pushes back while the processor is too far behind: 503 with Retry-After, nothing of
the refused request kept, and posts accepted again once the processor has caught up."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import orjson
import pytest
from prometheus_client import CollectorRegistry

from evalstream.ingest_pool import ingest_in_workers
from evalstream.settings import load_settings
from store.sqlite import SqliteStore
from stream.ops import OpsRoutes
from stream.sources.local_log import LocalLog
from stream.stats import ProcessorStats

pytestmark = pytest.mark.integration

PARTITIONS = 2
LIMIT = 250
NOW = datetime.now(UTC).replace(microsecond=0)


def batch(number: int) -> bytes:
    """100 valid events, each of its own trace."""
    return orjson.dumps(
        [
            {
                "app_id": f"app-{n % 5}",
                "timestamp": (NOW - timedelta(minutes=1)).isoformat(),
                "trace_id": f"b{number}-{n}",
            }
            for n in range(100)
        ]
    )


async def test_posts_are_refused_past_the_backlog_limit_and_kept_again_after(
    tmp_path: Path,
) -> None:
    settings = load_settings(
        embedded={"data_dir": tmp_path, "partitions": PARTITIONS},
        ingest={"max_backlog": LIMIT},
    )
    group = settings.processor.consumer_group
    log = LocalLog(tmp_path / "log.db", PARTITIONS)
    async with (
        SqliteStore(tmp_path / "store.db") as store,
        ingest_in_workers(
            settings, 1, 0, OpsRoutes(ProcessorStats(), store).routes, CollectorRegistry(),
            lambda _: None,
        ) as pool,
    ):  # fmt: skip
        stop = asyncio.Event()
        running = asyncio.create_task(pool.run(stop))
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{pool.port}") as client:
                # No processor runs: the backlog only grows, until ingest refuses.
                accepted, refused, number = 0, None, 0
                while refused is None and number < 50:
                    answer = await client.post("/api/telemetry", content=batch(number))
                    number += 1
                    if answer.status_code == 202:
                        accepted += 100
                    else:
                        refused = answer
                assert refused is not None, "never refused"
                assert refused.status_code == 503
                assert refused.headers["retry-after"] == "1"
                body = refused.json()
                assert body["error"] == "backlog" and body["accepted"] == 0
                assert f"limit {LIMIT}" in body["message"]
                assert "send it again" in body["message"]
                # One ingest process: it counts what it appended since its last reading, so
                # it refuses the first post after the backlog passed the limit.
                assert accepted == (LIMIT // 100 + 1) * 100
                assert await log.backlog_async(group) == accepted  # the refused 100 not kept

                # The processor catches up (its checkpoints reach the heads): posts are kept.
                for partition in range(PARTITIONS):
                    head = await log.last_sequence_async(partition)
                    await log.update_checkpoint_async(group, partition, head)
                deadline = time.monotonic() + 10
                while True:
                    answer = await client.post("/api/telemetry", content=batch(number))
                    if answer.status_code != 503 or time.monotonic() > deadline:
                        break
                    await asyncio.sleep(0.05)  # the next backlog reading, 0.2 s at most
                assert answer.status_code == 202
                assert await log.backlog_async(group) == 100
        finally:
            stop.set()
            await running
            await log.aclose()
