"""A Batch job's figures (``JobStatus``) as Prometheus metrics: printed in the exposition
format, written for a node exporter's textfile collector, or pushed to a Pushgateway — the
usual ways to export figures of a job that runs on a schedule rather than as a service."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import CollectorRegistry, Gauge, generate_latest, push_to_gateway
from prometheus_client import write_to_textfile as _write_to_textfile

from coldpath.executors.batch_status import JobStatus

PUSH_JOB = "evalstream_coldpath"


def job_registry(status: JobStatus) -> CollectorRegistry:
    """A registry holding the job's figures, every series labelled with its ``job_id``."""
    registry = CollectorRegistry()
    job = {"job_id": status.job_id}

    def gauge(name: str, documentation: str, *labels: str) -> Gauge:
        return Gauge(name, documentation, ["job_id", *labels], registry=registry)

    tasks = gauge("evalstream_coldpath_batch_tasks", "Tasks of the job by Batch state.", "state")
    for state, count in status.by_state.items():
        tasks.labels(**job, state=state).set(count)
    results = gauge(
        "evalstream_coldpath_batch_tasks_completed",
        "Completed tasks by result.",
        "result",
    )
    results.labels(**job, result="success").set(status.succeeded)
    results.labels(**job, result="failure").set(status.failed)
    gauge("evalstream_coldpath_batch_task_retries", "Task retries by Batch.").labels(**job).set(
        status.retries
    )
    gauge(
        "evalstream_coldpath_batch_task_requeues", "Tasks requeued after a node preemption."
    ).labels(**job).set(status.requeues)
    gauge(
        "evalstream_coldpath_batch_failure_ratio", "Failed among completed tasks (0 to 1)."
    ).labels(**job).set(status.failure_rate)
    for name, documentation, values in (
        (
            "evalstream_coldpath_batch_queue_latency_seconds",
            "Task queue latency (created to started), by percentile.",
            status.queue_latency_s,
        ),
        (
            "evalstream_coldpath_batch_run_time_seconds",
            "Task run time (started to ended), by percentile.",
            status.run_time_s,
        ),
    ):
        series = gauge(name, documentation, "quantile")
        for point, value in values.items():
            series.labels(**job, quantile=f"{point / 100:g}").set(value)
    return registry


def exposition(status: JobStatus) -> str:
    return generate_latest(job_registry(status)).decode()


def write_textfile(status: JobStatus, path: Path) -> None:
    """Write atomically, as the textfile collector expects (it may read at any moment)."""
    _write_to_textfile(str(path), job_registry(status))


def push(status: JobStatus, gateway: str, timeout_s: float = 10.0) -> None:
    """Replace this job's group on the Pushgateway (grouping key: its job id)."""
    push_to_gateway(
        gateway,
        job=PUSH_JOB,
        registry=job_registry(status),
        grouping_key={"job_id": status.job_id},
        timeout=timeout_s,
    )
