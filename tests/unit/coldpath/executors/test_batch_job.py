"""What the Batch executor does with a job found under the manifest's id, state by state."""

from __future__ import annotations

import pytest

from coldpath.executors.batch_errors import BatchError, BatchJobConflict
from coldpath.executors.batch_job import FoundJob, Next, decide, task_id

POOL = "coldpath-pool"
SHARDS = 3
ALL_TASKS = frozenset(task_id(i) for i in range(SHARDS))


def found(state: str, *, pool_id: str | None = POOL, **fields: object) -> FoundJob:
    return FoundJob(id="job-1", state=state, pool_id=pool_id, **fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("job", "expected"),
    [
        (found("active"), Next.SUBMIT),
        (found("enabling"), Next.SUBMIT),
        (found("active", pool_id=POOL.upper(), shards="3"), Next.SUBMIT),  # ids ignore case
        (found("completed", task_ids=ALL_TASKS), Next.FOLLOW),
        (found("terminating", task_ids=ALL_TASKS | {"job-manager"}), Next.FOLLOW),
    ],
    ids=["active", "enabling", "pool-id-case", "completed-same-tasks", "terminating-same-tasks"],
)
def test_jobs_that_can_go_on(job: FoundJob, expected: Next) -> None:
    assert decide(job, pool_id=POOL, shards=SHARDS) is expected


@pytest.mark.parametrize(
    ("job", "says"),
    [
        (found("active", pool_id="other"), "exists on pool 'other', not on the configured pool"),
        (found("completed", pool_id=None), "exists on an auto pool, not on the configured pool"),
        (found("active", shards="7"), "was made for 7 shards, this manifest has 3"),
        (found("disabled"), "is disabled: an operator disabled it"),
        (found("disabling"), "is disabling: an operator disabled it"),
        (
            found("terminating", task_ids=frozenset({task_id(0)})),
            "is terminating with 1 of 3 shard tasks (missing shard-000001, shard-000002)",
        ),
        (found("completed", task_ids=frozenset()), "is completed with 0 of 3 shard tasks"),
        (found("paused"), "in a state this executor does not know: paused"),
    ],
    ids=[
        "other-pool",
        "auto-pool",
        "other-shards",
        "disabled",
        "disabling",
        "terminating-missing",
        "completed-empty",
        "unknown-state",
    ],
)
def test_jobs_that_cannot_go_on_are_one_clear_error(job: FoundJob, says: str) -> None:
    with pytest.raises(BatchJobConflict) as error:
        decide(job, pool_id=POOL, shards=SHARDS)
    assert says in str(error.value)
    assert error.value.retryable is False and "\n" not in str(error.value)


def test_a_job_being_deleted_is_waited_out_by_retrying_its_creation() -> None:
    with pytest.raises(
        BatchError, match="is being deleted: trigger again once it is gone"
    ) as error:
        decide(found("deleting", pool_id="other"), pool_id=POOL, shards=SHARDS)
    assert error.value.retryable is True
