"""The supervisor of processing workers: a worker that cannot start for a passing cause (the
data dir full for a while) is started again until it can, not taken for a configuration that
never works; what the workers' detectors count reaches the supervisor's metrics."""

from __future__ import annotations

import asyncio
import errno
import tempfile
from pathlib import Path

import pytest

from common.retry import Backoff
from evalstream import workers
from evalstream.settings import SettingsError, load_settings
from evalstream.wiring.data_dir import usable_data_dir
from evalstream.worker import _ReportingStats
from evalstream.workers import MAX_FAILED_STARTS, WorkerPool, _Worker
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
