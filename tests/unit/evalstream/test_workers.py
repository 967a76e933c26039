"""The supervisor of processing workers: a worker that cannot start for a passing cause (the
data dir full for a while) is started again until it can, not taken for a configuration that
never works; what the workers' detectors count reaches the supervisor's metrics; the supervisor
knows which worker holds each partition, whatever order the workers' reports arrive in; a crash
loop is logged once per cause and interval, with its traceback once, and its recovery."""

from __future__ import annotations

import asyncio
import errno
import logging
import re
import tempfile
from pathlib import Path

import pytest

from common.retry import Backoff
from evalstream import workers
from evalstream.settings import SettingsError, load_settings
from evalstream.wiring.data_dir import usable_data_dir
from evalstream.worker import _ReportingStats
from evalstream.workers import (
    MAX_FAILED_STARTS,
    REPEAT_LOG_S,
    WorkerPool,
    _Failures,
    _Watched,
    _Worker,
)
from stream.sources.local_log import LocalLog
from stream.sources.subprocess_channel import encode_error
from stream.stats import ProcessorStats


class _Process:
    returncode = 1


def test_a_full_data_dir_is_a_passing_cause(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(*args: object, **kwargs: object) -> object:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tempfile, "NamedTemporaryFile", full)
    with pytest.raises(SettingsError, match="is full") as raised:
        usable_data_dir.__wrapped__(tmp_path)
    assert raised.value.retryable


async def test_a_worker_that_keeps_failing_at_start_for_a_passing_cause_is_started_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(workers, "RESTART_BACKOFF", Backoff(initial_s=0, max_s=0, jitter=False))
    settings = load_settings(embedded={"data_dir": tmp_path, "workers": 1})
    pool = WorkerPool(settings, ProcessorStats(), 1)
    stop = asyncio.Event()
    full = SettingsError(f"embedded.data_dir: {tmp_path} is full", retryable=True)
    starts = 0

    async def run_worker(slot: int, stop: asyncio.Event) -> _Worker:
        nonlocal starts
        starts += 1
        worker = _Worker(slot, _Process(), None)  # type: ignore[arg-type]
        worker.finished = True
        if starts <= MAX_FAILED_STARTS + 2:
            worker.error = encode_error(full)
        else:  # the disk has room again
            worker.batches = 1
            stop.set()
        return worker

    monkeypatch.setattr(pool, "_run_worker", run_worker)
    await pool._keep(0, stop)
    assert pool._fatal is None
    assert starts == MAX_FAILED_STARTS + 3


class _Sent:
    """A channel that keeps what a worker sends its supervisor."""

    broken = False

    def __init__(self) -> None:
        self.messages: list[tuple[object, ...]] = []

    def send(self, *message: object) -> None:
        self.messages.append(message)


async def test_the_workers_detector_time_and_failures_reach_the_supervisors_metrics(
    tmp_path: Path,
) -> None:
    sent = _Sent()
    worker_stats = _ReportingStats(channel=sent)  # type: ignore[arg-type]
    worker_stats.detected(0.25)
    worker_stats.detector_failed()
    worker_stats.detected(0.5)
    settings = load_settings(embedded={"data_dir": tmp_path, "workers": 2})
    supervisor = ProcessorStats()
    pool = WorkerPool(settings, supervisor, 2)
    worker = _Worker(0, _Process(), None)  # type: ignore[arg-type]
    for message in sent.messages:
        await pool._dispatch(worker, message)
    registry = supervisor.metrics.registry
    assert registry.get_sample_value("evalstream_detector_seconds_total") == 0.75
    assert registry.get_sample_value("evalstream_detector_failures_total") == 1


class _Context:
    partition_id = "0"
    rewindable = False

    async def checkpointed_sequence(self) -> int | None:
        return 41

    async def last_enqueued_sequence(self) -> int | None:
        return 41


def _owned(stats: ProcessorStats) -> float | None:
    return stats.metrics.registry.get_sample_value("evalstream_partitions_owned")


async def test_the_supervisor_knows_which_worker_holds_a_partition_in_the_order_they_took_it(
    tmp_path: Path,
) -> None:
    settings = load_settings(embedded={"data_dir": tmp_path, "workers": 2, "partitions": 1})
    supervisor = ProcessorStats()
    pool = WorkerPool(settings, supervisor, 2)
    pool._log = LocalLog(tmp_path / "log.db", 1)
    try:
        await supervisor.attach(_Watched(pool._log, 0), holder=None)
        first, second = (_Worker(slot, _Process(), None) for slot in (0, 1))  # type: ignore[arg-type]
        # What a worker reports as its pipeline takes the partition and closes it.
        sent = _Sent()
        reporting = _ReportingStats(channel=sent)  # type: ignore[arg-type]
        await reporting.attach(_Context())  # type: ignore[arg-type]
        reporting.detach("0")
        (attached, partition, resumed, taken_at, covered), detached = sent.messages
        assert (attached, partition, resumed, covered, detached) == (
            "attached",
            "0",
            41,
            -1,
            ("detached", "0"),
        )
        # The second worker took the partition after the first let go of it, but the first
        # one's reports (taken, then let go) are read after the second's.
        await pool._dispatch(second, ("attached", "0", 41, taken_at, -1))
        await pool._dispatch(first, ("attached", "0", 41, taken_at - 1, -1))
        await pool._dispatch(first, ("detached", "0"))
        assert (_owned(supervisor), await supervisor.problems(60)) == (1, [])
        await pool._dispatch(second, detached)
        assert _owned(supervisor) == 0
        assert await supervisor.problems(60) == ["no partition owned"]
    finally:
        await pool._log.aclose()


class _Killed:
    returncode = -9


def test_a_crash_loop_is_logged_once_per_cause_and_interval_then_its_recovery(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = 0.0
    failures = _Failures(clock=lambda: now)
    full = encode_error(SettingsError("embedded.data_dir: /d is full", retryable=True))
    trace = (
        "Traceback (most recent call last):\n  ...\nSettingsError: embedded.data_dir: /d is full"
    )

    def fail(slot: int, error: bool = True) -> None:
        worker = _Worker(slot, _Killed() if not error else _Process(), None)  # type: ignore[arg-type]
        if error:
            worker.error, worker.trace = full, trace
        failures.failed(slot, worker, 10.0)

    caplog.set_level(logging.INFO, logger="evalstream.workers")
    # Both workers fail every 10 s for 70 s, then one is killed before it starts.
    for second in range(0, 80, 10):
        now = float(second)
        fail(0)
        fail(1)
    now = 85.0
    fail(1, error=False)
    failures.recovered(0)
    failures.recovered(1)

    records = [r for r in caplog.records if r.name == "evalstream.workers"]
    lines = [r.getMessage() for r in records]
    assert len(lines) == 5, lines
    assert lines[0] == (
        "processing worker 0 failed: SettingsError: embedded.data_dir: /d is full; restarting "
        "it in 10.0 s"
    )
    assert (records[0].levelname, records[0].exc_text) == ("ERROR", trace)
    # One summary once REPEAT_LOG_S passed, counting every failure since the first line.
    assert REPEAT_LOG_S == 60.0
    assert re.fullmatch(
        r"processing workers still failing: SettingsError: embedded.data_dir: /d is full "
        r"\(12 more failures since it was last logged\); worker 0 restarts at \d\d:\d\d:\d\d UTC",
        lines[1],
    ), lines[1]
    assert re.fullmatch(
        r"processing workers still failing: exited with code -9 before it started \(1 more "
        r"failure since it was last logged\); worker 1 restarts at \d\d:\d\d:\d\d UTC",
        lines[2],
    ), lines[2]
    assert lines[3:] == [
        "processing worker 0 started again after 8 failed runs",
        "processing worker 1 started again after 9 failed runs",
    ]
    assert all(r.exc_text is None for r in records[1:])


async def test_a_stop_before_every_worker_has_started_ends_the_wait_for_the_first_shares(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = load_settings(embedded={"data_dir": tmp_path, "workers": 2})
    pool = WorkerPool(settings, ProcessorStats(), 2)
    shared: list[str] = []

    async def rebalance() -> None:
        shared.append("shares")

    monkeypatch.setattr(pool, "_rebalance", rebalance)
    # A worker that never says it has started (its interpreter stuck at import, say): the
    # wait for it would last the hour; the stop ends it, and nothing is shared after a stop.
    monkeypatch.setattr(workers, "FIRST_SHARES_WAIT_S", 3600.0)
    stop = asyncio.Event()
    waiting = asyncio.create_task(pool._first_shares(stop))
    await asyncio.sleep(0)
    assert not waiting.done()
    stop.set()
    async with asyncio.timeout(5):
        await waiting
    assert shared == []
    # Without a stop, the wait ends after FIRST_SHARES_WAIT_S and the started ones share.
    monkeypatch.setattr(workers, "FIRST_SHARES_WAIT_S", 0.01)
    async with asyncio.timeout(5):
        await pool._first_shares(asyncio.Event())
    assert shared == ["shares"]
