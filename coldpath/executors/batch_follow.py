"""Following a Batch job to its end: the poll loop under the follow deadline, the message when
the deadline passes (what the job, its tasks and its pool were doing), and the report of its
tasks (failed shards with the end of their stderr).

``coldpath.executors.batch`` hands in its retrying call, so a passing failure while following
is retried like any other Batch call.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

from azure.batch import models
from azure.batch.aio import BatchClient

from coldpath.executors import batch_answers as answers
from coldpath.executors.batch_answers import wire_text
from coldpath.executors.batch_config import BatchSettings
from coldpath.executors.batch_errors import (
    SDK_FAILURES,
    BatchError,
    BatchJobConflict,
    BatchJobStalled,
    map_error,
)
from coldpath.executors.batch_job import DISABLED_STATES, disabled_message, group_index, task_id
from coldpath.executors.batch_status import JobStatus, TaskRecord, job_status
from coldpath.ports import JobReport
from schemas import JobManifest

logger = logging.getLogger(__name__)

# A Batch call under the executor's retries: the operation and what it is, for its errors.
Call = Callable[[Callable[[], Awaitable[Any]], str], Awaitable[Any]]
BATCH_DONE = ("completed",)


class JobFollower:
    """Reads one Batch job's progress, figures and failed tasks through ``call``."""

    def __init__(self, settings: BatchSettings, call: Call) -> None:
        self.settings = settings
        self.call = call

    async def wait(self, client: BatchClient, manifest: JobManifest) -> JobReport:
        """Follow the job until every task completed; the report names failed shards.

        Raises ``BatchJobConflict`` when an operator disables or deletes the job meanwhile,
        and ``BatchJobStalled`` when it is not done by ``settings.follow_deadline`` (tasks that
        never get a node: a pool of zero nodes, a failing resize); the job is left as it is."""
        job_id = manifest.id
        limit = self.settings.follow_deadline(manifest.shard_count)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit.total_seconds()
        while True:
            _, state = await self.job(client, job_id)
            if state in DISABLED_STATES:
                raise BatchJobConflict(disabled_message(job_id, state, followed=True))
            if state == "deleting":
                raise BatchJobConflict(f"Batch job {job_id} is being deleted while it was followed")
            what = f"reading task counts of {job_id}"
            counts = answers.task_counts(
                await self.call(lambda: client.get_job_task_counts(job_id), what), what
            )
            if state in BATCH_DONE or (
                counts.completed >= manifest.shard_count
                and counts.active == 0
                and counts.running == 0
            ):
                break
            if loop.time() >= deadline:
                raise BatchJobStalled(await self.stalled(client, manifest, state, counts, limit))
            logger.info(
                "job %s: %d active, %d running, %d completed of %d",
                job_id,
                counts.active,
                counts.running,
                counts.completed,
                manifest.shard_count,
            )
            await asyncio.sleep(min(self.settings.poll_interval_s, deadline - loop.time()))
        return await self.report(client, manifest)

    async def job(self, client: BatchClient, job_id: str) -> tuple[models.BatchJob, str]:
        """The job and its state, checked."""
        what = f"reading job {job_id}"
        return answers.job(await self.call(lambda: client.get_job(job_id), what), what)

    async def stalled(
        self,
        client: BatchClient,
        manifest: JobManifest,
        state: str,
        counts: models.BatchTaskCounts,
        limit: timedelta,
    ) -> str:
        """One line: what the job, its tasks and its pool were doing when following it ended."""
        job_id, pool_id = manifest.id, self.settings.pool.id
        setting = (
            "azure.batch.follow_timeout"
            if self.settings.follow_timeout is not None
            else "derived from max_wall_clock_time, max_task_retry_count and the pool's size; "
            "set azure.batch.follow_timeout to change it"
        )
        return (
            f"Batch job {job_id} not done after {limit} ({setting}): job {state}; tasks "
            f"{counts.active} active, {counts.running} running, {counts.completed} completed "
            f"({counts.succeeded} succeeded, {counts.failed} failed) of {manifest.shard_count}; "
            f"{await self.pool_summary(client, pool_id)}. The job is left as it is: "
            f"`evalstream coldpath status {job_id}`, or delete it "
            f"(`az batch job delete --job-id {job_id}`)"
        )

    async def pool_summary(self, client: BatchClient, pool_id: str) -> str:
        """The pool's nodes against its targets and its last resize and autoscale errors, as
        far as they can be read (a failure to read it is said, not raised: this only explains
        an error already being raised)."""
        try:
            pool = answers.pool(await client.get_pool(pool_id), "reading it")
        except BatchError as exc:
            return f"pool {pool_id} unreadable ({exc})"
        except SDK_FAILURES as exc:
            return f"pool {pool_id} unreadable ({map_error(exc, 'reading it')})"
        parts = [
            f"pool {pool_id} {wire_text(pool.state)}, "
            f"allocation {wire_text(pool.allocation_state)}",
            f"{pool.current_dedicated_nodes or 0} of {pool.target_dedicated_nodes or 0} dedicated "
            f"and {pool.current_low_priority_nodes or 0} of {pool.target_low_priority_nodes or 0} "
            "Spot nodes",
        ]
        for error in pool.resize_errors or []:
            parts.append(f"resize error {error.code}: {error.message}")
        run = pool.auto_scale_run
        if run is not None and run.error is not None:
            parts.append(f"autoscale error {run.error.code}: {run.error.message}")
        return ", ".join(parts)

    async def report(self, client: BatchClient, manifest: JobManifest) -> JobReport:
        records = await self.records(client, manifest.id)
        succeeded = []
        failed: dict[int, str] = {}
        seen = set()
        for record in records:
            index = group_index(record.task_id)
            if index is None:
                continue
            seen.add(index)
            if record.state == "completed" and record.result == "success":
                succeeded.append(index)
            elif record.state == "completed":
                excerpt = await self.stderr_excerpt(client, manifest.id, record.task_id)
                failed[index] = (
                    f"task {record.task_id} failed (exit code {record.exit_code}, "
                    f"{record.retries} retries, {record.requeues} requeues): {record.failure}"
                    + (f"\n{excerpt}" if excerpt else "")
                )
            else:
                failed[index] = f"task {record.task_id} did not complete ({record.state})"
        for index in range(manifest.shard_count):
            if index not in seen:
                failed[index] = f"task {task_id(index)} was never added"
        return JobReport(manifest.id, manifest.shard_count, tuple(sorted(succeeded)), failed)

    async def records(self, client: BatchClient, job_id: str) -> list[TaskRecord]:
        what = f"listing tasks of {job_id}"

        async def read() -> list[TaskRecord]:
            pages = client.list_tasks(job_id, raw_response_hook=answers.list_page(what))
            return [task_record(answers.task(task, what)) async for task in pages]

        return await self.call(read, what)  # type: ignore[no-any-return]

    async def stderr_excerpt(self, client: BatchClient, job_id: str, task: str) -> str:
        """The end of the task's stderr.txt ('' when it cannot be read). Only the end is
        downloaded: a task's stderr may run to gigabytes."""
        limit = self.settings.stderr_excerpt_bytes
        try:
            properties = await client.get_task_file_properties(job_id, task, "stderr.txt")
            size = int(properties.content_length)
            if size == 0:
                return ""
            chunks = await client.download_task_file(
                job_id, task, "stderr.txt", ocp_range=f"bytes={max(size - limit, 0)}-{size - 1}"
            )
            data = b"".join([chunk async for chunk in chunks])
        except SDK_FAILURES as exc:
            logger.warning("stderr of %s/%s unreadable: %s", job_id, task, map_error(exc, "read"))
            return ""
        except (KeyError, TypeError, ValueError) as exc:
            # An answer without a Content-Length, or not a number (a proxy's): the SDK reads
            # the header as it is, and the report of the failed shards goes on without it.
            logger.warning(
                "stderr of %s/%s unreadable: no size in the answer (%r)", job_id, task, exc
            )
            return ""
        # A range the service ignored gives the whole file: keep its end all the same.
        return data[-limit:].decode(errors="replace").strip()

    async def status(self, client: BatchClient, job_id: str) -> JobStatus:
        _, state = await self.job(client, job_id)
        return job_status(job_id, state, await self.records(client, job_id))


def task_record(task: models.BatchTask) -> TaskRecord:
    info = task.execution_info
    failure = None
    if info is not None and info.failure_info is not None:
        failure = f"{info.failure_info.code}: {info.failure_info.message}"
    return TaskRecord(
        task_id=task.id,
        state=wire_text(task.state),
        result=wire_text(info.result) if info is not None and info.result is not None else None,
        created=task.creation_time,
        started=info.start_time if info is not None else None,
        ended=info.end_time if info is not None else None,
        retries=info.retry_count if info is not None else 0,
        requeues=info.requeue_count if info is not None else 0,
        exit_code=info.exit_code if info is not None else None,
        failure=failure,
    )
