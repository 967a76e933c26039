"""Readiness of ``process --workers 2``: not ready while no worker holds a partition (every worker
dead, or restarted into a data dir too full to start in), nor while a partition is left without
a holder; ready again once the workers hold every partition. One worker that cannot start again
leaves its partitions to the other, which stays ready."""

from __future__ import annotations

import os
import resource
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from common.lock_file import try_lock
from evalstream.settings import DEFAULT_PARTITIONS
from evalstream.wiring.data_dir import PROBE_BYTES
from stream.sources.local_log import LocalLog
from stream.sources.local_log_share import lock_path
from tests.integration.processor_harness import (
    answers,
    free_port,
    start_processor,
    stored_count,
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

    def __init__(self, data_dir: Path) -> None:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.process = start_processor(
            data_dir,
            {
                "EVALSTREAM_EMBEDDED__WORKERS": "2",
                "EVALSTREAM_PROCESSOR__OPS_PORT": str(port),
                "EVALSTREAM_PROCESSOR__HOT_PATH": "false",
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
        if stopping and exc_info[0] is None:
            assert self.process.returncode == 0, output.decode(errors="replace")[-3000:]


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
