"""Contract: azure-batch 15.x BatchClient against the local Batch server, tasks really running."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from azure.batch import BatchClient
from azure.batch import models as batch
from azure.batch.aio import BatchClient as AsyncBatchClient
from azure.core.credentials import AzureNamedKeyCredential
from azure.core.exceptions import HttpResponseError, ResourceExistsError

from tests.emulators.batch_fixtures import BatchServer

pytestmark = pytest.mark.integration

DEADLINE_S = 30.0


def _credential(server: BatchServer) -> AzureNamedKeyCredential:
    return AzureNamedKeyCredential(server.account_name, server.account_key)


@pytest.fixture
def client(batch_server: BatchServer) -> Iterator[BatchClient]:
    with BatchClient(batch_server.url, _credential(batch_server)) as batch_client:
        yield batch_client


def _id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _pool(client: BatchClient, *, nodes: int = 1, slots: int = 4) -> str:
    pool_id = _id("pool")
    client.create_pool(
        batch.BatchPoolCreateOptions(
            id=pool_id,
            vm_size="standard_d2s_v3",
            target_dedicated_nodes=nodes,
            task_slots_per_node=slots,
        )
    )
    return pool_id


def _job(client: BatchClient, pool_id: str, **options: object) -> str:
    job_id = _id("job")
    client.create_job(
        batch.BatchJobCreateOptions(
            id=job_id, pool_info=batch.BatchPoolInfo(pool_id=pool_id), **options
        )
    )
    return job_id


def _wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {DEADLINE_S:.0f}s waiting for {what}")
        time.sleep(0.05)


def _all_completed(client: BatchClient, job_id: str) -> list[batch.BatchTask]:
    tasks: list[batch.BatchTask] = []

    def done() -> bool:
        tasks[:] = list(client.list_tasks(job_id))
        return bool(tasks) and all(t.state == batch.BatchTaskState.COMPLETED for t in tasks)

    _wait_for(done, f"every task of {job_id} to complete")
    return tasks


def test_pool_create_get_and_duplicate(client: BatchClient) -> None:
    pool_id = _pool(client, nodes=2, slots=3)

    pool = client.get_pool(pool_id)

    assert pool.id == pool_id
    assert pool.state == batch.BatchPoolState.ACTIVE
    assert pool.allocation_state == batch.AllocationState.STEADY
    assert (pool.current_dedicated_nodes, pool.task_slots_per_node) == (2, 3)
    with pytest.raises(ResourceExistsError) as duplicate:
        client.create_pool(batch.BatchPoolCreateOptions(id=pool_id, vm_size="standard_d2s_v3"))
    assert duplicate.value.error is not None and duplicate.value.error.code == "PoolExists"


def test_autoscale_enable_and_evaluate(client: BatchClient) -> None:
    pool_id = _pool(client, nodes=0)
    formula = "$busy = $PendingTasks.GetSample(1); $TargetDedicatedNodes = $busy > 0 ? 3 : 1"

    client.enable_pool_auto_scale(
        pool_id, batch.BatchPoolEnableAutoScaleOptions(auto_scale_formula=formula)
    )
    run = client.evaluate_pool_auto_scale(
        pool_id,
        batch.BatchPoolEvaluateAutoScaleOptions(
            auto_scale_formula="$TargetDedicatedNodes = max(2, 5)"
        ),
    )
    pool = client.get_pool(pool_id)

    assert pool.enable_auto_scale is True
    assert pool.auto_scale_formula == formula
    assert pool.target_dedicated_nodes == pool.current_dedicated_nodes == 1
    assert pool.auto_scale_run is not None and "$TargetDedicatedNodes=1" in (
        pool.auto_scale_run.results or ""
    )
    assert run.error is None
    assert "$TargetDedicatedNodes=5" in (run.results or "")
    # Evaluation does not change the pool.
    assert client.get_pool(pool_id).target_dedicated_nodes == 1
    broken = client.evaluate_pool_auto_scale(
        pool_id,
        batch.BatchPoolEvaluateAutoScaleOptions(auto_scale_formula="$TargetDedicatedNodes = ("),
    )
    assert broken.error is not None and broken.error.code == "AutoScalingFormulaSyntaxError"


def test_task_collection_runs_with_env_retries_and_files(client: BatchClient) -> None:
    pool_id = _pool(client)
    job_id = _job(
        client,
        pool_id,
        common_environment_settings=[batch.EnvironmentSetting(name="WINDOW", value="2026-01-01")],
    )
    # Fails on its first run, succeeds on the retry: the marker survives in the task directory.
    flaky = (
        "if [ -f ../marker ]; then echo second; else touch ../marker; echo first >&2; exit 7; fi"
    )
    tasks = [
        batch.BatchTaskCreateOptions(
            id="shard-0",
            command_line='echo "$WINDOW $SHARD $AZ_BATCH_JOB_ID $AZ_BATCH_TASK_ID"',
            environment_settings=[batch.EnvironmentSetting(name="SHARD", value="0")],
        ),
        batch.BatchTaskCreateOptions(
            id="shard-1",
            command_line=flaky,
            constraints=batch.BatchTaskConstraints(max_task_retry_count=2),
        ),
        batch.BatchTaskCreateOptions(id="shard-2", command_line="exit 3"),
    ]

    added = client.create_task_collection(job_id, batch.BatchTaskGroup(task_values=tasks))

    assert added.result_values is not None
    assert sorted((r.task_id, r.status) for r in added.result_values) == [
        ("shard-0", batch.BatchTaskAddStatus.SUCCESS),
        ("shard-1", batch.BatchTaskAddStatus.SUCCESS),
        ("shard-2", batch.BatchTaskAddStatus.SUCCESS),
    ]
    done = {t.id: t for t in _all_completed(client, job_id)}
    info = {task_id: task.execution_info for task_id, task in done.items()}
    assert all(i is not None for i in info.values())
    ok, flaky_info, failed = info["shard-0"], info["shard-1"], info["shard-2"]
    assert ok is not None and flaky_info is not None and failed is not None
    assert (ok.exit_code, ok.result, ok.retry_count) == (
        0,
        batch.BatchTaskExecutionResult.SUCCESS,
        0,
    )
    assert (flaky_info.exit_code, flaky_info.result, flaky_info.retry_count) == (
        0,
        batch.BatchTaskExecutionResult.SUCCESS,
        1,
    )
    assert (failed.exit_code, failed.result, failed.retry_count) == (
        3,
        batch.BatchTaskExecutionResult.FAILURE,
        0,
    )
    assert failed.failure_info is not None and failed.failure_info.code == "FailureExitCode"

    stdout = b"".join(client.download_task_file(job_id, "shard-0", "stdout.txt")).decode()
    assert stdout == f"2026-01-01 0 {job_id} shard-0\n"
    assert b"".join(client.download_task_file(job_id, "shard-1", "stdout.txt")) == b"second\n"
    names = {f.name for f in client.list_task_files(job_id, "shard-1", recursive=True)}
    assert {"stdout.txt", "stderr.txt", "wd", "marker"} <= names
    counts = client.get_job_task_counts(job_id).task_counts
    assert (counts.completed, counts.succeeded, counts.failed, counts.active, counts.running) == (
        3,
        2,
        1,
        0,
        0,
    )


def test_list_tasks_filters_and_pages(client: BatchClient) -> None:
    pool_id = _pool(client)
    job_id = _job(client, pool_id)
    tasks = [
        batch.BatchTaskCreateOptions(id=f"t{i}", command_line="true" if i % 2 else "exit 1")
        for i in range(7)
    ]
    client.create_task_collection(job_id, batch.BatchTaskGroup(task_values=tasks))
    _all_completed(client, job_id)

    failed = client.list_tasks(job_id, filter="executionInfo/result eq 'failure'", max_results=2)
    pages = [[t.id for t in page] for page in failed.by_page()]

    assert pages == [["t0", "t2"], ["t4", "t6"]]


def test_more_than_100_tasks_in_one_call_is_rejected(client: BatchClient) -> None:
    job_id = _job(client, _pool(client))
    tasks = [batch.BatchTaskCreateOptions(id=f"t{i}", command_line="true") for i in range(101)]

    with pytest.raises(HttpResponseError) as rejected:
        client.create_task_collection(job_id, batch.BatchTaskGroup(task_values=tasks))

    assert rejected.value.status_code == 400
    assert rejected.value.error is not None and rejected.value.error.code == "InvalidPropertyValue"
    assert client.get_job_task_counts(job_id).task_counts.active == 0
    assert list(client.list_tasks(job_id)) == []


def test_body_over_1mb_is_rejected_and_the_sdk_helper_splits_it(client: BatchClient) -> None:
    job_id = _job(client, _pool(client))
    padding = "x" * 12_000  # 100 tasks x 12 KB > 1 MB
    tasks = [
        batch.BatchTaskCreateOptions(
            id=f"big{i}",
            command_line="true",
            environment_settings=[batch.EnvironmentSetting(name="PAD", value=padding)],
        )
        for i in range(100)
    ]

    with pytest.raises(HttpResponseError) as too_large:
        client.create_task_collection(job_id, batch.BatchTaskGroup(task_values=tasks))
    assert too_large.value.status_code == 413
    assert too_large.value.error is not None and too_large.value.error.code == "RequestBodyTooLarge"

    # create_tasks halves a chunk on RequestBodyTooLarge until it fits.
    result = client.create_tasks(job_id, tasks)
    assert result.result_values is not None and len(result.result_values) == 100
    assert len(_all_completed(client, job_id)) == 100


def test_task_slots_bound_concurrency(client: BatchClient, tmp_path: Path) -> None:
    pool_id = _pool(client, nodes=1, slots=2)
    job_id = _job(client, pool_id)
    log = tmp_path / "intervals.log"
    command = f'echo "start $(date +%s.%N)" >> {log}; sleep 0.8; echo "end $(date +%s.%N)" >> {log}'
    tasks = [batch.BatchTaskCreateOptions(id=f"s{i}", command_line=command) for i in range(4)]

    client.create_task_collection(job_id, batch.BatchTaskGroup(task_values=tasks))
    _all_completed(client, job_id)

    running = peak = 0
    events = sorted(
        (float(stamp), kind)
        for kind, stamp in (line.split() for line in log.read_text().splitlines())
    )
    for _stamp, kind in events:
        running += 1 if kind == "start" else -1
        peak = max(peak, running)
    assert len(events) == 8
    assert peak == 2


def test_terminate_job_kills_running_tasks_and_refuses_new_ones(client: BatchClient) -> None:
    job_id = _job(client, _pool(client))
    client.create_task(job_id, batch.BatchTaskCreateOptions(id="long", command_line="sleep 60"))
    _wait_for(
        lambda: client.get_task(job_id, "long").state == batch.BatchTaskState.RUNNING, "start"
    )

    # begin_terminate_job needs options: without them azure-batch 15.1.0 fails to build the request.
    client.begin_terminate_job(
        job_id, {"terminateReason": "window closed"}, polling_interval=0
    ).result()

    job = client.get_job(job_id)
    assert job.state == batch.BatchJobState.COMPLETED
    assert (
        job.execution_info is not None and job.execution_info.termination_reason == "window closed"
    )
    task = client.get_task(job_id, "long")
    assert task.state == batch.BatchTaskState.COMPLETED
    assert task.execution_info is not None
    assert task.execution_info.result == batch.BatchTaskExecutionResult.FAILURE
    with pytest.raises(HttpResponseError) as refused:
        client.create_task(job_id, batch.BatchTaskCreateOptions(id="late", command_line="true"))
    assert refused.value.status_code == 409
    assert refused.value.error is not None and refused.value.error.code == "JobCompleted"


def test_disable_requeues_running_tasks_and_enable_runs_them_again(client: BatchClient) -> None:
    job_id = _job(client, _pool(client))
    client.create_task(job_id, batch.BatchTaskCreateOptions(id="long", command_line="sleep 60"))

    def state() -> object:
        return client.get_task(job_id, "long").state

    _wait_for(lambda: state() == batch.BatchTaskState.RUNNING, "start")

    client.begin_disable_job(
        job_id, batch.BatchJobDisableOptions(disable_tasks="requeue"), polling_interval=0
    ).result()

    assert client.get_job(job_id).state == batch.BatchJobState.DISABLED
    task = client.get_task(job_id, "long")
    assert task.state == batch.BatchTaskState.ACTIVE
    assert task.execution_info is not None and task.execution_info.requeue_count == 1
    # Added while disabled: accepted, not scheduled.
    client.create_task(job_id, batch.BatchTaskCreateOptions(id="later", command_line="true"))
    assert client.get_task(job_id, "later").state == batch.BatchTaskState.ACTIVE

    client.begin_enable_job(job_id, polling_interval=0).result()

    assert client.get_job(job_id).state == batch.BatchJobState.ACTIVE
    _wait_for(lambda: state() == batch.BatchTaskState.RUNNING, "the requeued task to run again")
    client.begin_delete_job(job_id, polling_interval=0)


def test_disable_with_wait_stays_disabling_while_tasks_run(client: BatchClient) -> None:
    job_id = _job(client, _pool(client))
    client.create_task(job_id, batch.BatchTaskCreateOptions(id="short", command_line="sleep 1"))
    _wait_for(
        lambda: client.get_task(job_id, "short").state == batch.BatchTaskState.RUNNING, "start"
    )

    client.begin_disable_job(job_id, batch.BatchJobDisableOptions(disable_tasks="wait"))

    assert client.get_job(job_id).state == batch.BatchJobState.DISABLING
    _wait_for(
        lambda: client.get_job(job_id).state == batch.BatchJobState.DISABLED,
        "the job to be disabled once its task ended",
    )
    task = client.get_task(job_id, "short")
    assert task.execution_info is not None
    assert task.execution_info.result == batch.BatchTaskExecutionResult.SUCCESS


def test_a_pool_whose_allocation_fails_reports_a_resize_error(
    client: BatchClient, batch_server: BatchServer
) -> None:
    pool_id = _id("pool")
    batch_server.fail_allocations(pool_id, code="AccountCoreQuotaReached", message="quota")
    try:
        client.create_pool(
            batch.BatchPoolCreateOptions(
                id=pool_id, vm_size="standard_d2s_v3", target_dedicated_nodes=2
            )
        )
        pool = client.get_pool(pool_id)
    finally:
        batch_server.reset_faults()

    assert (pool.target_dedicated_nodes, pool.current_dedicated_nodes) == (2, 0)
    assert pool.allocation_state == batch.AllocationState.STEADY
    assert [(e.code, e.message) for e in pool.resize_errors or []] == [
        ("AccountCoreQuotaReached", "quota")
    ]


def test_job_with_terminatejob_completes_when_its_tasks_do(client: BatchClient) -> None:
    # The documented pattern: add the tasks under noaction, then engage termination.
    job_id = _job(client, _pool(client))
    client.create_task_collection(
        job_id,
        batch.BatchTaskGroup(
            task_values=[
                batch.BatchTaskCreateOptions(id=f"t{i}", command_line="true") for i in range(3)
            ]
        ),
    )
    terminate = batch.BatchJobUpdateOptions(
        all_tasks_complete_mode=batch.BatchAllTasksCompleteMode.TERMINATE_JOB
    )
    client.update_job(job_id, terminate)

    _wait_for(
        lambda: client.get_job(job_id).state == batch.BatchJobState.COMPLETED, "job completion"
    )

    job = client.get_job(job_id)
    assert (
        job.execution_info is not None
        and job.execution_info.termination_reason == "AllTasksComplete"
    )
    assert job_id in {j.id for j in client.list_jobs(filter="state eq 'completed'")}
    # Once engaged, automatic termination cannot be turned off.
    with pytest.raises(HttpResponseError) as refused:
        client.update_job(
            job_id,
            batch.BatchJobUpdateOptions(
                all_tasks_complete_mode=batch.BatchAllTasksCompleteMode.NO_ACTION
            ),
        )
    assert refused.value.status_code == 400


def test_a_terminatejob_job_without_tasks_ends_at_once(client: BatchClient) -> None:
    # "If a job contains no tasks, then all tasks are considered complete" (the service's docs).
    job_id = _job(
        client, _pool(client), all_tasks_complete_mode=batch.BatchAllTasksCompleteMode.TERMINATE_JOB
    )

    assert client.get_job(job_id).state == batch.BatchJobState.COMPLETED
    with pytest.raises(HttpResponseError) as refused:
        client.create_task(job_id, batch.BatchTaskCreateOptions(id="late", command_line="true"))
    assert refused.value.status_code == 409
    assert refused.value.error is not None and refused.value.error.code == "JobCompleted"


def test_a_task_writing_one_long_stderr_line_completes_with_all_of_it(
    client: BatchClient,
) -> None:
    job_id = _job(client, _pool(client))
    client.create_task(
        job_id,
        batch.BatchTaskCreateOptions(
            id="long-line", command_line="head -c 3000000 /dev/zero >&2; echo end >&2"
        ),
    )

    (task,) = _all_completed(client, job_id)

    assert task.execution_info is not None and task.execution_info.exit_code == 0
    properties = client.get_task_file_properties(job_id, "long-line", "stderr.txt")
    assert int(properties.content_length) == 3_000_000 + len("end\n")


def test_wrong_key_is_refused(batch_server: BatchServer) -> None:
    wrong = AzureNamedKeyCredential(batch_server.account_name, "d3Jvbmcta2V5LXdyb25nLWtleQ==")
    with (
        BatchClient(batch_server.url, wrong) as intruder,
        pytest.raises(HttpResponseError) as refused,
    ):
        intruder.get_pool("anything")

    assert refused.value.status_code == 403
    assert refused.value.error is not None and refused.value.error.code == "AuthenticationFailed"


async def test_async_client_runs_a_task(batch_server: BatchServer) -> None:
    async with AsyncBatchClient(batch_server.url, _credential(batch_server)) as client:
        pool_id = _id("pool")
        await client.create_pool(
            batch.BatchPoolCreateOptions(
                id=pool_id, vm_size="standard_d2s_v3", target_dedicated_nodes=1
            )
        )
        job_id = _id("job")
        await client.create_job(
            batch.BatchJobCreateOptions(id=job_id, pool_info=batch.BatchPoolInfo(pool_id=pool_id))
        )
        await client.create_task(
            job_id, batch.BatchTaskCreateOptions(id="a", command_line="echo async")
        )

        deadline = time.monotonic() + DEADLINE_S
        while (await client.get_task(job_id, "a")).state != batch.BatchTaskState.COMPLETED:
            assert time.monotonic() < deadline, "task did not complete"
            await asyncio.sleep(0.05)
        counts = await client.get_job_task_counts(job_id)
        stream = await client.download_task_file(job_id, "a", "stdout.txt")
        data = b"".join([chunk async for chunk in stream])

    assert counts.task_counts.succeeded == 1
    assert data == b"async\n"
