"""Ingest pushes back while the processor is too far behind: with no processor storing
anything a post past the limit waits ``backlog_hold_s`` for its turn, then is answered 503 with
Retry-After, nothing of it kept; once the processor has caught up posts are kept again."""

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
HOLD_S = 0.5
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
        ingest={"max_backlog": LIMIT, "backlog_hold_s": HOLD_S},
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
                    started = time.monotonic()
                    answer = await client.post("/api/telemetry", content=batch(number))
                    number += 1
                    if answer.status_code == 202:
                        accepted += 100
                    else:
                        refused = answer
                assert refused is not None, "never refused"
                assert refused.status_code == 503
                assert time.monotonic() - started >= HOLD_S  # held first, refused after
                assert refused.headers["retry-after"] == "1"
                body = refused.json()
                assert body["error"] == "backlog" and body["accepted"] == 0
                assert (
                    f"limit {LIMIT}) and this request could not go within {HOLD_S:g} s"
                    in (body["message"])
                )
                assert "send it again" in body["message"]
                # One ingest process: it counts what it appended since its last reading, so
                # it refuses the first post after the backlog passed the limit.
                assert accepted == (LIMIT // 100 + 1) * 100
                assert await log.backlog_async(group) == accepted  # the refused 100 not kept

                # The processor catches up: one partition checkpointed, the other stored (its
                # progress). The next post is kept: should ingest's last reading (up to 0.2 s
                # old) still be past the limit, the post is held and the backlog read again.
                heads = [await log.last_sequence_async(p) for p in range(PARTITIONS)]
                await log.update_checkpoint_async(group, 0, heads[0])
                await log.update_progress_async(group, 1, heads[1])
                answer = await client.post("/api/telemetry", content=batch(number))
                assert answer.status_code == 202
                assert await log.backlog_async(group) == 100
        finally:
            stop.set()
            await running
            await log.aclose()
