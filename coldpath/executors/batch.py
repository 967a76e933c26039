"""The Azure Batch executor: one job per manifest, one task per shard.

The job id is the manifest id, so triggering the same window again finds the job instead of
making a second one; tasks are added with the add-task-collection call in chunks of at most 100
tasks and 1 MB (a chunk refused for its size is split in halves, one refused for a passing cause
is retried with the common backoff, and "TaskExists" on a retried chunk counts as added). Each
task runs ``evalstream coldpath run-shard --manifest-url <blob SAS URL> --group-index I`` under
an explicit retry count and wall-clock limit; once every task is added the job is set to
terminate when they all complete (not at creation: Batch would end a job without tasks).
Following the job (``follow=True``, ``batch_follow``) reports failed shards with the end of their
stderr.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shlex
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from azure.batch import models
from azure.batch.aio import BatchClient
from azure.core.credentials import AzureNamedKeyCredential
from azure.core.exceptions import (
    HttpResponseError,
    ResourceExistsError,
    ResourceNotFoundError,
)

from coldpath.executors import batch_answers as answers
from coldpath.executors.batch_answers import wire_text
from coldpath.executors.batch_config import MAX_BYTES_PER_CALL, BatchSettings
from coldpath.executors.batch_errors import (
    SDK_FAILURES,
    BatchError,
    BatchJobConflict,
    BatchJobStalled,
    BatchMisconfigured,
    map_error,
)
from coldpath.executors.batch_follow import JobFollower
from coldpath.executors.batch_job import ENDED_STATES, FoundJob, Next, decide, group_index, task_id
from coldpath.executors.batch_status import JobStatus, TaskRecord
from coldpath.ports import JobReport
from common import redact
from common.retry import Backoff, retry
from schemas import JobManifest

__all__ = [
    "BatchError",
    "BatchExecutor",
    "BatchJobConflict",
    "BatchJobStalled",
    "BatchMisconfigured",
    "batch_client",
    "group_index",
    "map_error",
    "task_id",
    "wire_text",
]

logger = logging.getLogger(__name__)

Stage = Callable[[JobManifest], Awaitable[str]]
T = TypeVar("T")
# Room for the request envelope ({"value": [...]}) under the service's 1 MB limit.
CHUNK_BYTES = MAX_BYTES_PER_CALL - 4096


class _TooLarge(Exception):
    """A chunk the service refused for its size (413 RequestBodyTooLarge)."""


def batch_client(settings: BatchSettings) -> BatchClient:
    """A client with the SDK's own retries off: ours (common.retry) are the only ones."""
    if not settings.account_url:
        raise BatchMisconfigured("azure.batch.account_url is not set")
    credential: Any
    if settings.account_key is not None:
        if not settings.account_name:
            raise BatchMisconfigured("azure.batch.account_name is required with account_key")
        credential = AzureNamedKeyCredential(
            settings.account_name, settings.account_key.get_secret_value()
        )
    else:
        from azure.identity.aio import DefaultAzureCredential

        credential = DefaultAzureCredential()
    return BatchClient(settings.account_url, credential, retry_total=0)


@dataclass
class SubmitStats:
    """What one submission cost: calls made (including retried and split ones)."""

    calls: int = 0
    retried: int = 0
    split: int = 0
    tasks_added: int = 0
    tasks_existing: int = 0
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)


class BatchExecutor:
    """Runs a staged manifest's shards as tasks of the Batch job named after it."""

    def __init__(
        self,
        settings: BatchSettings,
        *,
        stage: Stage,
        follow: bool = True,
        backoff: Backoff | None = None,
    ) -> None:
        self.settings = settings
        self.stage = stage
        self.follow = follow
        self.backoff = backoff or Backoff(
            initial_s=0.2, max_s=10.0, max_retries=settings.submit_retries
        )
        self.last_submit = SubmitStats()
        self.follower = JobFollower(settings, self._call)

    async def run(self, manifest: JobManifest) -> JobReport:
        url = await retry(
            lambda: self.stage(manifest),
            backoff=self.backoff,
            what=f"staging manifest {manifest.id}",
        )
        async with batch_client(self.settings) as client:
            await self._check_pool(client)
            if await self._ensure_job(client, manifest) is Next.SUBMIT:
                self.last_submit = await self.submit(client, manifest, url)
                await self._end_when_tasks_complete(client, manifest.id)
            else:
                logger.info("job %s has every shard's task: not adding tasks", manifest.id)
            if not self.follow:
                return JobReport(manifest.id, manifest.shard_count)
            return await self.wait(client, manifest)

    async def _retrying(self, attempt: Callable[[], Awaitable[T]], what: str) -> T:
        """``attempt`` under the executor's backoff; a passing failure that outlasts the
        retries says so."""
        try:
            return await retry(attempt, backoff=self.backoff, what=what)
        except BatchError as exc:
            if not exc.retryable or self.backoff.max_retries is None:
                raise
            raise type(exc)(
                f"{exc} (gave up after {self.backoff.max_retries} retries, "
                "azure.batch.submit_retries)",
                status=exc.status,
                code=exc.code,
                retryable=True,
                retry_after=exc.retry_after,
            ) from exc

    async def _call(self, operation: Callable[[], Awaitable[Any]], what: str) -> Any:
        async def attempt() -> Any:
            try:
                return await operation()
            except SDK_FAILURES as exc:
                raise map_error(exc, what) from exc

        return await self._retrying(attempt, what)

    # -- job -----------------------------------------------------------------------------

    async def _check_pool(self, client: BatchClient) -> None:
        """Refuse a pool that does not exist: Batch accepts a job on it and never runs its
        tasks (a followed job would be waited for until its deadline)."""
        pool_id = self.settings.pool.id
        what = f"reading pool {pool_id}"

        async def read() -> None:
            try:
                answers.pool(await client.get_pool(pool_id, select=["id"]), what)
            except ResourceNotFoundError as exc:
                # The account by its endpoint: a SAS or userinfo in the URL is never shown.
                account = redact.endpoint(self.settings.account_url or "")
                raise BatchMisconfigured(
                    f"Batch pool {pool_id!r} does not exist in {account}: "
                    "create it (`evalstream coldpath pool ensure`) or set azure.batch.pool.id"
                ) from exc
            except HttpResponseError as exc:
                if exc.status_code != 403:
                    raise map_error(exc, what) from exc
                # An identity that may submit jobs but not read pools: nothing to check with.
                logger.info("pool %s not checked: reading it is not allowed", pool_id)
            except SDK_FAILURES as exc:
                raise map_error(exc, what) from exc

        await self._retrying(read, what)

    def _job_options(self, manifest: JobManifest) -> models.BatchJobCreateOptions:
        s = self.settings
        return models.BatchJobCreateOptions(
            id=manifest.id,
            display_name=f"coldpath {manifest.window.key} run {manifest.run}"[:1024],
            priority=s.priority,
            pool_info=models.BatchPoolInfo(pool_id=s.pool.id),
            constraints=models.BatchJobConstraints(max_task_retry_count=s.max_task_retry_count),
            common_environment_settings=[
                models.EnvironmentSetting(name=name, value=value.get_secret_value())
                for name, value in sorted(s.environment.items())
            ],
            # Not terminatejob yet: Batch would end the job while it has no tasks (all of none
            # are complete), or between two chunks once the first chunk's tasks are done, and
            # refuse the rest (409 JobCompleted). Set once every task is added.
            all_tasks_complete_mode=models.BatchAllTasksCompleteMode.NO_ACTION,
            metadata=[
                models.BatchMetadataItem(name="window", value=manifest.window.key),
                models.BatchMetadataItem(name="run", value=str(manifest.run)),
                models.BatchMetadataItem(name="shards", value=str(manifest.shard_count)),
            ],
        )

    async def _ensure_job(self, client: BatchClient, manifest: JobManifest) -> Next:
        """Create the job, or decide what to do with the one found under its id
        (``batch_job.decide``: per state and pool; a job being deleted is waited out)."""
        what = f"creating job {manifest.id}"

        async def create() -> Next:
            try:
                await client.create_job(self._job_options(manifest))
            except ResourceExistsError:
                found = await self._found_job(client, manifest.id)
                next_step = decide(
                    found, pool_id=self.settings.pool.id, shards=manifest.shard_count
                )
                logger.info("job %s exists (%s): %s", manifest.id, found.state, next_step.value)
                return next_step
            except SDK_FAILURES as exc:
                raise map_error(exc, what) from exc
            logger.info("job %s created for %s", manifest.id, manifest.window.key)
            return Next.SUBMIT

        return await self._retrying(create, what)

    async def _found_job(self, client: BatchClient, job_id: str) -> FoundJob:
        what = f"reading existing job {job_id}"
        try:
            job, state = answers.job(await client.get_job(job_id), what)
            task_ids = None
            if state in ENDED_STATES:
                pages = client.list_tasks(
                    job_id, select=["id"], raw_response_hook=answers.list_page(what)
                )
                task_ids = frozenset(
                    [answers.task(task, what, with_state=False).id async for task in pages]
                )
        except SDK_FAILURES as exc:
            raise map_error(exc, what) from exc
        shards = next((m.value for m in job.metadata or [] if m.name == "shards"), None)
        return FoundJob(
            id=job_id,
            state=state,
            pool_id=job.pool_info.pool_id if job.pool_info is not None else None,
            shards=shards,
            task_ids=task_ids,
        )

    async def _end_when_tasks_complete(self, client: BatchClient, job_id: str) -> None:
        """Every task is added: the job may now terminate once they all complete."""
        options = models.BatchJobUpdateOptions(
            all_tasks_complete_mode=models.BatchAllTasksCompleteMode.TERMINATE_JOB
        )
        await self._call(
            lambda: client.update_job(job_id, options),
            f"setting job {job_id} to terminate when its tasks complete",
        )

    # -- tasks ---------------------------------------------------------------------------

    def command_line(self, url: str, index: int) -> str:
        s = self.settings
        return (
            f"{s.command} coldpath run-shard --manifest-url {shlex.quote(url)} "
            f"--group-index {index} --log-level {s.task_log_level}"
        )

    def task(self, url: str, index: int) -> models.BatchTaskCreateOptions:
        s = self.settings
        elevation = models.ElevationLevel.ADMIN if s.elevated else models.ElevationLevel.NON_ADMIN
        return models.BatchTaskCreateOptions(
            id=task_id(index),
            command_line=self.command_line(url, index),
            constraints=models.BatchTaskConstraints(
                max_task_retry_count=s.max_task_retry_count,
                max_wall_clock_time=s.max_wall_clock_time,
                retention_time=s.retention_time,
            ),
            user_identity=models.UserIdentity(
                auto_user=models.AutoUserSpecification(
                    scope=s.auto_user_scope, elevation_level=elevation
                )
            ),
        )

    def chunks(
        self, tasks: Sequence[models.BatchTaskCreateOptions]
    ) -> list[list[models.BatchTaskCreateOptions]]:
        """Consecutive chunks of at most ``chunk_size`` tasks and ~1 MB of JSON each."""
        chunks: list[list[models.BatchTaskCreateOptions]] = []
        current: list[models.BatchTaskCreateOptions] = []
        size = 0
        for item in tasks:
            item_size = len(json.dumps(item.as_dict())) + 1
            if current and (
                len(current) >= self.settings.chunk_size or size + item_size > CHUNK_BYTES
            ):
                chunks.append(current)
                current, size = [], 0
            current.append(item)
            size += item_size
        if current:
            chunks.append(current)
        return chunks

    async def submit(self, client: BatchClient, manifest: JobManifest, url: str) -> SubmitStats:
        """Add one task per shard; already-added tasks (a re-trigger) count as added."""
        stats = SubmitStats()
        started = time.perf_counter()
        tasks = [self.task(url, index) for index in range(manifest.shard_count)]
        slots = asyncio.Semaphore(self.settings.submit_concurrency)

        async def one(chunk: list[models.BatchTaskCreateOptions]) -> None:
            async with slots:
                await self._add_chunk(client, manifest.id, chunk, stats)

        async with asyncio.TaskGroup() as group:
            for chunk in self.chunks(tasks):
                group.create_task(one(chunk))
        stats.seconds = time.perf_counter() - started
        logger.info(
            "job %s: %d tasks added, %d existed, %d calls (%d retried, %d split) in %.2f s",
            manifest.id,
            stats.tasks_added,
            stats.tasks_existing,
            stats.calls,
            stats.retried,
            stats.split,
            stats.seconds,
        )
        return stats

    async def _add_chunk(
        self,
        client: BatchClient,
        job_id: str,
        chunk: list[models.BatchTaskCreateOptions],
        stats: SubmitStats,
    ) -> None:
        pending = list(chunk)

        async def attempt() -> None:
            nonlocal pending
            stats.calls += 1
            what = f"adding {len(pending)} tasks to job {job_id}"
            try:
                result = await client.create_task_collection(
                    job_id, models.BatchTaskGroup(task_values=pending)
                )
            except SDK_FAILURES as exc:
                if isinstance(exc, HttpResponseError) and exc.status_code == 413:
                    raise _TooLarge from exc
                error = map_error(exc, what)
                stats.retried += error.retryable
                raise error from exc
            by_id = {item.id: item for item in pending}
            outcomes = answers.task_add_results(result, what, by_id)
            again: list[models.BatchTaskCreateOptions] = []
            for outcome in outcomes:
                code = outcome.error.code if outcome.error is not None else None
                if outcome.status == models.BatchTaskAddStatus.SUCCESS:
                    stats.tasks_added += 1
                elif code == "TaskExists":
                    stats.tasks_existing += 1
                elif outcome.status == models.BatchTaskAddStatus.SERVER_ERROR:
                    again.append(by_id[outcome.task_id])
                else:
                    message = outcome.error.message if outcome.error is not None else None
                    raise BatchError(
                        f"task {outcome.task_id} of job {job_id} refused: {code}: {message}",
                        code=code,
                        retryable=False,
                    )
            answered = {outcome.task_id for outcome in outcomes}
            again.extend(item for item in pending if item.id not in answered)
            if again:
                pending = again
                stats.retried += 1
                raise BatchError(f"{len(again)} tasks of job {job_id} not added", retryable=True)

        try:
            await self._retrying(attempt, f"adding tasks to job {job_id}")
        except _TooLarge:
            if len(pending) == 1:
                raise BatchError(
                    f"task {pending[0].id} of job {job_id} alone exceeds the request size limit",
                    retryable=False,
                ) from None
            stats.split += 1
            half = len(pending) // 2
            logger.info(
                "job %s: a chunk of %d tasks was too large; splitting", job_id, len(pending)
            )
            await self._add_chunk(client, job_id, pending[:half], stats)
            await self._add_chunk(client, job_id, pending[half:], stats)

    # -- following -----------------------------------------------------------------------

    async def wait(self, client: BatchClient, manifest: JobManifest) -> JobReport:
        """Follow the job to its end (``JobFollower.wait``)."""
        return await self.follower.wait(client, manifest)

    async def records(self, client: BatchClient, job_id: str) -> list[TaskRecord]:
        return await self.follower.records(client, job_id)

    async def status(self, client: BatchClient, job_id: str) -> JobStatus:
        return await self.follower.status(client, job_id)
