"""Processor statistics count an incident once, whatever its messages; the quarantined inputs
on the status line include what ingest refused; readiness knows which partitions a supervisor's
workers hold."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from prometheus_client import CollectorRegistry

from schemas import BreachState, Severity
from stream import stats as stats_module
from stream.metrics import IngestMetrics, SummedWorkers, snapshot
from stream.ports import ReceivedEvent
from stream.stats import MAX_UNHELD_S, ProcessorStats
from tests.unit.alerts.factories import make_breach

LAST = ReceivedEvent(body=b"{}", partition="0", sequence=1, enqueued_time=datetime.now(UTC))


def open_gauge(stats: ProcessorStats, severity: str) -> float | None:
    return stats.metrics.registry.get_sample_value(
        "evalstream_open_breaches", {"severity": severity}
    )


def test_an_escalated_incident_is_one_open_breach_of_its_new_severity() -> None:
    stats = ProcessorStats()
    opened = make_breach(1)
    stats.record("0", LAST, 1, [], [opened])
    assert (open_gauge(stats, "warning"), open_gauge(stats, "critical")) == (1.0, 0.0)
    escalated = opened.model_copy(
        update={"state": BreachState.ESCALATED, "severity": Severity.CRITICAL}
    )
    stats.record("0", LAST, 1, [], [escalated])
    assert (open_gauge(stats, "warning"), open_gauge(stats, "critical")) == (0.0, 1.0)
    resolved = escalated.model_copy(update={"state": BreachState.RESOLVED})
    stats.record("0", LAST, 1, [], [resolved])
    assert (open_gauge(stats, "warning"), open_gauge(stats, "critical")) == (0.0, 0.0)
    assert (stats.breaches_opened, stats.breaches_resolved) == (1, 1)


class _Partition:
    """A partition as a supervisor watches it: nothing waiting."""

    rewindable = False

    def __init__(self, partition_id: str) -> None:
        self.partition_id = partition_id

    async def last_enqueued_sequence(self) -> int | None:
        return None

    async def checkpointed_sequence(self) -> int | None:
        return None


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def _supervised(
    monkeypatch: pytest.MonkeyPatch, partitions: int
) -> tuple[ProcessorStats, _Clock]:
    clock = _Clock()
    monkeypatch.setattr(stats_module.time, "monotonic", clock)
    stats = ProcessorStats(workers=(2, 2))
    for partition in range(partitions):
        await stats.attach(_Partition(str(partition)), holder=None)
    return stats, clock


def _owned(stats: ProcessorStats) -> float | None:
    return stats.metrics.registry.get_sample_value("evalstream_partitions_owned")


async def test_a_supervisor_whose_workers_hold_nothing_is_not_ready(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stats, _ = await _supervised(monkeypatch, 3)
    assert await stats.problems(60) == [
        "no partition owned: 2 of 2 processing workers running, none holds a partition"
    ]
    await stats.attach(_Partition("0"), holder=0)
    await stats.attach(_Partition("1"), holder=1)
    assert _owned(stats) == 2
    # Workers hold some: the one nobody has taken since the start is named.
    assert await stats.problems(60) == ["partition 2: not taken by a worker yet"]
    await stats.attach(_Partition("2"), holder=1)
    assert await stats.problems(60) == []
    stats.workers = (0, 2)
    stats.released(0)
    stats.released(1)
    assert _owned(stats) == 0
    assert await stats.problems(60) == ["no partition owned: no processing worker running (0 of 2)"]


async def test_a_partition_without_a_holder_for_longer_than_a_restart_takes_is_named(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stats, clock = await _supervised(monkeypatch, 2)
    await stats.attach(_Partition("0"), holder=0)
    await stats.attach(_Partition("1"), holder=1)
    stats.released(1, "1")  # moving to a worker that is starting
    clock.now += MAX_UNHELD_S
    assert await stats.problems(60) == []
    clock.now += 1
    assert await stats.problems(60) == [
        f"partition 1: no live worker has held it for {MAX_UNHELD_S + 1:.0f} s"
    ]
    await stats.attach(_Partition("1"), holder=0)
    assert await stats.problems(60) == []


async def test_a_release_after_another_worker_took_the_partition_leaves_it_held(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Worker 1 took partition 0 after worker 0 let go; worker 0's report of letting go (or of
    # exiting) is read later, over its own pipe.
    stats, clock = await _supervised(monkeypatch, 1)
    await stats.attach(_Partition("0"), holder=1)
    stats.released(0, "0")
    stats.released(0)
    clock.now += MAX_UNHELD_S + 1
    assert (await stats.problems(60), _owned(stats)) == ([], 1)


async def test_a_processor_that_runs_its_partitions_itself_holds_what_it_attached() -> None:
    stats = ProcessorStats()
    assert await stats.problems(60) == ["no partition owned"]
    await stats.attach(_Partition("0"))
    assert (await stats.problems(60), _owned(stats)) == ([], 1)
    stats.detach("0")
    assert (await stats.problems(60), _owned(stats)) == (["no partition owned"], 0)


async def test_the_status_line_counts_what_ingest_quarantined_in_this_process() -> None:
    stats = ProcessorStats()
    ingest = IngestMetrics(stats.metrics.registry)  # in-process ingest shares the registry
    stats.record_counts("0", 1, 5, ["missing"], [])
    assert "| quarantined 1 |" in await stats.status_line()
    ingest.quarantined.labels("missing").inc(2)
    ingest.quarantined.labels("invalid_type").inc()
    assert "| quarantined 4 (3 by ingest) |" in await stats.status_line()


async def test_the_status_line_counts_what_ingest_workers_quarantined() -> None:
    stats = ProcessorStats()
    summed = SummedWorkers()
    stats.metrics.registry.register(summed)
    worker = CollectorRegistry()
    IngestMetrics(worker).quarantined.labels("missing").inc(7)
    summed.update(0, snapshot(worker))
    summed.retire(0)  # restarted: what it counted still counts
    summed.update(0, snapshot(worker))
    assert "| quarantined 14 (14 by ingest) |" in await stats.status_line()
