"""How many ingest worker processes the processor starts, and when it starts one again."""

from __future__ import annotations

import asyncio
import os
from typing import cast

import httpx
import pytest
from starlette.applications import Starlette

from common.retry import Backoff
from evalstream import ingest_worker
from evalstream.ingest_pool import MAX_FAILED_STARTS, IngestPool, worker_count
from evalstream.ingest_worker import EXIT_PASSING, WorkerSpec
from evalstream.settings import SettingsError
from stream.metrics import SummedWorkers
from stream.sources.subprocess_channel import Channel


def test_ingest_workers_are_as_configured_else_half_the_usable_cores() -> None:
    assert worker_count(0) == 0
    assert worker_count(3) == 3
    assert worker_count(None) == max(1, len(os.sched_getaffinity(0)) // 2)


async def test_a_worker_that_cannot_start_for_a_passing_cause_is_started_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The data dir full: each new worker exits at once, for longer than the failed starts
    # the pool allows a configuration that can never serve, then there is room again.
    spec = cast(WorkerSpec, None)
    pool = IngestPool(spec, 1, SummedWorkers(), 0, restart_backoff=Backoff(0, 0, jitter=False))
    stop = asyncio.Event()
    starts = 0

    async def run_one(slot: int, stop: asyncio.Event) -> int:
        nonlocal starts
        starts += 1
        if starts > MAX_FAILED_STARTS + 2:
            stop.set()
            return 0
        return EXIT_PASSING

    monkeypatch.setattr(pool, "_run_one", run_one)
    await pool.run(stop)
    assert starts == MAX_FAILED_STARTS + 3


async def test_a_worker_that_cannot_serve_for_a_passing_cause_says_so_in_its_exit_code(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def full(spec: WorkerSpec, channel: object) -> None:
        raise SettingsError("embedded.data_dir: /data is full", retryable=True)

    monkeypatch.setattr(ingest_worker, "serve", full)
    assert await ingest_worker.start(cast(WorkerSpec, None), cast(Channel, None)) == EXIT_PASSING

    async def misconfigured(spec: WorkerSpec, channel: object) -> None:
        raise SettingsError("ingest.auth: no key")

    monkeypatch.setattr(ingest_worker, "serve", misconfigured)
    with pytest.raises(SettingsError):
        await ingest_worker.start(cast(WorkerSpec, None), cast(Channel, None))


async def test_a_forwarded_request_keeps_every_value_of_a_repeated_query_key() -> None:
    """/report?app=a&app=b through a worker: the processor sees both apps."""
    seen: list[str] = []

    def processor(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.query.decode())
        return httpx.Response(200, text="page")

    async with httpx.AsyncClient(
        transport=httpx.MockTransport(processor), base_url="http://processor"
    ) as upstream:
        worker = Starlette(routes=ingest_worker.forwarded_routes(upstream, ["/report"]))
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=worker), base_url="http://worker"
        ) as client:
            answer = await client.get("/report?app=a&app=b&from=2h")
    assert answer.status_code == 200
    assert seen == ["app=a&app=b&from=2h"]
