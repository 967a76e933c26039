"""Figures of one Batch job from its tasks: states, retries, queue latency, run time, failures.

Pure: the adapter (``coldpath.executors.batch_follow``) turns SDK tasks into ``TaskRecord`` values.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

PERCENTILES = (50, 90, 99)


@dataclass(frozen=True)
class TaskRecord:
    """What the status needs of one task."""

    task_id: str
    state: str  # active, preparing, running, completed
    result: str | None = None  # success / failure once completed
    created: datetime | None = None
    started: datetime | None = None
    ended: datetime | None = None
    retries: int = 0
    requeues: int = 0
    exit_code: int | None = None
    failure: str | None = None


def percentiles(values: Sequence[float], points: Iterable[int] = PERCENTILES) -> dict[int, float]:
    """Nearest-rank percentiles; empty when there are no values."""
    ordered = sorted(values)
    if not ordered:
        return {}
    return {p: ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)] for p in points}


@dataclass(frozen=True)
class JobStatus:
    job_id: str
    state: str
    tasks: int
    by_state: Mapping[str, int]
    succeeded: int
    failed: int
    retries: int
    requeues: int
    # Seconds from a task's creation to the start of its last attempt, and of that attempt.
    queue_latency_s: Mapping[int, float] = field(default_factory=dict)
    run_time_s: Mapping[int, float] = field(default_factory=dict)
    failed_tasks: tuple[TaskRecord, ...] = ()

    @property
    def failure_rate(self) -> float:
        """Failed among completed tasks (0 when none completed yet)."""
        done = self.succeeded + self.failed
        return self.failed / done if done else 0.0


def job_status(job_id: str, state: str, tasks: Sequence[TaskRecord]) -> JobStatus:
    by_state = Counter({"active": 0, "running": 0, "completed": 0})
    for task in tasks:
        by_state["active" if task.state == "preparing" else task.state] += 1
    queue = [
        (task.started - task.created).total_seconds()
        for task in tasks
        if task.started is not None and task.created is not None
    ]
    run = [
        (task.ended - task.started).total_seconds()
        for task in tasks
        if task.state == "completed" and task.started is not None and task.ended is not None
    ]
    failed = tuple(t for t in tasks if t.state == "completed" and t.result == "failure")
    return JobStatus(
        job_id=job_id,
        state=state,
        tasks=len(tasks),
        by_state=dict(by_state),
        succeeded=sum(t.state == "completed" and t.result == "success" for t in tasks),
        failed=len(failed),
        retries=sum(t.retries for t in tasks),
        requeues=sum(t.requeues for t in tasks),
        queue_latency_s=percentiles(queue),
        run_time_s=percentiles(run),
        failed_tasks=failed,
    )
