"""One task attempt on the local compute node: the environment its command line sees, and how
its exit becomes a result, a retry or a failure (the rules of `constraints.maxTaskRetryCount`)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from tests.emulators.batch.entities import NODE_ID, Job, Pool, Task, as_int, now, set_state

logger = logging.getLogger(__name__)


def task_environment(
    job: Job,
    pool: Pool,
    task: Task,
    task_dir: Path,
    *,
    account_name: str,
    account_url: str,
    node_root: Path,
) -> dict[str, str]:
    """The server's own environment plus the `AZ_BATCH_*` variables, the job's common settings
    and the task's settings (later ones win)."""
    env = dict(os.environ)
    env.update(
        {
            "AZ_BATCH_ACCOUNT_NAME": account_name,
            "AZ_BATCH_ACCOUNT_URL": account_url,
            "AZ_BATCH_POOL_ID": pool.id,
            "AZ_BATCH_NODE_ID": NODE_ID,
            "AZ_BATCH_JOB_ID": job.id,
            "AZ_BATCH_TASK_ID": task.id,
            "AZ_BATCH_NODE_ROOT_DIR": str(node_root),
            "AZ_BATCH_NODE_SHARED_DIR": str(node_root / "shared"),
            "AZ_BATCH_TASK_DIR": str(task_dir),
            "AZ_BATCH_TASK_WORKING_DIR": str(task_dir / "wd"),
        }
    )
    for source in (
        job.body.get("commonEnvironmentSettings"),
        task.body.get("environmentSettings"),
    ):
        if not isinstance(source, list):
            continue
        for setting in source:
            if isinstance(setting, dict) and isinstance(setting.get("name"), str):
                env[setting["name"]] = str(setting.get("value") or "")
    return env


def record_attempt(job: Job, task: Task, exit_code: int | None, launch_error: str | None) -> bool:
    """Write the outcome of one attempt into the task's execution info and state.

    Returns True when the task completed on its own (success, launch failure, or failure with
    no retries left), which is when the job's `onAllTasksComplete` must be checked; a retried
    task goes back to active and a task killed on request completes without that check.
    """
    info = task.execution
    stamp = now()
    info["endTime"] = stamp
    if task.killed_reason is not None:
        info["exitCode"] = exit_code if exit_code is not None else -1
        info["result"] = "failure"
        info["failureInfo"] = {
            "category": "usererror",
            "code": "TaskEnded",
            "message": "Task Was Ended by User Request",
        }
        task.killed_reason = None
        set_state(task.body, "completed")
        return False
    if task.preempted:
        task.preempted = False
        info["requeueCount"] = as_int(info.get("requeueCount"), 0) + 1
        info["lastRequeueTime"] = stamp
        info.pop("exitCode", None)
        if job.state in ("active", "disabling", "disabled"):
            set_state(task.body, "active")
            logger.info("task %s/%s requeued (preempted, or its job disabled)", job.id, task.id)
            return False
        info["result"] = "failure"
        set_state(task.body, "completed")
        return True
    if launch_error is not None:
        info["result"] = "failure"
        info["failureInfo"] = {
            "category": "usererror",
            "code": "CommandLaunchFailed",
            "message": launch_error,
        }
        set_state(task.body, "completed")
        return True
    info["exitCode"] = exit_code
    if exit_code == 0:
        info["result"] = "success"
        set_state(task.body, "completed")
        return True
    constraints = task.body.get("constraints") or {}
    assert isinstance(constraints, dict)
    max_retries = as_int(constraints.get("maxTaskRetryCount"), 0)
    retries = as_int(info.get("retryCount"), 0)
    if job.state == "active" and (max_retries == -1 or retries < max_retries):
        info["retryCount"] = retries + 1
        info["lastRetryTime"] = stamp
        set_state(task.body, "active")
        logger.info("task %s/%s exited %s; retry %d", job.id, task.id, exit_code, retries + 1)
        return False
    info["result"] = "failure"
    info["failureInfo"] = {
        "category": "usererror",
        "code": "FailureExitCode",
        "message": "The task process exited with an unexpected exit code",
        "details": [
            {
                "name": "Message",
                "value": f"The task process exited with an unexpected exit code: {exit_code}",
            }
        ],
    }
    set_state(task.body, "completed")
    return True
