"""The Batch executor end to end on the local servers: `coldpath backfill --executor batch`
submits a job per window to the Batch test server, whose tasks really run `evalstream coldpath
run-shard` against the Cosmos server and the AMQP broker's Service Bus topic; results and breach
ids equal the local executor's for the same windows. A re-trigger finds the job it made."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from coldpath.executors.batch import BatchExecutor, batch_client
from coldpath.trigger import WindowChoice, plan
from evalstream import wiring
from evalstream.cli_coldpath import code_version
from tests.emulators.batch_fixtures import BatchServer
from tests.integration.coldpath.batch_harness import (
    START,
    AzureColdpath,
    comparable,
    documents,
    ensure_pool,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

HOURS = 2


@pytest.fixture
def cold(
    tmp_path: Path, cosmos_server: Any, amqp_broker: Any, azurite: Any, batch_server: BatchServer
) -> Iterator[AzureColdpath]:
    asyncio.run(ensure_pool(batch_server))
    harness = AzureColdpath(tmp_path, cosmos_server, amqp_broker, azurite, batch_server)
    harness.group_size = 4
    harness.apps = 6
    yield harness
    asyncio.run(harness.drop())


def backfill(cold: AzureColdpath, executor: str, env: dict[str, str]) -> str:
    process = subprocess.run(
        [
            sys.executable,
            "-m",
            "evalstream",
            "coldpath",
            "backfill",
            "--from",
            START.isoformat(),
            "--to",
            (START + timedelta(hours=HOURS)).isoformat(),
            "--executor",
            executor,
        ],
        env={**os.environ, **env},
        capture_output=True,
        timeout=240,
        check=False,
    )
    output = process.stderr.decode() + process.stdout.decode()
    assert process.returncode == 0, output
    return output


def test_batch_jobs_give_the_local_executors_results_and_breaches(cold: AzureColdpath) -> None:
    asyncio.run(cold.seed(documents(cold.name, apps=6, hours=HOURS)))

    backfill(cold, "local", cold.env("local"))
    output = backfill(cold, "batch", cold.trigger_env("batch"))
    assert output.count("manifest ") == HOURS, output

    local, on_batch = asyncio.run(cold.results("local")), asyncio.run(cold.results("batch"))
    # 6 apps × (speed: 2 metrics + health: 1 metric) × 2 windows
    assert len(local) == 6 * 3 * HOURS
    assert comparable(on_batch) == comparable(local)
    assert {r.status for r in local} >= {"ok", "warning", "critical"}
    breaches = cold.breach_ids("local")
    assert breaches and cold.breach_ids("batch") == breaches
    assert cold.publishes("batch") == (len(breaches), 0)

    # Each window's job is named after its manifest and every shard ran as its own task.
    stats = cold.batch.stats()["requests"]
    assert stats["POST /jobs"] == HOURS
    # Triggering again finds every unit done: nothing is submitted.
    backfill(cold, "batch", cold.trigger_env("batch"))
    assert cold.batch.stats()["requests"]["POST /jobs"] == HOURS


def test_a_second_run_of_a_manifest_finds_its_job(cold: AzureColdpath) -> None:
    cold.apps = 2
    cold.group_size = 2
    asyncio.run(cold.seed(documents(cold.name, apps=2, hours=1)))
    settings = cold.settings("again")

    async def scenario() -> tuple[Any, Any, list[str]]:
        async with wiring.evaluation_store(settings) as store:
            (manifest,) = await plan(
                settings.coldpath.policies,
                WindowChoice(
                    last=False, window=None, range_start=START, range_end=START + timedelta(hours=1)
                ),
                store,
                now=START + timedelta(days=1),
                group_size=settings.coldpath.group_size,
                code_version=code_version(),
            )
        executor = wiring.executor(settings, "batch")
        assert isinstance(executor, BatchExecutor)
        first = await executor.run(manifest)
        second = await executor.run(manifest)
        async with batch_client(settings.azure.batch) as client:
            tasks = [task.id async for task in client.list_tasks(manifest.id)]
        return first, second, tasks

    first, second, tasks = asyncio.run(scenario())
    assert first.ok and second.ok
    assert first.succeeded == second.succeeded == (0, 1)
    assert tasks == ["shard-000000", "shard-000001"]
