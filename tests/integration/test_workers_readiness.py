"""Readiness of ``process --workers 2``: not ready while no worker holds a partition (every worker
dead, or restarted into a data dir too full to start in), nor while a partition is left without
a holder; ready again once the workers hold every partition. One worker that cannot start again
leaves its partitions to the other, which stays ready. A stuck worker (SIGSTOPped) is named with
its partitions and killed, its successor takes over, and every event is stored exactly once; a
supervisor frozen itself longer than the bound kills nobody; a restarting worker gets partitions
only once it has started (the other processes them meanwhile); a crash loop logs its error's
traceback once, and its recovery."""

from __future__ import annotations

import contextlib
import os
import re
import resource
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from common.lock_file import try_lock
from evalstream.settings import DEFAULT_PARTITIONS
from evalstream.wiring.data_dir import PROBE_BYTES
from stream.sources.local_log import LocalLog
from stream.sources.local_log_share import lock_path
from tests.integration.processor_harness import (
    KILL_ENV,
    answers,
    flocks_held,
    free_port,
    prepare,
    simulated_bodies,
    start_processor,
    stored_count,
    stored_documents,
    stuck,
    wait_until,
    worker_pids,
)

pytestmark = pytest.mark.integration

READY = {"status": "ready", "partitions": DEFAULT_PARTITIONS}
NONE_RUNNING = "no partition owned: no processing worker running (0 of 2)"
# Restarted workers alive (one or both: their pauses are jittered), holding nothing yet.
NONE_HOLDING = [
    [f"no partition owned: {running} of 2 processing workers running, none holds a partition"]
    for running in (1, 2)
]


def _ignore_file_size_signal() -> None:
    # A write past RLIMIT_FSIZE then fails with EFBIG, as on a full disk, instead of killing the
    # writer; the workers inherit it.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)


class _Processor:
    """``process --workers 2 --no-ingest`` with its ops port, for the test's ``with`` block."""

    def __init__(self, data_dir: Path, env: dict[str, str] | None = None) -> None:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.output = ""
        self.process = start_processor(
            data_dir,
            {
                "EVALSTREAM_EMBEDDED__WORKERS": "2",
                "EVALSTREAM_PROCESSOR__OPS_PORT": str(port),
                "EVALSTREAM_PROCESSOR__HOT_PATH": "false",
                **(env or {}),
            },
            preexec_fn=_ignore_file_size_signal,
        )

    def ready(self) -> tuple[int, dict[str, Any]]:
        answer = httpx.get(f"{self.url}/readyz", timeout=10)
        return answer.status_code, answer.json()

    def wait_ready(self, what: str, condition: Any) -> None:
        """Wait until ``condition(status, body)`` of /readyz holds; the processor's stacks and
        output if it never does."""
        try:
            wait_until(
                lambda: self.process.poll() is None and condition(*self.ready()),
                timeout=90,
                what=what,
                interval=0.02,
            )
        except AssertionError as exc:
            raise stuck(self.process, f"{exc}; /readyz last said {self.ready()}") from None

    def wait_held_and_ready(self, what: str) -> None:
        """Wait until the workers hold every partition and /readyz says ready. (Ready comes
        first when partitions are moving to a starting worker: they may be without a holder
        for as long as a start takes.)"""
        self.wait_ready(
            what,
            lambda status, body: (
                (status, body) == (200, READY) and self.partitions_owned() == DEFAULT_PARTITIONS
            ),
        )

    def partitions_owned(self) -> float:
        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "evalstream_partitions_owned":
                    return sample.value
        raise AssertionError("no evalstream_partitions_owned in /metrics")

    def disk_full_for_new_workers(self) -> None:
        """Workers started from now on find the data dir full: their start-up write check
        (PROBE_BYTES) fails with EFBIG. The supervisor's own files stay far below the limit."""
        _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.prlimit(self.process.pid, resource.RLIMIT_FSIZE, (PROBE_BYTES // 2, hard))

    def disk_freed(self) -> None:
        _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.prlimit(self.process.pid, resource.RLIMIT_FSIZE, (hard, hard))

    def __enter__(self) -> _Processor:
        wait_until(lambda: answers(f"{self.url}/healthz"), timeout=60, what="the ops port")
        return self

    def __exit__(self, *exc_info: object) -> None:
        # Gone already: a wait that failed killed it and reported what it printed.
        stopping = self.process.poll() is None
        if stopping:
            self.process.send_signal(signal.SIGTERM)
        output, _ = self.process.communicate(timeout=120)
        self.output = output.decode(errors="replace")
        if stopping and exc_info[0] is None:
            assert self.process.returncode == 0, self.output[-3000:]


@pytest.fixture
def processor(tmp_path: Path) -> Iterator[_Processor]:
    with _Processor(tmp_path / "data") as running:
        yield running


def _kill(pids: list[int]) -> None:
    for pid in pids:
        os.kill(pid, signal.SIGKILL)


def test_not_ready_while_every_worker_dies_at_restart_and_ready_once_they_run(
    processor: _Processor,
) -> None:
    processor.wait_held_and_ready("every partition held")
    processor.disk_full_for_new_workers()
    _kill(worker_pids(processor.process))

    # Both dead, then restarted, each dying at start (a full data dir is waited out): no
    # partition is processed, and readiness says so through the whole crash loop.
    processor.wait_ready(
        "no worker running",
        lambda status, body: (status, body.get("problems")) == (503, [NONE_RUNNING]),
    )
    assert processor.partitions_owned() == 0
    processor.wait_ready(
        "restarted workers holding nothing",
        lambda status, body: status == 503 and body.get("problems") in NONE_HOLDING,
    )
    processor.wait_ready(
        "the restarted workers dead again",
        lambda status, body: (status, body.get("problems")) == (503, [NONE_RUNNING]),
    )

    processor.disk_freed()
    processor.wait_held_and_ready("every partition held again")


def test_a_partition_no_worker_can_take_is_named_until_it_is_taken(tmp_path: Path) -> None:
    # Another process holds partition 3's lock (a worker of an earlier processor, stuck): the
    # live workers take the other seven and cannot take this one.
    data_dir = tmp_path / "data"
    held = try_lock(lock_path(data_dir / "partitions", 3))
    assert held is not None
    with _Processor(data_dir) as processor:
        try:
            processor.wait_ready(
                "partition 3 named",
                lambda status, body: (
                    (status, body.get("problems"))
                    == (503, ["partition 3: not taken by a worker yet"])
                ),
            )
            assert processor.partitions_owned() == DEFAULT_PARTITIONS - 1
        finally:
            held.close()
        processor.wait_held_and_ready("every partition held")


def test_one_worker_that_cannot_start_again_leaves_its_partitions_to_the_other(
    processor: _Processor, tmp_path: Path
) -> None:
    processor.wait_held_and_ready("every partition held")
    survivor, victim = worker_pids(processor.process)
    processor.disk_full_for_new_workers()
    _kill([victim])
    # Every worker started from now on dies at start; the survivor holds all the partitions.
    # (It writes within its own limit, set before this one: a limit is per process.)
    log = LocalLog(tmp_path / "data" / "log.db", DEFAULT_PARTITIONS)
    try:
        log.append([(f"app-{i}", b'{"not": "an event"}') for i in range(40)])
    finally:
        log.close()

    def processed_by_the_survivor_alone() -> bool:
        return (
            stored_count(tmp_path / "data") == 40
            and worker_pids(processor.process) == [survivor]
            and processor.partitions_owned() == DEFAULT_PARTITIONS
        )

    try:
        wait_until(processed_by_the_survivor_alone, timeout=90, what="the survivor's processing")
    except AssertionError as exc:
        raise stuck(processor.process, str(exc)) from None
    assert processor.ready() == (200, READY)
    assert processor.process.poll() is None


def _both_holding(processor: _Processor) -> list[int]:
    """Wait until both workers have started and hold partitions (the first to start takes
    them all, then gives the other its share); their pids."""
    processor.wait_held_and_ready("every partition held")
    pids: list[int] = []

    def holding() -> bool:
        nonlocal pids
        pids = worker_pids(processor.process)
        return len(pids) == 2 and all(flocks_held(pid) for pid in pids)

    wait_until(holding, timeout=60, what="both workers holding partitions")
    return pids


def _successor(processor: _Processor, *gone: int) -> int:
    """Wait for the worker started in place of ``gone``; its pid."""
    found: list[int] = []

    def started() -> bool:
        nonlocal found
        found = [pid for pid in worker_pids(processor.process) if pid not in gone]
        return len(found) == 1

    wait_until(started, timeout=60, what="a new worker", interval=0.01)
    return found[0]


def _stall_bound(seconds: int) -> dict[str, str]:
    """The environment of a run whose workers are stuck after ``seconds`` of silence."""
    return {
        **KILL_ENV,
        "EVALSTREAM_PROCESSOR__HOT_PATH": "false",
        "EVALSTREAM_EMBEDDED__WORKER_STALL_S": str(seconds),
    }


def test_a_stuck_worker_is_named_killed_and_replaced_and_every_event_stored_once(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    with _Processor(data_dir, _stall_bound(5)) as processor:
        survivor, victim = _both_holding(processor)
        expected = prepare(data_dir, simulated_bodies(11)[:6000])
        total = len(expected.telemetry) + len(expected.quarantine)
        wait_until(lambda: stored_count(data_dir) >= total // 5, timeout=90, what="processing")
        # Stopped with partitions and a batch in hand: alive, silent, holding their locks.
        os.kill(victim, signal.SIGSTOP)
        named = re.compile(
            rf"processing worker \d \(pid {victim}\) stuck: no heartbeat for \d+ s, holding "
            r"partitions \d(, \d)*; killed, restarting it"
        )
        processor.wait_ready(
            "the stuck worker named",
            lambda status, body: (
                status == 503 and any(named.fullmatch(p) for p in body.get("problems", []))
            ),
        )
        wait_until(lambda: not psutil.pid_exists(victim), timeout=30, what="the stuck one killed")
        successor = _successor(processor, survivor, victim)
        wait_until(lambda: stored_count(data_dir) == total, timeout=120, what="every event")
        processor.wait_held_and_ready("every partition held again")
        assert flocks_held(successor) > 0  # it took its share back
    assert set(stored_documents(data_dir)) == expected.telemetry
    assert stored_count(data_dir) == total
    assert processor.output.count("stuck: no heartbeat") == 1, processor.output


def test_a_supervisor_held_up_itself_kills_no_worker(tmp_path: Path) -> None:
    """The supervisor frozen longer than the stuck bound (as with its container, or stopped):
    its workers' heartbeats of that time wait in their pipes; once it runs again it reads
    them, and both workers go on."""
    data_dir = tmp_path / "data"
    bound = 3
    with _Processor(data_dir, _stall_bound(bound)) as processor:
        workers = _both_holding(processor)
        expected = prepare(data_dir, simulated_bodies(12)[:6000])
        total = len(expected.telemetry) + len(expected.quarantine)
        wait_until(lambda: stored_count(data_dir) >= total // 5, timeout=90, what="processing")
        os.kill(processor.process.pid, signal.SIGSTOP)
        time.sleep(2 * bound)  # the freeze itself: twice the bound
        os.kill(processor.process.pid, signal.SIGCONT)
        wait_until(lambda: stored_count(data_dir) == total, timeout=120, what="every event")
        processor.wait_held_and_ready("every partition held")
        assert sorted(worker_pids(processor.process)) == sorted(workers)
    assert "stuck: no heartbeat" not in processor.output, processor.output
    assert set(stored_documents(data_dir)) == expected.telemetry


def test_a_restarted_worker_gets_partitions_once_it_has_started(
    processor: _Processor, tmp_path: Path
) -> None:
    survivor, victim = _both_holding(processor)
    _kill([victim])
    # Its successor held while its interpreter starts: until it says it has started, the
    # survivor processes every partition.
    successor = _successor(processor, survivor, victim)
    os.kill(successor, signal.SIGSTOP)
    try:
        expected = prepare(
            tmp_path / "data", [(f"app-{i}", b'{"not": "an event"}') for i in range(40)]
        )
        try:
            wait_until(
                lambda: (
                    stored_count(tmp_path / "data") == 40
                    and processor.partitions_owned() == DEFAULT_PARTITIONS
                ),
                timeout=60,
                what="every partition processed by the survivor",
            )
        except AssertionError as exc:
            raise stuck(processor.process, str(exc)) from None
        assert flocks_held(successor) == 0
        assert len(expected.last_sequence) == DEFAULT_PARTITIONS  # events in every partition
    finally:
        with contextlib.suppress(ProcessLookupError):  # killed by a failed wait (stuck)
            os.kill(successor, signal.SIGCONT)
    processor.wait_ready(
        "the successor holding its share",
        lambda status, body: (status, body) == (200, READY) and flocks_held(successor) > 0,
    )


def test_a_crash_loop_logs_its_traceback_once_then_a_line_and_its_recovery(
    tmp_path: Path,
) -> None:
    with _Processor(tmp_path / "data") as processor:
        first = _both_holding(processor)
        processor.disk_full_for_new_workers()
        _kill(first)
        seen: set[int] = set()

        def restarted_six_times() -> bool:
            seen.update(worker_pids(processor.process))
            return len(seen - set(first)) >= 6

        wait_until(restarted_six_times, timeout=90, what="six failed restarts", interval=0.02)
        processor.disk_freed()
        _both_holding(processor)
    lines = processor.output.splitlines()
    failed = [line for line in lines if re.search(r"processing worker \d failed: ", line)]
    assert len(failed) == 1, processor.output
    assert "full" in failed[0], processor.output
    assert processor.output.count("Traceback (most recent call last)") == 1, processor.output
    # At most one summary per REPEAT_LOG_S (60 s) of the loop.
    assert len([line for line in lines if "still failing" in line]) <= 1, processor.output
    recovered = [line for line in lines if "started again after" in line]
    assert len(recovered) == 2, processor.output
