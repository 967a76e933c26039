"""What to do with a Batch job that already carries the manifest's id — a re-trigger, another
trigger at the same time, or an operator's hand on it — decided per job state and pool.

Pure: the executor (``coldpath.executors.batch``) reads the job into a ``FoundJob``.

| found | decision |
| --- | --- |
| on another pool, or an auto pool | error naming both pools |
| made for another shard count | error (not this manifest's job) |
| ``active``, ``enabling`` | add the missing tasks ("TaskExists" for the rest), follow |
| ``disabling``, ``disabled`` | error: an operator's decision, not waited on |
| ``terminating``, ``completed``, every shard's task there | the same work: follow or report it |
| ``terminating``, ``completed``, shards missing | error: such a job takes no more tasks |
| ``deleting`` | retryable: the job can be made again once it is gone |
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from coldpath.executors.batch_errors import BatchError, BatchJobConflict

TASK_ID_WIDTH = 6
# Tasks may still be added to a job in these states.
OPEN_STATES = ("active", "enabling")
DISABLED_STATES = ("disabling", "disabled")
ENDED_STATES = ("terminating", "completed")


def task_id(group_index: int) -> str:
    return f"shard-{group_index:0{TASK_ID_WIDTH}d}"


def group_index(task: str) -> int | None:
    prefix, _, number = task.partition("-")
    return int(number) if prefix == "shard" and number.isdigit() else None


class Next(Enum):
    """What the executor does with the job it found."""

    SUBMIT = "submit"  # add the tasks that are missing, then follow
    FOLLOW = "follow"  # every shard's task is there: follow the job to its end, or report it


@dataclass(frozen=True)
class FoundJob:
    """What the decision needs of an existing job."""

    id: str
    state: str
    pool_id: str | None  # poolInfo.poolId; None when the job runs on an auto pool
    shards: str | None = None  # the "shards" metadata item the executor's jobs carry
    # Ids of its tasks; read only for a job that takes no more tasks (terminating, completed).
    task_ids: frozenset[str] | None = None


def disabled_message(job_id: str, state: str, *, followed: bool = False) -> str:
    when = " while it was followed" if followed else ""
    return (
        f"Batch job {job_id} is {state}{when}: an operator disabled it, so its tasks are not "
        f"scheduled; enable it (`az batch job enable --job-id {job_id}`) and trigger again to "
        f"follow it, or delete it (`az batch job delete --job-id {job_id}`) to submit the "
        "window afresh"
    )


def decide(found: FoundJob, *, pool_id: str, shards: int) -> Next:
    """The executor's next step with ``found``; raises ``BatchJobConflict`` where it cannot go
    on (the message says why and what to do) and a retryable ``BatchError`` for a job being
    deleted."""
    job, state = found.id, found.state
    if found.state == "deleting":
        raise BatchError(
            f"Batch job {job} is being deleted: trigger again once it is gone", retryable=True
        )
    if found.pool_id is None or found.pool_id.lower() != pool_id.lower():
        where = f"pool {found.pool_id!r}" if found.pool_id else "an auto pool"
        raise BatchJobConflict(
            f"Batch job {job} exists on {where}, not on the configured pool {pool_id!r} "
            f"(azure.batch.pool.id): set azure.batch.pool.id to its pool, or delete the job "
            f"(`az batch job delete --job-id {job}`) to submit it to {pool_id!r}"
        )
    if found.shards is not None and found.shards != str(shards):
        raise BatchJobConflict(
            f"Batch job {job} was made for {found.shards} shards, this manifest has {shards}: "
            f"it is not this manifest's job; delete it (`az batch job delete --job-id {job}`)"
        )
    if found.state in OPEN_STATES:
        return Next.SUBMIT
    if found.state in DISABLED_STATES:
        raise BatchJobConflict(disabled_message(job, found.state))
    if found.state in ENDED_STATES:
        present = found.task_ids or frozenset()
        missing = [task_id(i) for i in range(shards) if task_id(i) not in present]
        if not missing:
            return Next.FOLLOW
        shown = ", ".join(missing[:3]) + (", …" if len(missing) > 3 else "")
        raise BatchJobConflict(
            f"Batch job {job} is {found.state} with {shards - len(missing)} of {shards} shard "
            f"tasks (missing {shown}) and takes no more tasks: delete it "
            f"(`az batch job delete --job-id {job}`) and trigger again, or trigger with --rerun "
            "(a new job)"
        )
    raise BatchJobConflict(f"Batch job {job} is in a state this executor does not know: {state}")
