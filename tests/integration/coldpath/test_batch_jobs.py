"""The Batch executor with a job it did not just make, and a job that never runs: on the Batch
test server, a job of the manifest's id found on another pool, disabled or disabling, or ended
with other tasks; disabled while followed; and followed past its deadline on a pool that gets
no nodes. Each is one clear error instead of a job reused as it is or followed for ever."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Awaitable
from datetime import timedelta
from typing import Any, TypeVar

import pytest
from azure.batch import models
from azure.batch.aio import BatchClient
from azure.core.exceptions import ResourceNotFoundError

from coldpath.executors.batch import (
    BatchExecutor,
    BatchJobConflict,
    BatchJobStalled,
    batch_client,
    wire_text,
)
from coldpath.executors.batch_config import BatchSettings
from coldpath.ports import JobReport
from tests.emulators.batch_fixtures import BatchServer
from tests.integration.coldpath.batch_harness import (
    POOL_ID,
    ensure_pool,
    executor_settings,
    one_off_manifest,
    run_async,
    stage_nowhere,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

T = TypeVar("T")
# Long enough for any of these runs to end on its own; a run that is still going after it
# would have been followed for ever.
GUARD_S = 15
SLEEPER = "sleep 60 #"  # the task command line's arguments become a comment


async def guarded(run: Awaitable[T]) -> T:
    async with asyncio.timeout(GUARD_S):
        return await run


async def make_job(client: BatchClient, job_id: str, pool_id: str, *tasks: tuple[str, str]) -> None:
    """A job as another trigger or an operator would have made it, with (task id, command)."""
    await client.create_job(
        models.BatchJobCreateOptions(id=job_id, pool_info=models.BatchPoolInfo(pool_id=pool_id))
    )
    for task, command in tasks:
        await client.create_task(
            job_id, models.BatchTaskCreateOptions(id=task, command_line=command)
        )


async def task_state(client: BatchClient, job_id: str, task: str, wanted: str) -> None:
    """Until the task is in state ``wanted`` (it may not be added yet)."""
    while True:
        with contextlib.suppress(ResourceNotFoundError):
            if wire_text((await client.get_task(job_id, task)).state) == wanted:
                return
        await asyncio.sleep(0.05)


async def job_state(client: BatchClient, job_id: str, wanted: str) -> None:
    while wire_text((await client.get_job(job_id)).state) != wanted:
        await asyncio.sleep(0.05)


async def end_job(settings: BatchSettings, job_id: str) -> None:
    """Delete a test's job so its sleeping task does not outlive the test."""
    async with batch_client(settings) as client:
        await client.begin_delete_job(job_id)


async def task_ids(settings: BatchSettings, job_id: str) -> list[str]:
    async with batch_client(settings) as client:
        return [task.id async for task in client.list_tasks(job_id)]


def test_a_job_on_another_pool_is_an_error_naming_both_pools(batch_server: BatchServer) -> None:
    run_async(ensure_pool(batch_server))
    settings = executor_settings(batch_server)
    manifest = one_off_manifest(2)
    other = f"other-{uuid.uuid4().hex[:8]}"

    async def scenario() -> JobReport:
        async with batch_client(settings) as client:
            await client.create_pool(
                models.BatchPoolCreateOptions(
                    id=other, vm_size="standard_d2s_v3", target_dedicated_nodes=0
                )
            )
            await make_job(client, manifest.id, other)
        return await guarded(BatchExecutor(settings, stage=stage_nowhere).run(manifest))

    with pytest.raises(BatchJobConflict) as error:
        run_async(scenario())

    message = str(error.value)
    assert f"exists on pool {other!r}, not on the configured pool {POOL_ID!r}" in message
    assert "azure.batch.pool.id" in message and "\n" not in message
    # Nothing was added to a job that would run on a pool nobody asked for.
    assert run_async(task_ids(settings, manifest.id)) == []


@pytest.mark.parametrize("state", ["disabled", "disabling"])
def test_a_disabled_job_is_reported_not_waited_on(batch_server: BatchServer, state: str) -> None:
    run_async(ensure_pool(batch_server))
    settings = executor_settings(batch_server)
    manifest = one_off_manifest(1)

    async def scenario() -> JobReport:
        async with batch_client(settings) as client:
            # Disabling lasts while a running task is left to finish ("wait").
            tasks = [("shard-000000", SLEEPER)] if state == "disabling" else []
            await make_job(client, manifest.id, POOL_ID, *tasks)
            if tasks:
                await task_state(client, manifest.id, "shard-000000", "running")
            await client.begin_disable_job(
                manifest.id, models.BatchJobDisableOptions(disable_tasks="wait")
            )
            await job_state(client, manifest.id, state)
        try:
            return await guarded(BatchExecutor(settings, stage=stage_nowhere).run(manifest))
        finally:
            await end_job(settings, manifest.id)

    with pytest.raises(BatchJobConflict) as error:
        run_async(scenario())

    message = str(error.value)
    assert f"Batch job {manifest.id} is {state}: an operator disabled it" in message
    assert f"az batch job enable --job-id {manifest.id}" in message


def test_a_job_disabled_while_followed_ends_the_wait(batch_server: BatchServer) -> None:
    run_async(ensure_pool(batch_server))
    settings = executor_settings(batch_server).model_copy(update={"command": SLEEPER})
    manifest = one_off_manifest(1)

    async def scenario() -> JobReport:
        running = asyncio.create_task(BatchExecutor(settings, stage=stage_nowhere).run(manifest))
        try:
            async with batch_client(settings) as client:
                await guarded(task_state(client, manifest.id, "shard-000000", "running"))
                # Its running task goes back to the queue; the job schedules nothing more.
                await client.begin_disable_job(
                    manifest.id, models.BatchJobDisableOptions(disable_tasks="requeue")
                )
            return await guarded(running)
        finally:
            running.cancel()
            await end_job(settings, manifest.id)

    with pytest.raises(BatchJobConflict, match="is disabled while it was followed"):
        run_async(scenario())


def test_an_ended_job_is_the_same_work_done_only_with_every_shard_s_task(
    batch_server: BatchServer,
) -> None:
    run_async(ensure_pool(batch_server))
    settings = executor_settings(batch_server)
    done, partial = one_off_manifest(2), one_off_manifest(3)
    reports: list[JobReport] = []

    async def scenario() -> JobReport:
        executor = BatchExecutor(settings, stage=stage_nowhere)
        reports.append(await guarded(executor.run(done)))
        reports.append(await guarded(executor.run(done)))
        async with batch_client(settings) as client:
            # Ended before all of its shards' tasks were added (a trigger of another build, an
            # operator's hand): its one task done, the job set to end with its tasks.
            await make_job(client, partial.id, POOL_ID, ("shard-000000", "true"))
            await task_state(client, partial.id, "shard-000000", "completed")
            await client.update_job(
                partial.id,
                models.BatchJobUpdateOptions(
                    all_tasks_complete_mode=models.BatchAllTasksCompleteMode.TERMINATE_JOB
                ),
            )
            await job_state(client, partial.id, "completed")
        return await guarded(executor.run(partial))

    route = "POST /jobs/{job_id}/addtaskcollection"
    calls_before = batch_server.stats()["requests"].get(route, 0)
    with pytest.raises(BatchJobConflict) as error:
        run_async(scenario())

    # The completed job of the same manifest is that work done: reported again, nothing added
    # (one add-task-collection call per task of the first run: chunk_size 1).
    first, again = reports
    assert first.ok and again.ok and first.succeeded == again.succeeded == (0, 1)
    assert batch_server.stats()["requests"][route] - calls_before == 2
    # One ended without some of its shards' tasks cannot take them.
    message = str(error.value)
    assert f"Batch job {partial.id} is completed with 1 of 3 shard tasks" in message
    assert "(missing shard-000001, shard-000002)" in message
    assert "--rerun" in message and "\n" not in message
    assert run_async(task_ids(settings, partial.id)) == ["shard-000000"]


def test_a_job_whose_tasks_never_get_a_node_stops_at_its_deadline(
    batch_server: BatchServer,
) -> None:
    pool = f"starved-{uuid.uuid4().hex[:8]}"
    quota = "The specified account has reached its dedicated core quota."
    batch_server.fail_allocations(pool, code="AccountCoreQuotaReached", message=quota)
    settings = executor_settings(batch_server, pool_id=pool).model_copy(
        update={"follow_timeout": timedelta(seconds=1)}
    )
    manifest = one_off_manifest(3)

    async def scenario() -> Any:
        async with batch_client(settings) as client:
            await client.create_pool(
                models.BatchPoolCreateOptions(
                    id=pool, vm_size="standard_d2s_v3", target_dedicated_nodes=2
                )
            )
        return await guarded(BatchExecutor(settings, stage=stage_nowhere).run(manifest))

    try:
        with pytest.raises(BatchJobStalled) as error:
            run_async(scenario())
    finally:
        batch_server.reset_faults()

    message = str(error.value)
    assert f"Batch job {manifest.id} not done after 0:00:01 (azure.batch.follow_timeout)" in message
    assert "job active; tasks 3 active, 0 running, 0 completed (0 succeeded, 0 failed) of 3" in (
        message
    )
    assert f"pool {pool} active, allocation steady, 0 of 2 dedicated and 0 of 0 Spot nodes" in (
        message
    )
    assert f"resize error AccountCoreQuotaReached: {quota}" in message
    assert f"evalstream coldpath status {manifest.id}" in message and "\n" not in message
