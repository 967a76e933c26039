"""The Batch account's state (pools, jobs, tasks) and the scheduler that runs tasks locally.

Everything runs on one asyncio loop, so the state needs no locks. A pool's capacity is its node
count times ``taskSlotsPerNode``; nodes are "allocated" the moment a pool is created or its
autoscale formula is evaluated. Autoscale formulas are re-evaluated whenever tasks are added or
finish (the service does so every ``autoScaleEvaluationInterval``), so a formula driven by
``$PendingTasks`` scales a pool up as soon as work arrives. Each task's command line runs as
``/bin/sh -c <commandLine>`` in ``<work_dir>/jobs/<job>/<task>/wd`` with stdout.txt and
stderr.txt beside ``wd``, the server's own environment plus the ``AZ_BATCH_*`` variables, the
job's common settings and the task's settings. A non-zero exit is retried up to the task's
``constraints.maxTaskRetryCount`` (the job's when the task sets none; -1 means without limit).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from pathlib import Path
from typing import BinaryIO

from tests.emulators.batch import autoscale
from tests.emulators.batch.entities import (
    MAX_TASKS_PER_COLLECTION,
    NODE_ID,
    Job,
    Json,
    Pool,
    Task,
    as_int,
    new_etag,
    now,
    require_id,
    set_state,
)
from tests.emulators.batch.errors import (
    BatchServiceError,
    exists,
    invalid_property,
    missing_property,
    not_found,
)
from tests.emulators.batch.faults import Faults
from tests.emulators.batch.tasks import record_attempt, task_environment

logger = logging.getLogger(__name__)

STDERR_CHUNK_BYTES = 64 * 1024

STDERR_LINE_LIMIT = 1024 * 1024


class BatchService:
    """One Batch account: its pools and jobs, and the local "compute node" running tasks."""

    def __init__(
        self, *, account_name: str, work_dir: Path, base_url: str, max_concurrency: int = 16
    ) -> None:
        self.account_name = account_name
        self.work_dir = work_dir
        self.base_url = base_url.rstrip("/")
        self.max_concurrency = max_concurrency
        self.pools: dict[str, Pool] = {}
        self.jobs: dict[str, Job] = {}
        self._running: set[Task] = set()
        self.faults = Faults()

    # -- pools ---------------------------------------------------------------------------

    def pool(self, pool_id: str) -> Pool:
        pool = self.pools.get(pool_id.lower())
        if pool is None:
            raise not_found("Pool", pool_id)
        return pool

    def create_pool(self, body: Json) -> Pool:
        pool_id = require_id(body, "pool")
        if pool_id.lower() in self.pools:
            raise exists("Pool", pool_id)
        if not body.get("vmSize"):
            raise missing_property("vmSize")
        autoscaled = bool(body.get("enableAutoScale"))
        if autoscaled and not body.get("autoScaleFormula"):
            raise missing_property("autoScaleFormula")
        stamp = now()
        pool_body: Json = {
            **body,
            "url": f"{self.base_url}/pools/{pool_id}",
            "eTag": new_etag(),
            "lastModified": stamp,
            "creationTime": stamp,
            "state": "active",
            "stateTransitionTime": stamp,
            "allocationState": "steady",
            "allocationStateTransitionTime": stamp,
            "enableAutoScale": autoscaled,
            "taskSlotsPerNode": as_int(body.get("taskSlotsPerNode"), 1),
            "targetDedicatedNodes": as_int(body.get("targetDedicatedNodes"), 0),
            "targetLowPriorityNodes": as_int(body.get("targetLowPriorityNodes"), 0),
        }
        pool = Pool(pool_body)
        if autoscaled:
            pool_body.setdefault("autoScaleEvaluationInterval", "PT15M")
            self._autoscale(pool, str(body["autoScaleFormula"]), apply=True, strict=True)
        self._allocate(pool)
        self.pools[pool_id.lower()] = pool
        self.schedule()
        return pool

    def enable_autoscale(self, pool_id: str, body: Json) -> Pool:
        pool = self.pool(pool_id)
        formula = body.get("autoScaleFormula") or pool.body.get("autoScaleFormula")
        if not isinstance(formula, str) or not formula:
            raise missing_property("autoScaleFormula")
        self._autoscale(pool, formula, apply=True, strict=True)
        pool.body["enableAutoScale"] = True
        pool.body["autoScaleFormula"] = formula
        if body.get("autoScaleEvaluationInterval"):
            pool.body["autoScaleEvaluationInterval"] = body["autoScaleEvaluationInterval"]
        pool.body.setdefault("autoScaleEvaluationInterval", "PT15M")
        self._touch(pool.body)
        self._allocate(pool)
        self.schedule()
        return pool

    def evaluate_autoscale(self, pool_id: str, body: Json) -> Json:
        pool = self.pool(pool_id)
        formula = body.get("autoScaleFormula")
        if not isinstance(formula, str) or not formula:
            raise missing_property("autoScaleFormula")
        return self._autoscale(pool, formula, apply=False, strict=False)

    def _service_variables(self, pool: Pool) -> dict[str, float]:
        counts = {"active": 0, "running": 0, "succeeded": 0, "failed": 0}
        for job in self.jobs.values():
            if job.pool_id is None or job.pool_id.lower() != pool.id.lower():
                continue
            for task in job.tasks.values():
                if task.state == "completed":
                    result = task.execution.get("result")
                    counts["succeeded" if result == "success" else "failed"] += 1
                elif task.state in counts:
                    counts[task.state] += 1
        return {
            "$ActiveTasks": counts["active"],
            "$RunningTasks": counts["running"],
            "$PendingTasks": counts["active"] + counts["running"],
            "$SucceededTasks": counts["succeeded"],
            "$FailedTasks": counts["failed"],
            "$CurrentDedicatedNodes": as_int(pool.body.get("currentDedicatedNodes"), 0),
            "$CurrentLowPriorityNodes": as_int(pool.body.get("currentLowPriorityNodes"), 0),
            "$TargetDedicatedNodes": as_int(pool.body.get("targetDedicatedNodes"), 0),
            "$TargetLowPriorityNodes": as_int(pool.body.get("targetLowPriorityNodes"), 0),
            "$TaskSlotsPerNode": max(1, as_int(pool.body.get("taskSlotsPerNode"), 1)),
        }

    def _autoscale(self, pool: Pool, formula: str, *, apply: bool, strict: bool) -> Json:
        """Evaluate `formula` for `pool`: the AutoScaleRun, with any error inside unless strict."""
        variables = self._service_variables(pool)
        run: Json = {"timestamp": now()}
        try:
            result = autoscale.evaluate(formula, variables)
            dedicated = max(
                0, int(result.number("$TargetDedicatedNodes", variables["$TargetDedicatedNodes"]))
            )
            low = max(
                0,
                int(result.number("$TargetLowPriorityNodes", variables["$TargetLowPriorityNodes"])),
            )
        except BatchServiceError as exc:
            if strict:
                raise
            run["error"] = {
                "code": exc.code,
                "message": exc.message,
                "values": [{"name": k, "value": v} for k, v in exc.values.items()],
            }
            return run
        shown = {
            "$TargetDedicatedNodes": float(dedicated),
            "$TargetLowPriorityNodes": float(low),
            "$NodeDeallocationOption": "requeue",
            **result.variables,
        }
        run["results"] = autoscale.AutoScaleResult(shown).results_text()
        if apply:
            pool.body["targetDedicatedNodes"] = dedicated
            pool.body["targetLowPriorityNodes"] = low
            pool.body["autoScaleRun"] = run
        return run

    def _allocate(self, pool: Pool) -> None:
        """Nodes appear at once (there is no VM to boot here), unless an allocation fault
        holds the pool: then it gets none and reports the fault's resize error, as the
        service does when it cannot allocate (a core quota reached, no capacity)."""
        failure = self.faults.allocation_failure(pool.id)
        if failure is not None:
            pool.body["currentDedicatedNodes"] = 0
            pool.body["currentLowPriorityNodes"] = 0
            pool.body["resizeErrors"] = [{"code": failure.code, "message": failure.message}]
            return
        pool.body.pop("resizeErrors", None)
        pool.body["currentDedicatedNodes"] = pool.body.get("targetDedicatedNodes", 0)
        pool.body["currentLowPriorityNodes"] = pool.body.get("targetLowPriorityNodes", 0)

    def _touch(self, entity: Json) -> None:
        entity["lastModified"] = now()
        entity["eTag"] = new_etag()

    # -- jobs ----------------------------------------------------------------------------

    def job(self, job_id: str) -> Job:
        job = self.jobs.get(job_id.lower())
        if job is None:
            raise not_found("Job", job_id)
        return job

    def create_job(self, body: Json) -> Job:
        job_id = require_id(body, "job")
        if job_id.lower() in self.jobs:
            raise exists("Job", job_id)
        pool_info = body.get("poolInfo")
        if not isinstance(pool_info, dict):
            raise missing_property("poolInfo")
        stamp = now()
        job_body: Json = {
            "priority": 0,
            "maxParallelTasks": -1,
            "onAllTasksComplete": "noaction",
            "onTaskFailure": "noaction",
            **body,
            "url": f"{self.base_url}/jobs/{job_id}",
            "eTag": new_etag(),
            "lastModified": stamp,
            "creationTime": stamp,
            "state": "active",
            "stateTransitionTime": stamp,
            "executionInfo": {"startTime": stamp, "poolId": pool_info.get("poolId")},
        }
        job_body.setdefault("constraints", {"maxTaskRetryCount": 0})
        job = Job(job_body)
        self.jobs[job_id.lower()] = job
        # The service documents that a job without tasks has all its tasks complete: created
        # with terminatejob, it ends before a task can be added.
        self._after_completion(job)
        return job

    def update_job(self, job_id: str, body: Json) -> Job:
        """PATCH: the given properties replace the job's; terminatejob cannot be undone."""
        job = self.job(job_id)
        mode = body.get("onAllTasksComplete")
        if mode is not None:
            if mode not in ("noaction", "terminatejob"):
                raise invalid_property("onAllTasksComplete", f"unknown value {mode!r}")
            if mode == "noaction" and job.body.get("onAllTasksComplete") == "terminatejob":
                raise invalid_property(
                    "onAllTasksComplete", "automatic job termination cannot be turned off"
                )
        for name in ("priority", "maxParallelTasks", "onAllTasksComplete", "constraints"):
            if name in body:
                job.body[name] = body[name]
        job.body["eTag"] = new_etag()
        job.body["lastModified"] = now()
        self._after_completion(job)
        return job

    def list_jobs(self) -> list[Json]:
        return [job.body for job in self.jobs.values()]

    def terminate_job(self, job_id: str, reason: str | None) -> None:
        job = self.job(job_id)
        if job.state in ("completed", "terminating"):
            code = "JobCompleted" if job.state == "completed" else "JobBeingTerminated"
            raise BatchServiceError(409, code, f"The job is already {job.state}.")
        set_state(job.body, "terminating")
        for task in job.tasks.values():
            if task.state == "running":
                self._kill(task, "terminate")
        asyncio.get_running_loop().create_task(
            self._finish_termination(job, reason or "UserTerminate")
        )

    async def _finish_termination(self, job: Job, reason: str) -> None:
        runners = [t.runner for t in job.tasks.values() if t.runner is not None]
        if runners:
            await asyncio.gather(*runners, return_exceptions=True)
        self._complete_job(job, reason)

    def _complete_job(self, job: Job, reason: str) -> None:
        set_state(job.body, "completed")
        info = job.body["executionInfo"]
        assert isinstance(info, dict)
        info["endTime"] = now()
        info["terminateReason"] = reason

    def disable_job(self, job_id: str, disable_tasks: str) -> None:
        """The job stops scheduling tasks: ``disabling`` until its running tasks are dealt
        with (``requeue``: killed and back to active, ``terminate``: killed and completed,
        ``wait``: left to finish), then ``disabled``."""
        job = self.job(job_id)
        if job.state not in ("active", "disabling", "disabled"):
            raise BatchServiceError(
                409, "JobNotActive", f"The specified job is {job.state}: it cannot be disabled."
            )
        if disable_tasks not in ("requeue", "terminate", "wait"):
            raise invalid_property("disableTasks", f"unknown value {disable_tasks!r}")
        if job.state == "disabled":
            return
        set_state(job.body, "disabling")
        for task in job.tasks.values():
            if task.state != "running":
                continue
            if disable_tasks == "requeue":
                task.preempted = True
                self._kill(task, None)
            elif disable_tasks == "terminate":
                self._kill(task, "disable")
        self._after_disabling(job)

    def _after_disabling(self, job: Job) -> None:
        if job.state == "disabling" and not any(t.runner is not None for t in job.tasks.values()):
            set_state(job.body, "disabled")

    def enable_job(self, job_id: str) -> None:
        """A disabled (or disabling) job schedules its tasks again."""
        job = self.job(job_id)
        if job.state not in ("disabled", "disabling", "enabling"):
            raise BatchServiceError(
                409, "JobNotDisabled", f"The specified job is {job.state}, not disabled."
            )
        set_state(job.body, "active")
        self.schedule()

    def delete_job(self, job_id: str) -> None:
        job = self.job(job_id)
        set_state(job.body, "deleting")
        for task in job.tasks.values():
            if task.state == "running":
                self._kill(task, "delete")
        asyncio.get_running_loop().create_task(self._finish_delete(job))

    async def _finish_delete(self, job: Job) -> None:
        runners = [t.runner for t in job.tasks.values() if t.runner is not None]
        if runners:
            await asyncio.gather(*runners, return_exceptions=True)
        self.jobs.pop(job.id.lower(), None)

    def task_counts(self, job_id: str) -> Json:
        job = self.job(job_id)
        counts = {"active": 0, "running": 0, "completed": 0, "succeeded": 0, "failed": 0}
        slots = dict(counts)
        for task in job.tasks.values():
            state = "active" if task.state in ("active", "preparing") else task.state
            keys = [state]
            if state == "completed":
                keys.append("succeeded" if task.execution.get("result") == "success" else "failed")
            for key in keys:
                counts[key] += 1
                slots[key] += task.required_slots
        return {"taskCounts": counts, "taskSlotCounts": slots}

    # -- tasks ---------------------------------------------------------------------------

    def task(self, job_id: str, task_id: str) -> Task:
        task = self.job(job_id).tasks.get(task_id.lower())
        if task is None:
            raise not_found("Task", task_id)
        return task

    def _check_job_accepts_tasks(self, job: Job) -> None:
        if job.state == "completed":
            raise BatchServiceError(
                409, "JobCompleted", "The specified job is already in a completed state."
            )
        if job.state == "terminating":
            raise BatchServiceError(
                409, "JobBeingTerminated", "The specified job is being terminated."
            )
        if job.state == "deleting":
            raise BatchServiceError(409, "JobBeingDeleted", "The specified job is being deleted.")

    def _new_task(self, job: Job, body: Json) -> Task:
        task_id = require_id(body, "task")
        if not isinstance(body.get("commandLine"), str) or not body["commandLine"]:
            raise missing_property("commandLine")
        if task_id.lower() in job.tasks:
            raise exists("Task", task_id)
        stamp = now()
        task_body: Json = {
            **body,
            "url": f"{self.base_url}/jobs/{job.id}/tasks/{task_id}",
            "eTag": new_etag(),
            "lastModified": stamp,
            "creationTime": stamp,
            "state": "active",
            "stateTransitionTime": stamp,
            "requiredSlots": max(1, as_int(body.get("requiredSlots"), 1)),
            "executionInfo": {"retryCount": 0, "requeueCount": 0},
        }
        requested = body.get("constraints")
        constraints: Json = dict(requested) if isinstance(requested, dict) else {}
        if "maxTaskRetryCount" not in constraints:
            job_constraints = job.body.get("constraints") or {}
            assert isinstance(job_constraints, dict)
            constraints["maxTaskRetryCount"] = as_int(job_constraints.get("maxTaskRetryCount"), 0)
        task_body["constraints"] = constraints
        task = Task(job.id, task_body)
        job.tasks[task_id.lower()] = task
        return task

    def add_task(self, job_id: str, body: Json) -> Task:
        job = self.job(job_id)
        self._check_job_accepts_tasks(job)
        task = self._new_task(job, body)
        self.schedule()
        return task

    def add_task_collection(self, job_id: str, body: object) -> list[Json]:
        job = self.job(job_id)
        if not isinstance(body, dict) or not isinstance(body.get("value"), list):
            raise missing_property("value")
        values: list[object] = body["value"]
        if len(values) > MAX_TASKS_PER_COLLECTION:
            raise invalid_property(
                "value",
                f"The maximum number of tasks in a collection is {MAX_TASKS_PER_COLLECTION};"
                f" the request has {len(values)}.",
            )
        self._check_job_accepts_tasks(job)
        results: list[Json] = []
        for item in values:
            task_id = item.get("id") if isinstance(item, dict) else None
            try:
                if not isinstance(item, dict):
                    raise invalid_property("value", "each task must be an object")
                task = self._new_task(job, item)
            except BatchServiceError as exc:
                results.append(
                    {
                        "status": "clienterror",
                        "taskId": task_id,
                        "error": {
                            "code": exc.code,
                            "message": {"lang": "en-US", "value": exc.message},
                            "values": [{"key": k, "value": v} for k, v in exc.values.items()],
                        },
                    }
                )
                continue
            results.append(
                {
                    "status": "success",
                    "taskId": task.id,
                    "eTag": task.body["eTag"],
                    "lastModified": task.body["lastModified"],
                    "location": task.body["url"],
                }
            )
        self.schedule()
        return results

    def task_dir(self, job_id: str, task_id: str) -> Path:
        return self.work_dir / "jobs" / job_id / task_id

    # -- scheduling ----------------------------------------------------------------------

    def schedule(self) -> None:
        """Start every active task that fits into its pool's free slots, oldest job first."""
        self._apply_autoscale()
        used: dict[str, int] = {}
        for task in self._running:
            pool_id = (self.jobs.get(task.job_id.lower()) or Job({})).pool_id or ""
            used[pool_id.lower()] = used.get(pool_id.lower(), 0) + task.required_slots
        jobs = sorted(
            (j for j in self.jobs.values() if j.state == "active"),
            key=lambda j: -as_int(j.body.get("priority"), 0),
        )
        for job in jobs:
            pool = self.pools.get((job.pool_id or "").lower())
            if pool is None:
                continue
            cap = as_int(job.body.get("maxParallelTasks"), -1)
            running_here = sum(1 for t in job.tasks.values() if t.state == "running")
            for task in job.tasks.values():
                if task.state != "active" or task.runner is not None:
                    continue
                if cap >= 0 and running_here >= cap:
                    break
                free = pool.slots - used.get(pool.id.lower(), 0)
                if task.required_slots > free or len(self._running) >= self.max_concurrency:
                    break
                used[pool.id.lower()] = used.get(pool.id.lower(), 0) + task.required_slots
                running_here += 1
                self._start(job, pool, task)

    def _apply_autoscale(self) -> None:
        """Re-evaluate every autoscaled pool's formula; a formula that fails keeps its size."""
        for pool in self.pools.values():
            formula = pool.body.get("autoScaleFormula")
            if pool.body.get("enableAutoScale") and isinstance(formula, str):
                with contextlib.suppress(BatchServiceError):
                    self._autoscale(pool, formula, apply=True, strict=True)
                self._allocate(pool)

    def _start(self, job: Job, pool: Pool, task: Task) -> None:
        set_state(task.body, "running")
        info = task.execution
        info["startTime"] = now()
        for key in ("endTime", "exitCode", "result", "failureInfo"):
            info.pop(key, None)
        task.body["nodeInfo"] = {
            "affinityId": f"TVM:{NODE_ID}",
            "nodeUrl": f"{self.base_url}/pools/{pool.id}/nodes/{NODE_ID}",
            "poolId": pool.id,
            "nodeId": NODE_ID,
            "taskRootDirectory": f"workitems/{job.id}/job-1/{task.id}",
        }
        self._running.add(task)
        task.runner = asyncio.get_running_loop().create_task(self._run(job, pool, task))

    async def _run(self, job: Job, pool: Pool, task: Task) -> None:
        task_dir = self.task_dir(job.id, task.id)
        (task_dir / "wd").mkdir(parents=True, exist_ok=True)
        (self.work_dir / "shared").mkdir(parents=True, exist_ok=True)
        exit_code: int | None = None
        launch_error: str | None = None
        try:
            with (
                (task_dir / "stdout.txt").open("wb") as out,
                (task_dir / "stderr.txt").open("wb") as err,
            ):
                try:
                    task.process = await asyncio.create_subprocess_exec(
                        "/bin/sh",
                        "-c",
                        str(task.body["commandLine"]),
                        stdin=asyncio.subprocess.DEVNULL,
                        stdout=out,
                        # Through this server, so kill faults can watch its lines.
                        stderr=asyncio.subprocess.PIPE,
                        limit=STDERR_LINE_LIMIT,
                        cwd=task_dir / "wd",
                        env=task_environment(
                            job,
                            pool,
                            task,
                            task_dir,
                            account_name=self.account_name,
                            account_url=self.base_url,
                            node_root=self.work_dir,
                        ),
                        start_new_session=True,
                    )
                except OSError as exc:
                    launch_error = str(exc)
                else:
                    await self._copy_stderr(job, task, task.process, err)
                    exit_code = await task.process.wait()
        except asyncio.CancelledError:
            self._kill(task, "shutdown")
            raise
        finally:
            task.process = None
            task.runner = None
            self._running.discard(task)
        if record_attempt(job, task, exit_code, launch_error):
            self._after_completion(job)
        self._after_disabling(job)
        self.schedule()

    async def _copy_stderr(
        self, job: Job, task: Task, process: asyncio.subprocess.Process, err: BinaryIO
    ) -> None:
        """Copy the attempt's stderr into stderr.txt, firing kill faults on matching lines.

        Read in chunks, not lines: a line longer than the reader's limit (STDERR_LINE_LIMIT)
        made ``readline`` raise, which left the task running for ever."""
        stream = process.stderr
        assert stream is not None
        matched: dict[int, int] = {}
        partial = b""
        while chunk := await stream.read(STDERR_CHUNK_BYTES):
            err.write(chunk)
            err.flush()
            if not self.faults.watching(job.id, task.id):
                continue
            *lines, partial = (partial + chunk).split(b"\n")
            # Faults match lines of a few words: the start of an endless line is enough.
            partial = partial[:STDERR_CHUNK_BYTES]
            self._kill_on_match(job, task, process, matched, [line + b"\n" for line in lines])
        if partial and self.faults.watching(job.id, task.id):
            self._kill_on_match(job, task, process, matched, [partial])

    def _kill_on_match(
        self,
        job: Job,
        task: Task,
        process: asyncio.subprocess.Process,
        matched: dict[int, int],
        lines: list[bytes],
    ) -> None:
        for line in lines:
            fault = self.faults.kill_for(job.id, task.id, matched, line.decode(errors="replace"))
            if fault is None:
                continue
            logger.info(
                "fault: %s task %s/%s",
                "preempting" if fault.preempt else "killing",
                job.id,
                task.id,
            )
            task.preempted = fault.preempt
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
            return

    def _after_completion(self, job: Job) -> None:
        if job.state != "active" or job.body.get("onAllTasksComplete") != "terminatejob":
            return
        if all(t.state == "completed" for t in job.tasks.values()):
            self._complete_job(job, "AllTasksComplete")

    def _kill(self, task: Task, reason: str | None) -> None:
        """SIGKILL the task's process; with a ``reason`` its attempt ends as "ended by user
        request", without one as its ``preempted`` flag says."""
        if reason is not None:
            task.killed_reason = reason
        process = task.process
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)

    async def shutdown(self) -> None:
        """Kill every running task and wait for their runners to end."""
        runners = [t.runner for t in self._running if t.runner is not None]
        for task in list(self._running):
            self._kill(task, "shutdown")
        if runners:
            await asyncio.gather(*runners, return_exceptions=True)
