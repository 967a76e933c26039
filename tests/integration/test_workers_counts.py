"""The counts of ``process --workers 2`` (status line, /metrics) agree with the store when its
workers are killed mid-run: the batches a killed worker processed past its checkpoint, which
its successor processes again, are counted once."""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from stream.producers.simulator import Incident, Simulator
from tests.integration.processor_harness import (
    answers,
    drain_subscription,
    flocks_held,
    free_port,
    prepare,
    start_processor,
    stored_count,
    stuck,
    wait_for_stored,
    wait_until,
    worker_pids,
)

pytestmark = pytest.mark.integration

# Enough for a few seconds of processing by two workers: both are killed while busy.
EVENTS = 80_000


def _bodies() -> list[tuple[str | None, bytes]]:
    """8 apps, 5% invalid, a latency regression: no event sent twice (a resent event is
    stored again, replacing itself; that is counted)."""
    simulator = Simulator(
        apps=8,
        rate=200.0,
        seed=23,
        start=datetime.now(UTC) - timedelta(hours=3),
        invalid_fraction=0.05,
        incidents=[Incident.parse("latency_regression:app-001@60+200x5")],
    )
    return [(event.app_id, event.body) for event in simulator.events(EVENTS)]


def _metrics(url: str) -> dict[str, float]:
    """/metrics: each family's samples summed over their labels, by sample name and the
    outcome label where there is one."""
    sums: dict[str, float] = {}
    text = httpx.get(f"{url}/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name = sample.name
            if "outcome" in sample.labels:
                name = f"{name}:{sample.labels['outcome']}"
            sums[name] = sums.get(name, 0.0) + sample.value
    return sums


def _lags(url: str) -> list[float]:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return [
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "evalstream_partition_lag_events"
    ]


def _busy_worker(process: subprocess.Popen[bytes], others: set[int]) -> int:
    """A worker, not among ``others``, that holds partitions."""
    found: list[int] = []

    def holding() -> bool:
        nonlocal found
        found = [pid for pid in worker_pids(process) if pid not in others and flocks_held(pid)]
        return bool(found)

    wait_until(holding, timeout=60, what="a worker holding partitions")
    return found[0]


def test_killed_workers_leave_the_status_line_and_metrics_equal_to_the_store(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    expected = prepare(data_dir, _bodies())
    telemetry, quarantine = len(expected.telemetry), len(expected.quarantine)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    # The default checkpoint interval (1 s): a busy worker holds up to a second of batches
    # that no checkpoint covers yet.
    process = start_processor(
        data_dir,
        {
            "EVALSTREAM_EMBEDDED__WORKERS": "2",
            "EVALSTREAM_PROCESSOR__OPS_PORT": str(port),
            "EVALSTREAM_USER_HASH_KEY": "counts-test",
        },
        "--log-level",
        "INFO",  # the status lines
    )
    try:
        wait_until(lambda: answers(f"{url}/healthz"), timeout=60, what="the ops port")
        killed: set[int] = set()
        for share in (4, 2):  # a quarter stored, then half
            wait_for_stored(data_dir, process, (telemetry + quarantine) // share)
            victim = _busy_worker(process, killed)
            psutil.Process(victim).send_signal(signal.SIGKILL)
            killed.add(victim)
        wait_for_stored(data_dir, process, telemetry + quarantine)
        # Caught up: every partition's events processed and checkpointed (so counted).
        wait_until(
            lambda: (lags := _lags(url)) != [] and not any(lags),
            timeout=120,
            what="no lag on /metrics",
            interval=0.05,
        )
        metrics = _metrics(url)
    except AssertionError as exc:
        raise stuck(process, str(exc)) from None
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=120)
    text = output.decode(errors="replace")
    assert process.returncode == 0, text[-3000:]
    assert "exited (code -9)" in text, text[-3000:]  # the kills were of working workers
    assert stored_count(data_dir) == telemetry + quarantine
    assert metrics["evalstream_events_total:stored"] == telemetry
    assert metrics["evalstream_events_total:quarantined"] == quarantine
    assert metrics["evalstream_quarantined_events_total"] == quarantine
    stopped = re.findall(r"stopped: .*?\| stored ([\d,]+) \| quarantined ([\d,]+)", text)
    assert stopped, text[-3000:]
    assert [int(figure.replace(",", "")) for figure in stopped[-1]] == [telemetry, quarantine]
    # Breaches a killed worker published past its checkpoint are published again by its
    # successor under the same message id: counted once, as the subscription receives them.
    delivered = set(asyncio.run(drain_subscription(data_dir)))
    assert metrics["evalstream_breaches_total"] == len(delivered) > 0
