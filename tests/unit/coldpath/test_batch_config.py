"""Batch settings: pool bounds, the generated autoscale formula (evaluated by the Batch test
server's formula evaluator) and job status figures."""

from __future__ import annotations

import os
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr, ValidationError

from coldpath.executors.batch_config import (
    MAX_FORMULA_BYTES,
    BatchSettings,
    PoolSettings,
    autoscale_formula,
)
from coldpath.executors.batch_metrics import exposition
from coldpath.executors.batch_status import TaskRecord, job_status, percentiles
from evalstream.settings import load_settings
from schemas.bounds import MAX_COUNT, MAX_DURATION_S
from tests.emulators.batch import autoscale


def targets(pool: PoolSettings, pending: int) -> tuple[float, float]:
    variables = {"$PendingTasks": float(pending)}
    result = autoscale.evaluate(autoscale_formula(pool), variables)
    return result.number("$TargetDedicatedNodes", -1), result.number("$TargetLowPriorityNodes", -1)


def test_profiles_choose_dedicated_or_spot_nodes() -> None:
    assert targets(PoolSettings(profile="production", max_nodes=5), 17) == (5, 0)
    assert targets(PoolSettings(profile="cost_saving", max_nodes=5), 17) == (0, 5)
    assert targets(PoolSettings(profile="cost_saving", spot_share=0.5, max_nodes=9), 17) == (3, 2)


def test_formula_limits_and_shape() -> None:
    formula = autoscale_formula(PoolSettings())
    assert len(formula.encode()) <= MAX_FORMULA_BYTES
    assert formula.count(";") <= 100
    assert "$NodeDeallocationOption = taskcompletion;" in formula


def test_pool_settings_refuse_wrong_bounds() -> None:
    with pytest.raises(ValidationError, match="min_nodes"):
        PoolSettings(min_nodes=3, max_nodes=2)
    with pytest.raises(ValidationError, match="at most every 5 min"):
        PoolSettings(evaluation_interval=timedelta(minutes=1))


def test_the_follow_deadline_is_the_longest_its_tasks_can_take() -> None:
    # Every attempt of every wave of tasks at its wall-clock limit, after nodes had an
    # autoscale interval and a resize timeout to arrive.
    hour = timedelta(hours=1)
    default = BatchSettings()  # 3 retries, 1 h, autoscale up to 10 nodes × 4 slots
    assert default.follow_deadline(40) == timedelta(minutes=5 + 15) + 4 * hour
    assert default.follow_deadline(41) == timedelta(minutes=20) + 8 * hour
    fixed = BatchSettings(
        max_task_retry_count=0,
        max_wall_clock_time=timedelta(minutes=10),
        pool=PoolSettings(autoscale=False, dedicated_nodes=1, task_slots_per_node=2),
    )
    assert fixed.follow_deadline(5) == timedelta(minutes=15 + 3 * 10)
    # A pool of no nodes at all still waits one wave, not for ever.
    empty = fixed.model_copy(update={"pool": PoolSettings(autoscale=False, dedicated_nodes=0)})
    assert empty.follow_deadline(5) == timedelta(minutes=15 + 5 * 10)
    unlimited = BatchSettings(max_task_retry_count=-1, max_wall_clock_time=timedelta(minutes=1))
    assert unlimited.follow_deadline(1) == timedelta(minutes=20 + 10)
    chosen = BatchSettings(follow_timeout=timedelta(minutes=30))
    assert chosen.follow_deadline(10_000) == timedelta(minutes=30)
    with pytest.raises(ValidationError, match="follow_timeout"):
        BatchSettings(follow_timeout=timedelta(0))


def test_the_follow_deadline_of_the_largest_settings_is_a_usable_duration() -> None:
    # Each setting is bounded, their product is not: it overflowed timedelta.
    largest = BatchSettings(
        max_task_retry_count=MAX_COUNT,
        max_wall_clock_time=timedelta(seconds=MAX_DURATION_S),
        pool=PoolSettings(autoscale=False, dedicated_nodes=1, task_slots_per_node=1),
    )
    assert largest.follow_deadline(MAX_COUNT) == timedelta(seconds=MAX_DURATION_S)
    assert datetime.now(UTC) + largest.follow_deadline(MAX_COUNT) < datetime.max.replace(tzinfo=UTC)


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"account_url": "myaccount.westeurope.batch.azure.com"}, "is not an account URL"),
        ({"account_url": "ftp://myaccount"}, "is not an account URL"),
        ({"account_key": SecretStr("not a key!")}, "is not base64"),
    ],
    ids=["no-scheme", "ftp", "key"],
)
def test_batch_account_settings_that_can_never_work_are_refused(
    fields: dict[str, object], says: str
) -> None:
    # Taken as they were, every call failed (a URL without a scheme was even retried) or
    # crashed (a key that is not base64, at the first signature).
    with pytest.raises(ValidationError, match=re.escape(says)):
        BatchSettings.model_validate(fields)
    assert BatchSettings(
        account_url="https://myaccount.westeurope.batch.azure.com",
        account_key=SecretStr("bG9jYWwta2V5"),
    ).account_url


def test_job_status_figures() -> None:
    t0 = datetime(2026, 3, 1, tzinfo=UTC)

    def task(n: int, state: str, result: str | None, queued: int, ran: int) -> TaskRecord:
        started = t0 + timedelta(seconds=queued)
        return TaskRecord(
            task_id=f"shard-{n:06d}",
            state=state,
            result=result,
            created=t0,
            started=started,
            ended=started + timedelta(seconds=ran) if state == "completed" else None,
            retries=n % 2,
            requeues=1 if n == 3 else 0,
        )

    status = job_status(
        "j",
        "active",
        [
            task(0, "completed", "success", 1, 10),
            task(1, "completed", "failure", 2, 20),
            task(2, "running", None, 3, 0),
            task(3, "completed", "success", 4, 30),
        ],
    )
    assert status.by_state == {"active": 0, "running": 1, "completed": 3}
    assert (status.succeeded, status.failed, status.retries, status.requeues) == (2, 1, 2, 1)
    assert status.failure_rate == pytest.approx(1 / 3)
    assert status.queue_latency_s == {50: 2.0, 90: 4.0, 99: 4.0}
    assert status.run_time_s == {50: 20.0, 90: 30.0, 99: 30.0}
    assert percentiles([]) == {}

    # The same figures as Prometheus metrics, parsed back from the exposition text.
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(exposition(status))
        for sample in family.samples
    }
    job = ("job_id", "j")
    assert samples[("evalstream_coldpath_batch_failure_ratio", (job,))] == pytest.approx(1 / 3)
    assert samples[("evalstream_coldpath_batch_tasks", (job, ("state", "running")))] == 1
    assert samples[("evalstream_coldpath_batch_tasks", (job, ("state", "completed")))] == 3
    completed = "evalstream_coldpath_batch_tasks_completed"
    assert samples[(completed, (job, ("result", "failure")))] == 1
    assert samples[(completed, (job, ("result", "success")))] == 2
    assert samples[("evalstream_coldpath_batch_task_retries", (job,))] == 2
    assert samples[("evalstream_coldpath_batch_task_requeues", (job,))] == 1
    latency = "evalstream_coldpath_batch_queue_latency_seconds"
    assert samples[(latency, (job, ("quantile", "0.9")))] == 4.0
    assert samples[("evalstream_coldpath_batch_run_time_seconds", (job, ("quantile", "0.5")))] == 20


def test_the_docs_batch_example_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for key in [k for k in os.environ if k.startswith("EVALSTREAM_")]:
        monkeypatch.delenv(key)
    docs = Path(__file__).resolve().parents[3] / "docs" / "azure.md"
    (example,) = re.findall(r"```toml batch\n(.*?)```", docs.read_text(), flags=re.DOTALL)
    config = tmp_path / "batch.toml"
    config.write_text(example)
    batch = load_settings(config=config).azure.batch
    assert batch.max_wall_clock_time == timedelta(hours=1)
    assert batch.pool.effective_spot_share == 0.0 and batch.pool.scheduling == "pack"
    assert batch.environment["EVALSTREAM_BACKEND"].get_secret_value() == "azure"
