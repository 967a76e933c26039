"""Answers of the wrong shape from the Batch test server: JSON, but not what the call returns
(``[]`` or ``{}`` for a job, task counts that are not counts, a task without ``state``). Each is
a non-retryable error naming the call and what was wrong, read once: never a traceback, a
report built from it, or a follow until the deadline."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import pytest
from azure.batch import models

from coldpath.executors.batch import BatchError, BatchExecutor, BatchJobStalled, batch_client
from common.retry import Backoff
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

QUICK = Backoff(initial_s=0.01, max_s=0.02, max_retries=2)
COUNTS = {"active": 0, "running": 0, "completed": 1, "succeeded": 1, "failed": 0}

# (route below /jobs/{job}, the route's name in the server's stats, the answer, the call as
# the error names it, what the error says was wrong)
FOLLOW_CASES = {
    "job-as-a-list": ("", "", [], "reading job {job}", "a job is a JSON object, not []"),
    "job-without-state": (
        "",
        "",
        {},
        "reading job {job}",
        "job state None is not a Batch job state",
    ),
    "task-counts-as-a-list": (
        "/taskcounts",
        "/taskcounts",
        [],
        "reading task counts of {job}",
        "task counts are a JSON object, not []",
    ),
    "task-counts-empty": (
        "/taskcounts",
        "/taskcounts",
        {},
        "reading task counts of {job}",
        "taskCounts is None, not an object",
    ),
    "task-count-as-a-word": (
        "/taskcounts",
        "/taskcounts",
        {"taskCounts": {**COUNTS, "completed": "all"}},
        "reading task counts of {job}",
        "taskCounts.completed is 'all', not a count",
    ),
    "task-page-as-a-list": (
        "/tasks",
        "/tasks",
        [],
        "listing tasks of {job}",
        "a list page is a JSON object, not []",
    ),
    "task-page-value-as-text": (
        "/tasks",
        "/tasks",
        {"value": "shard-000000"},
        "listing tasks of {job}",
        "a list page's value is 'shard-000000', not a list",
    ),
    "task-without-state": (
        "/tasks",
        "/tasks",
        {"value": [{"id": "shard-000000"}]},
        "listing tasks of {job}",
        "task shard-000000: state None is not a Batch task state",
    ),
    "task-retry-count-as-a-word": (
        "/tasks",
        "/tasks",
        {
            "value": [
                {
                    "id": "shard-000000",
                    "state": "completed",
                    "executionInfo": {
                        "retryCount": "none",
                        "requeueCount": 0,
                        "result": "success",
                    },
                }
            ]
        },
        "listing tasks of {job}",
        "task shard-000000: executionInfo.retry_count is 'none', not a count",
    ),
}


def filled(value: Any, job: str) -> Any:
    """``value`` with ``{job}`` in its strings replaced by the job id."""
    if isinstance(value, str):
        return value.replace("{job}", job)
    if isinstance(value, list):
        return [filled(item, job) for item in value]
    if isinstance(value, dict):
        return {key: filled(item, job) for key, item in value.items()}
    return value


def requests_to(server: BatchServer, route: str) -> int:
    return int(server.stats()["requests"].get(route, 0))


@pytest.mark.parametrize("case", list(FOLLOW_CASES))
def test_a_wrong_shaped_answer_while_following_is_one_clear_error(
    batch_server: BatchServer, case: str
) -> None:
    below, route_below, answer, call, problem = FOLLOW_CASES[case]
    run_async(ensure_pool(batch_server))
    # A deadline that a follow taking the answer at face value reaches within the test.
    settings = executor_settings(batch_server).model_copy(
        update={"follow_timeout": timedelta(seconds=3)}
    )
    manifest = one_off_manifest(1)
    job = manifest.id
    route = "GET /jobs/{job_id}" + route_below
    batch_server.fail_requests(
        200, 1000, match=f"/jobs/{job}{below}$", method="GET", answer=filled(answer, job)
    )
    before = requests_to(batch_server, route)
    try:
        with pytest.raises(BatchError) as error:
            run_async(BatchExecutor(settings, stage=stage_nowhere, backoff=QUICK).run(manifest))
        asked = requests_to(batch_server, route) - before
    finally:
        batch_server.reset_faults()

    assert type(error.value) is BatchError, error.value
    message = str(error.value)
    assert message.startswith(
        f"{call.format(job=job)}: the answer is not of the Batch service's shape ({problem})"
    ), message
    assert "azure.batch.account_url" in message and "\n" not in message
    assert error.value.retryable is False
    assert asked == 1  # not asked again: the same call answers the same way


@pytest.mark.parametrize(
    ("answer", "problem"),
    [
        ([], "a pool is a JSON object, not []"),
        ({}, "the pool's id is None"),
    ],
    ids=["pool-as-a-list", "pool-without-id"],
)
def test_a_wrong_shaped_pool_is_refused_before_the_job_is_made(
    batch_server: BatchServer, answer: Any, problem: str
) -> None:
    run_async(ensure_pool(batch_server))
    settings = executor_settings(batch_server)
    manifest = one_off_manifest(1)
    batch_server.fail_requests(200, 1000, match=f"/pools/{POOL_ID}$", method="GET", answer=answer)
    before = requests_to(batch_server, "POST /jobs")
    try:
        with pytest.raises(BatchError) as error:
            run_async(BatchExecutor(settings, stage=stage_nowhere, backoff=QUICK).run(manifest))
        created = requests_to(batch_server, "POST /jobs") - before
    finally:
        batch_server.reset_faults()

    assert str(error.value).startswith(
        f"reading pool {POOL_ID}: the answer is not of the Batch service's shape ({problem})"
    ), error.value
    assert error.value.retryable is False
    assert created == 0


@pytest.mark.parametrize(
    ("answer", "problem"),
    [
        ([], "the task results are a JSON object, not []"),
        (
            {"value": [{"taskId": "shard-999999", "status": "success"}]},
            "a task result names task 'shard-999999', not sent",
        ),
        (
            {"value": [{"taskId": "shard-000000", "status": "done"}]},
            "task shard-000000's status is 'done'",
        ),
    ],
    ids=["results-as-a-list", "result-of-a-task-not-sent", "result-status-unknown"],
)
def test_a_wrong_shaped_answer_to_adding_tasks_is_one_clear_error(
    batch_server: BatchServer, answer: Any, problem: str
) -> None:
    run_async(ensure_pool(batch_server))
    settings = executor_settings(batch_server)
    manifest = one_off_manifest(1)
    job = manifest.id
    route = "POST /jobs/{job_id}/addtaskcollection"
    batch_server.fail_requests(
        200, 1000, match=f"/jobs/{job}/addtaskcollection$", method="POST", answer=answer
    )
    before = requests_to(batch_server, route)
    try:
        # Chunks are added in a task group: its error comes in a group, as any chunk's does.
        with pytest.raises(ExceptionGroup) as error:
            run_async(BatchExecutor(settings, stage=stage_nowhere, backoff=QUICK).run(manifest))
        asked = requests_to(batch_server, route) - before
    finally:
        batch_server.reset_faults()

    (leaf,) = error.value.exceptions
    assert isinstance(leaf, BatchError), leaf
    assert str(leaf).startswith(
        f"adding 1 tasks to job {job}: the answer is not of the Batch service's shape ({problem})"
    ), leaf
    assert leaf.retryable is False
    assert asked == 1


@pytest.mark.parametrize(
    ("answer", "problem"),
    [
        ([], "a job is a JSON object, not []"),
        ({"id": "{job}", "state": "active", "poolInfo": "pool"}, "the job's poolInfo is 'pool'"),
        (
            {"id": "{job}", "state": "active", "metadata": [5]},
            "the job's metadata is [5], not a list of items",
        ),
    ],
    ids=["job-as-a-list", "pool-info-as-text", "metadata-as-an-object"],
)
def test_a_wrong_shaped_existing_job_is_one_clear_error(
    batch_server: BatchServer, answer: Any, problem: str
) -> None:
    run_async(ensure_pool(batch_server))
    settings = executor_settings(batch_server)
    manifest = one_off_manifest(1)
    job = manifest.id
    run_async(
        BatchExecutor(settings, stage=stage_nowhere, follow=False, backoff=QUICK).run(manifest)
    )
    batch_server.fail_requests(
        200, 1000, match=f"/jobs/{job}$", method="GET", answer=filled(answer, job)
    )
    try:
        with pytest.raises(BatchError) as error:
            run_async(BatchExecutor(settings, stage=stage_nowhere, backoff=QUICK).run(manifest))
    finally:
        batch_server.reset_faults()

    assert str(error.value).startswith(
        f"reading existing job {job}: the answer is not of the Batch service's shape ({problem})"
    ), error.value
    assert error.value.retryable is False


def test_a_wrong_shaped_pool_at_the_follow_deadline_is_said_in_its_message(
    batch_server: BatchServer,
) -> None:
    pool = f"starved-{uuid.uuid4().hex[:8]}"
    batch_server.fail_allocations(pool, code="AccountCoreQuotaReached", message="No cores.")
    settings = executor_settings(batch_server, pool_id=pool).model_copy(
        update={"follow_timeout": timedelta(seconds=1)}
    )
    manifest = one_off_manifest(1)

    async def scenario() -> None:
        async with batch_client(settings) as client:
            await client.create_pool(
                models.BatchPoolCreateOptions(
                    id=pool, vm_size="standard_d2s_v3", target_dedicated_nodes=1
                )
            )
        await BatchExecutor(settings, stage=stage_nowhere, backoff=QUICK).run(manifest)

    # The check before the job is made reads the pool as it is; the read at the deadline
    # gets a list.
    batch_server.fail_requests(200, 1000, match=f"/pools/{pool}$", method="GET", answer=[], after=1)
    try:
        with pytest.raises(BatchJobStalled) as error:
            run_async(scenario())
    finally:
        batch_server.reset_faults()

    message = str(error.value)
    assert message.startswith(f"Batch job {manifest.id} not done after 0:00:01"), message
    assert (
        f"pool {pool} unreadable (reading it: the answer is not of the Batch service's shape "
        "(a pool is a JSON object, not [])"
    ) in message
    assert f"evalstream coldpath status {manifest.id}" in message and "\n" not in message
