"""The Batch service's answers, checked where they are read: JSON of another shape than the
call's (``[]`` or ``{}`` for a job, task counts that are not numbers, a task without ``state``)
is a non-retryable ``BatchError`` naming the call and what was wrong — the SDK hands such an
answer on as it is, and taking it at face value crashes later or follows a job for ever.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from datetime import datetime
from enum import Enum
from typing import Any

from azure.batch import models

from coldpath.executors.batch_errors import BatchError

JOB_STATES = frozenset(state.value for state in models.BatchJobState)
TASK_STATES = frozenset(state.value for state in models.BatchTaskState)
TASK_RESULTS = frozenset(result.value for result in models.BatchTaskExecutionResult)
TASK_ADD_STATUSES = frozenset(status.value for status in models.BatchTaskAddStatus)
COUNTS = ("active", "running", "completed", "succeeded", "failed")


def wire_text(value: object) -> str:
    """An SDK enum member (a str subclass) or a plain string as its wire value."""
    return str(value.value) if isinstance(value, Enum) else str(value)


def malformed(what: str, problem: str) -> BatchError:
    return BatchError(
        f"{what}: the answer is not of the Batch service's shape ({problem}): check that "
        "azure.batch.account_url is the Batch account's URL (a proxy or another service "
        "answers with JSON of its own)",
        retryable=False,
    )


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _state(value: object, known: frozenset[str]) -> str | None:
    """The state as its wire text, or None when it is not one the service has."""
    if not isinstance(value, str) or wire_text(value) not in known:
        return None
    return wire_text(value)


def job(answer: object, what: str) -> tuple[models.BatchJob, str]:
    """A get-job answer and its state."""
    if not isinstance(answer, models.BatchJob):
        raise malformed(what, f"a job is a JSON object, not {_shown(answer)}")
    state = _state(answer.state, JOB_STATES)
    if state is None:
        raise malformed(what, f"job state {_shown(answer.state)} is not a Batch job state")
    info = answer.pool_info
    if info is not None and not (
        isinstance(info, models.BatchPoolInfo) and isinstance(info.pool_id, str | None)
    ):
        raise malformed(what, f"the job's poolInfo is {_shown(info)}")
    metadata = answer.metadata
    if metadata is not None and not (
        isinstance(metadata, list)
        and all(isinstance(item, models.BatchMetadataItem) for item in metadata)
    ):
        raise malformed(what, f"the job's metadata is {_shown(metadata)}, not a list of items")
    return answer, state


def task_counts(answer: object, what: str) -> models.BatchTaskCounts:
    """The task counts of a get-job-task-counts answer, each a count."""
    if not isinstance(answer, models.BatchTaskCountsResult):
        raise malformed(what, f"task counts are a JSON object, not {_shown(answer)}")
    counts = answer.task_counts
    if not isinstance(counts, models.BatchTaskCounts):
        raise malformed(what, f"taskCounts is {_shown(counts)}, not an object")
    for name in COUNTS:
        value = getattr(counts, name)
        if not _is_int(value) or value < 0:
            raise malformed(what, f"taskCounts.{name} is {_shown(value)}, not a count")
    return counts


def task(answer: object, what: str, *, with_state: bool = True) -> models.BatchTask:
    """A task of a task list page: its id, and with ``with_state`` (a list read whole) its
    state and the execution figures a report reads."""
    if not isinstance(answer, models.BatchTask):
        raise malformed(what, f"a task is a JSON object, not {_shown(answer)}")
    if not isinstance(answer.id, str) or not answer.id:
        raise malformed(what, f"a task's id is {_shown(answer.id)}")
    if not with_state:
        return answer
    problem = _task_problem(answer)
    if problem is not None:
        raise malformed(what, f"task {answer.id}: {problem}")
    return answer


def _task_problem(answer: models.BatchTask) -> str | None:
    if _state(answer.state, TASK_STATES) is None:
        return f"state {_shown(answer.state)} is not a Batch task state"
    if answer.creation_time is not None and not isinstance(answer.creation_time, datetime):
        return f"creationTime {_shown(answer.creation_time)} is not a time"
    info = answer.execution_info
    if info is None:
        return None
    if not isinstance(info, models.BatchTaskExecutionInfo):
        return f"executionInfo is {_shown(info)}, not an object"
    for name in ("retry_count", "requeue_count"):
        if not _is_int(getattr(info, name)):
            return f"executionInfo.{name} is {_shown(getattr(info, name))}, not a count"
    if info.exit_code is not None and not _is_int(info.exit_code):
        return f"executionInfo.exitCode is {_shown(info.exit_code)}, not an integer"
    for name in ("start_time", "end_time"):
        value = getattr(info, name)
        if value is not None and not isinstance(value, datetime):
            return f"executionInfo.{name} is {_shown(value)}, not a time"
    if info.result is not None and _state(info.result, TASK_RESULTS) is None:
        return f"executionInfo.result is {_shown(info.result)}, not success or failure"
    if info.failure_info is not None and not isinstance(
        info.failure_info, models.BatchTaskFailureInfo
    ):
        return f"executionInfo.failureInfo is {_shown(info.failure_info)}, not an object"
    return None


def list_page(what: str) -> Callable[[Any], None]:
    """A ``raw_response_hook`` for a list call: each page answered (200) is a JSON object
    whose ``value`` is a list (the SDK would fail on it with an AttributeError, or read the
    letters of a string as tasks)."""

    def check(pipeline_response: Any) -> None:
        response = pipeline_response.http_response
        if response.status_code != 200:
            return
        page = response.json()  # not JSON at all: the SDK's own decode error, mapped as such
        if not isinstance(page, dict):
            raise malformed(what, f"a list page is a JSON object, not {_shown(page)}")
        if not isinstance(page.get("value", []), list):
            raise malformed(what, f"a list page's value is {_shown(page['value'])}, not a list")

    return check


def task_add_results(
    answer: object, what: str, sent: Collection[str]
) -> list[models.BatchTaskCreateResult]:
    """An add-task-collection answer: one result per task sent at most, each naming one of
    them with a known status."""
    if not isinstance(answer, models.BatchCreateTaskCollectionResult):
        raise malformed(what, f"the task results are a JSON object, not {_shown(answer)}")
    results = answer.result_values or []
    if not isinstance(results, list):
        raise malformed(what, f"value is {_shown(results)}, not a list")
    for result in results:
        if not isinstance(result, models.BatchTaskCreateResult):
            raise malformed(what, f"a task result is {_shown(result)}, not an object")
        if result.task_id not in sent:
            raise malformed(what, f"a task result names task {_shown(result.task_id)}, not sent")
        if _state(result.status, TASK_ADD_STATUSES) is None:
            raise malformed(what, f"task {result.task_id}'s status is {_shown(result.status)}")
        if result.error is not None and not isinstance(result.error, models.BatchError):
            raise malformed(what, f"task {result.task_id}'s error is {_shown(result.error)}")
    return results


def pool(answer: object, what: str) -> models.BatchPool:
    """A get-pool answer: its id, and the node figures the follow deadline's message reads."""
    if not isinstance(answer, models.BatchPool):
        raise malformed(what, f"a pool is a JSON object, not {_shown(answer)}")
    if not isinstance(answer.id, str):
        raise malformed(what, f"the pool's id is {_shown(answer.id)}")
    for name in (
        "current_dedicated_nodes",
        "target_dedicated_nodes",
        "current_low_priority_nodes",
        "target_low_priority_nodes",
    ):
        value = getattr(answer, name)
        if value is not None and not _is_int(value):
            raise malformed(what, f"the pool's {name} is {_shown(value)}, not a count")
    return answer
