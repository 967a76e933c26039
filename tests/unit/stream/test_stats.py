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


class _Resumed(_Partition):
    """A partition as its holder takes it: checkpointed at ``checkpoint``, ``head`` its last
    event."""

    def __init__(self, checkpoint: int | None, head: int = 99) -> None:
        super().__init__("0")
        self.checkpoint, self.head = checkpoint, head

    async def last_enqueued_sequence(self) -> int | None:
        return self.head

    async def checkpointed_sequence(self) -> int | None:
        return self.checkpoint


def _stored(stats: ProcessorStats) -> tuple[int, float]:
    """The status line's stored count and the metric's."""
    metric = stats.metrics.registry.get_sample_value(
        "evalstream_events_total", {"outcome": "stored"}
    )
    return stats.documents, metric or 0.0


async def test_a_batch_counts_once_a_checkpoint_covers_it() -> None:
    stats = ProcessorStats()
    await stats.attach(_Resumed(None))
    stats.record_counts("0", 9, 10, ["missing"], [make_breach(1)])
    # Processed, not checkpointed: in flight, shown as lag.
    assert (_stored(stats), stats.quarantined, stats.breaches_opened) == ((0, 0.0), 0, 0)
    assert await stats.lag() == {"0": 99 + 1}
    stats.checkpointed("0")
    assert (_stored(stats), stats.quarantined, stats.breaches_opened) == ((10, 10.0), 1, 1)
    assert await stats.lag() == {"0": 99 - 9}
    # Closed without a checkpoint (ownership lost): its next owner processes, and counts,
    # the batch again.
    stats.record_counts("0", 19, 10, [], [])
    stats.detach("0")
    await stats.attach(_Resumed(9))
    stats.record_counts("0", 19, 10, [], [])
    stats.checkpointed("0")
    assert _stored(stats) == (20, 20.0)


@pytest.mark.parametrize(
    ("checkpoint", "covered", "stored"),
    [
        # Killed past its checkpoint at 9: its batch 10-19 is processed again by the next one.
        (9, -1, 30),
        # Killed between the snapshot covering 19 and its checkpoint: the next one skips 10-19.
        (9, 19, 30),
    ],
)
async def test_a_killed_workers_batches_past_its_checkpoint_count_once(
    monkeypatch: pytest.MonkeyPatch, checkpoint: int, covered: int, stored: int
) -> None:
    stats, _ = await _supervised(monkeypatch, 1)
    await stats.attach(_Resumed(None), holder=0)
    stats.record_counts("0", 9, 10, [], [], holder=0)
    stats.checkpointed("0", 0)
    stats.record_counts("0", 19, 10, [], [], holder=0)
    stats.released(0)  # killed
    # Restarted in the same slot; its batches need not end where the killed one's did.
    await stats.attach(_Resumed(checkpoint), holder=0, covered=covered)
    if covered < 19:
        stats.record_counts("0", 14, 5, [], [], holder=0)
        stats.record_counts("0", 19, 5, [], [], holder=0)
    stats.record_counts("0", 29, 10, [], [], holder=0)
    stats.checkpointed("0", 0)
    assert _stored(stats) == (stored, float(stored))


async def test_a_previous_holders_batch_read_after_the_next_one_took_over_counts_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Worker 0 checkpointed at 19 and let go; worker 1 took the partition from there. Worker
    # 0's reports of its last batches are read after worker 1's, over its own pipe.
    stats, _ = await _supervised(monkeypatch, 1)
    await stats.attach(_Resumed(None), holder=0)
    stats.record_counts("0", 9, 10, [], [], holder=0)
    await stats.attach(_Resumed(19), holder=1)
    assert _stored(stats) == (10, 10.0)  # covered by the checkpoint worker 1 resumed from
    stats.record_counts("0", 19, 10, [], [], holder=0)
    stats.checkpointed("0", 0)
    # Past that checkpoint (not covered when it let go): worker 1 processes it again.
    stats.record_counts("0", 29, 10, [], [], holder=0)
    stats.record_counts("0", 24, 5, [], [], holder=1)
    assert _stored(stats) == (20, 20.0)
    stats.checkpointed("0", 1)
    assert _stored(stats) == (25, 25.0)
