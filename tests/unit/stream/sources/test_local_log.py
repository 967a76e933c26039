"""The embedded event log: positions per partition, checkpoints, SQLite errors as ours, and a
partition catching up that still lets the loop run, and an idle one that checkpoints its last
batch."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

import common.turns
from common.sqlite import sqlite3
from store.sqlite import SqliteStore
from stream.exceptions import SourceError
from stream.ports import CloseReason, PartitionContext, ReceivedEvent
from stream.sources import local_log
from stream.sources.local_log import LocalLog, partition_for, run_partition
from tests.unit.stream.test_pipeline import body, make_pipeline


async def test_appended_events_read_back_in_order_from_either_thread(tmp_path: Path) -> None:
    log = LocalLog(tmp_path / "log.db", 3)
    partition = partition_for("app-1", 3)
    try:
        positions = await log.append_async([("app-1", b"a"), ("app-1", b"b")])
        positions += log.append([("app-1", b"c")])
        assert positions == [(partition, 0), (partition, 1), (partition, 2)]
        events = await log.read_async(partition, 0, 10)
        assert [(event.body, event.sequence) for event in events] == [(b"b", 1), (b"c", 2)]
        assert events == log.read(partition, 0, 10)
        assert await log.last_sequence_async(partition) == log.last_sequence(partition) == 2
    finally:
        await log.aclose()


async def test_checkpoints_are_kept_per_consumer_group(tmp_path: Path) -> None:
    log = LocalLog(tmp_path / "log.db", 2)
    try:
        assert await log.checkpoint_async("g", 0) == -1
        await log.update_checkpoint_async("g", 0, 41)
        assert log.checkpoint("g", 0) == 41
        assert log.checkpoint("other", 0) == -1
    finally:
        log.close()


async def test_the_backlog_is_what_a_consumer_group_has_not_checkpointed(tmp_path: Path) -> None:
    log = LocalLog(tmp_path / "log.db", 3)
    try:
        assert await log.backlog_async("g") == 0
        keys = [f"app-{n}" for n in range(30)]
        positions = await log.append_async([(key, b"{}") for key in keys for _ in range(4)])
        assert await log.backlog_async("g") == 120
        by_partition = {p: max(s for q, s in positions if q == p) for p, _ in positions}
        first, *others = sorted(by_partition)
        # One partition checkpointed halfway, another at its head; the third not at all.
        await log.update_checkpoint_async("g", first, by_partition[first] // 2)
        await log.update_checkpoint_async("g", others[0], by_partition[others[0]])
        expected = (by_partition[first] - by_partition[first] // 2) + by_partition[others[1]] + 1
        assert await log.backlog_async("g") == expected
        assert await log.backlog_async("other") == 120
        # Progress (stored, not yet checkpointed) counts where it is ahead of the checkpoint.
        await log.update_progress_async("g", first, by_partition[first] - 1)
        await log.update_progress_async("g", others[0], 0)
        assert await log.backlog_async("g") == 1 + by_partition[others[1]] + 1
        assert await log.backlog_async("other") == 120
    finally:
        await log.aclose()


def test_a_log_opened_with_another_partition_count_is_refused(tmp_path: Path) -> None:
    LocalLog(tmp_path / "log.db", 4).close()
    with pytest.raises(SourceError, match="has 4 partitions"):
        LocalLog(tmp_path / "log.db", 2)


def test_a_locked_log_fails_as_a_retryable_source_error(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    log = LocalLog(path, 1)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("PRAGMA busy_timeout=0")
    holder.execute("BEGIN IMMEDIATE")
    try:
        # A short busy timeout so the test does not wait the default 30 s.
        log._file.run_blocking(lambda connection: connection.execute("PRAGMA busy_timeout=50"))
        with pytest.raises(SourceError) as caught:
            log.append([(None, b"x")])
        assert caught.value.retryable
        assert isinstance(caught.value.__cause__, sqlite3.OperationalError)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
        log.close()


def test_a_closed_log_raises_source_error(tmp_path: Path) -> None:
    log = LocalLog(tmp_path / "log.db", 1)
    log.close()
    with pytest.raises(SourceError, match="closed"):
        log.read(0, -1, 1)


class _StopAfterFirstBatch:
    """A BatchHandler that never waits (as the pipeline on free files) and, at its first
    batch, asks the loop to set ``stop``: as a Ctrl-C's handler would, it runs at the loop's
    next turn."""

    def __init__(self, stop: asyncio.Event) -> None:
        self.stop = stop
        self.batches = 0

    async def on_partition_initialize(self, context: PartitionContext) -> None:
        pass

    async def on_batch(self, context: PartitionContext, events: list[ReceivedEvent]) -> None:
        self.batches += 1
        if self.batches == 1:
            asyncio.get_running_loop().call_soon(self.stop.set)

    async def on_partition_close(self, context: PartitionContext, reason: CloseReason) -> None:
        pass


async def test_a_partition_catching_up_gives_the_loop_a_turn(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A backlog of 40 batches whose reads and writes never wait: the stop asked for during
    the first batch lands within a turn (patched to 0 s here: every batch), not at the end."""
    monkeypatch.setattr(common.turns, "TURN_S", 0.0)
    log = LocalLog(tmp_path / "log.db", 1)
    try:
        log.append([("app-1", b"x")] * 2_000)
        stop = asyncio.Event()
        handler = _StopAfterFirstBatch(stop)
        await run_partition(log, "g", 0, handler, stop, batch_size=50, batch_wait_s=0.01)
        assert handler.batches == 1
    finally:
        await log.aclose()


@pytest.mark.parametrize(("interval_s", "backlog"), [(0.0, 1_950), (3600.0, 2_000)])
async def test_a_partition_writes_its_progress_after_its_batches_every_interval(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, interval_s: float, backlog: int
) -> None:
    """The handler stores a batch of 50 and checkpoints nothing: the backlog ingest reads
    counts the batch as done once its progress is written (never, within an hour)."""
    monkeypatch.setattr(local_log, "PROGRESS_INTERVAL_S", interval_s)
    monkeypatch.setattr(common.turns, "TURN_S", 0.0)  # the stop lands after the first batch
    log = LocalLog(tmp_path / "log.db", 1)
    try:
        log.append([("app-1", b"x")] * 2_000)
        stop = asyncio.Event()
        await run_partition(
            log, "g", 0, _StopAfterFirstBatch(stop), stop, batch_size=50, batch_wait_s=0.01
        )
        assert await log.backlog_async("g") == backlog
        assert log.checkpoint("g", 0) == -1
    finally:
        await log.aclose()


async def test_retention_never_removes_events_the_processor_has_not_checkpointed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Events enqueued under a clock that was behind (or read after a jump forward) look past
    retention at once: only those the consumer group has checkpointed may go."""
    log = LocalLog(tmp_path / "log.db", 2)
    try:
        positions = await log.append_async([("app-1", b"{}")] * 10)
        partition = positions[0][0]
        await log.update_checkpoint_async("g", partition, 3)
        clock = local_log.time.time
        monkeypatch.setattr(local_log.time, "time", lambda: clock() + 8 * 86400)
        assert await log.sweep_async(7 * 86400, "g") == 4
        events = await log.read_async(partition, -1, 100)
        assert [event.sequence for event in events] == list(range(4, 10))
        # Another group's checkpoint moves nothing.
        await log.update_checkpoint_async("other", partition, 9)
        assert await log.sweep_async(7 * 86400, "g") == 0
    finally:
        await log.aclose()


async def test_the_end_of_a_burst_is_checkpointed_while_the_partition_is_idle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A burst processed within the checkpoint interval of the last checkpoint, then nothing:
    once the interval has passed, the idle partition checkpoints its last batch. Before, it
    stayed behind until a next event came (``status`` showed the burst as lag on a caught-up
    processor, and a restart processed and counted it again)."""
    log = LocalLog(tmp_path / "log.db", 1)
    stop = asyncio.Event()
    at_idle: list[int] = []

    async def idle(seconds: float, stop_: asyncio.Event) -> None:
        at_idle.append(log.checkpoint("$Default", 0))
        if len(at_idle) == 1:  # the interval passes
            pipeline._partitions["0"].last_checkpoint -= pipeline.checkpoint_interval_s
        else:
            stop.set()

    monkeypatch.setattr(local_log, "sleep_or_stop", idle)
    try:
        async with SqliteStore(tmp_path / "store.db") as store:
            pipeline = make_pipeline(store, hot=False)
            pipeline.checkpoint_interval_s = 3600.0
            log.append([("a", body(i)) for i in range(30)])
            await run_partition(log, "$Default", 0, pipeline, stop, batch_size=50, batch_wait_s=1)
            assert await store.count("telemetry") == 30
        assert at_idle == [-1, 29]
    finally:
        await log.aclose()


class _StopAfterBatches(_StopAfterFirstBatch):
    def __init__(self, stop: asyncio.Event, batches: int) -> None:
        super().__init__(stop)
        self.wanted = batches

    async def on_batch(self, context: PartitionContext, events: list[ReceivedEvent]) -> None:
        self.batches += 1
        if self.batches == self.wanted:
            asyncio.get_running_loop().call_soon(self.stop.set)


FULL = "SQLite: database or disk is full"


async def test_a_progress_write_on_a_full_disk_is_said_once_and_the_partition_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Progress is a hint for the backlog, not a checkpoint: failing for a passing cause, it
    neither stops the partition (it ended the processor: ``error: write the progress``) nor
    logs at each batch; the next batch writes it."""
    caplog.set_level(logging.INFO, logger="stream.sources.local_log")
    monkeypatch.setattr(local_log, "PROGRESS_INTERVAL_S", 0.0)
    monkeypatch.setattr(common.turns, "TURN_S", 0.0)
    log = LocalLog(tmp_path / "log.db", 1)
    written = log.update_progress_async
    failing = [SourceError(f"write the progress: {FULL}", retryable=True)] * 3

    async def progress(group: str, partition: int, sequence: int) -> None:
        if failing:
            raise failing.pop()
        await written(group, partition, sequence)

    monkeypatch.setattr(log, "update_progress_async", progress)
    try:
        log.append([("app-1", b"x")] * 250)
        stop = asyncio.Event()
        handler = _StopAfterBatches(stop, 5)
        await run_partition(log, "g", 0, handler, stop, batch_size=50, batch_wait_s=0.01)
        assert handler.batches == 5
        assert await log.backlog_async("g") == 0
    finally:
        await log.aclose()
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (
            logging.ERROR,
            f"event log progress writes failing: write the progress: {FULL} (partition 0);"
            " retrying until they succeed, nothing is lost",
        ),
        (logging.WARNING, "event log progress writes succeed again, after 3 failures over 0 s"),
    ]


async def test_a_retention_sweep_on_a_full_disk_waits_for_the_next_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="stream.sources.local_log")
    log = LocalLog(tmp_path / "log.db", 1)
    stop = asyncio.Event()
    sweeps: list[int] = []

    async def sweep(retention_s: float, group: str) -> int:
        sweeps.append(1)
        if len(sweeps) < 3:
            raise SourceError(f"sweep the event log: {FULL}", retryable=True)
        stop.set()
        return 0

    async def pause(seconds: float, stop_: asyncio.Event) -> bool:
        return stop_.is_set()

    monkeypatch.setattr(log, "sweep_async", sweep)
    monkeypatch.setattr(local_log, "sleep_or_stop", pause)
    try:
        await local_log.sweep_until_stopped(log, 3600.0, "g", stop)
    finally:
        await log.aclose()
    assert len(sweeps) == 3
    assert [r.getMessage()[:48] for r in caplog.records] == [
        "event log retention sweeps failing: sweep the ev",
        "event log retention sweeps succeed again, after ",
    ]
