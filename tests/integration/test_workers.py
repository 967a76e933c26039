"""Worker processes (``process --workers 2``): SIGKILLing one worker of two at random points
loses and duplicates nothing (its partitions move to the other, then back to its restarted
successor), and the breaches are exactly a single-process run's; worker memory stays flat, and
the status line adds the workers up; the workers run at a lower priority."""

from __future__ import annotations

import asyncio
import os
import random
import re
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from tests.integration.conftest import SimulatedRun
from tests.integration.processor_harness import (
    KILL_ENV,
    Expected,
    checkpoints,
    drain_breaches,
    flocks_held,
    prepare,
    start_processor,
    stored_count,
    stored_documents,
    wait_until,
    worker_pids,
)
from tests.procfs import environment

pytestmark = pytest.mark.integration

CHUNKS = 6
WORKERS = "EVALSTREAM_EMBEDDED__WORKERS"


def without_enqueued_time(data_dir: Path) -> dict[tuple[str, str], dict[str, object]]:
    """Stored documents without processing-time fields nor the enqueued time (the killed run's
    log was appended chunk by chunk, so its events were enqueued later)."""
    documents = stored_documents(data_dir)
    for fields in documents.values():
        ingest = fields["ingest"]
        assert isinstance(ingest, dict)
        del ingest["enqueued_time"]
    return documents


def two_live_workers(process: subprocess.Popen[bytes], gone: int | None = None) -> list[int]:
    """Wait until two workers run and hold partitions (``gone`` not among them: a restarted
    worker gets partitions once it has started); their pids."""
    found: list[int] = []

    def ready() -> bool:
        nonlocal found
        found = worker_pids(process)
        return len(found) == 2 and gone not in found and all(map(flocks_held, found))

    wait_until(ready, timeout=60, what="two live workers", interval=0.02)
    return found


def test_sigkilling_one_worker_of_two_loses_nothing_and_breaches_match_one_process(
    tmp_path: Path, simulated_run: SimulatedRun
) -> None:
    # The uninterrupted run in one process, shared with the crash-consistency tests.
    stream, expected = simulated_run.bodies, simulated_run.expected
    reference_dir, killed_dir = simulated_run.reference_dir, tmp_path / "killed"
    reference = simulated_run.breaches
    assert len(reference) >= 3

    # The killed run gets the same log chunk by chunk, a kill landing inside each chunk's
    # processing: every kill hits a worker with work in hand, however fast the machine is.
    rng = random.Random(5)
    size = -(-len(stream) // CHUNKS)
    chunks = [stream[i : i + size] for i in range(0, len(stream), size)]
    got = Expected()
    process = start_processor(killed_dir, {**KILL_ENV, WORKERS: "2"})
    kills = 0
    try:
        pids = two_live_workers(process)
        # Each worker's numeric libraries on one thread (stream.sources.subprocess_channel).
        assert [environment(pid).get("OPENBLAS_NUM_THREADS") for pid in pids] == ["1", "1"]
        for chunk in chunks:
            before = stored_count(killed_dir)
            part = prepare(killed_dir, chunk)
            got.telemetry |= part.telemetry
            got.quarantine |= part.quarantine
            point = before + rng.randint(len(chunk) // 10, len(chunk) * 7 // 10)
            wait_until(
                lambda point=point: stored_count(killed_dir) >= point,
                timeout=120,
                what=f"{point} stored records",
                interval=0.002,
            )
            victim = rng.choice(pids)
            os.kill(victim, signal.SIGKILL)
            kills += 1
            pids = two_live_workers(process, gone=victim)
        total = len(expected.telemetry) + len(expected.quarantine)
        wait_until(lambda: stored_count(killed_dir) == total, timeout=120, what="every record")
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=120)
    assert process.returncode == 0, output.decode()
    assert kills >= 5
    # Stopped gracefully: every partition checkpointed at its last event.
    assert checkpoints(killed_dir) == expected.last_sequence
    assert output.decode().count("its partitions moved, restarting it") == kills, output.decode()

    assert got.telemetry == expected.telemetry and got.quarantine == expected.quarantine
    assert without_enqueued_time(killed_dir) == without_enqueued_time(reference_dir)
    telemetry = set(stored_documents(killed_dir))
    assert telemetry == expected.telemetry
    after_kills = asyncio.run(drain_breaches(killed_dir))
    # Same breach ids (and content) as one process gives, each delivered once.
    assert sorted(after_kills) == sorted(reference)


def test_worker_memory_stays_flat_under_sustained_load(tmp_path: Path) -> None:
    """Two workers under a steady simulated load: each worker's resident memory after the
    warm-up (SQLite's page caches and the detectors of 50 apps filling) stays within 12 MB
    over the next ~30,000 events, so a leak of 400 bytes per event would break it. Measured
    here: ~92 MB per worker after warm-up, +3 to +7 MB over such a window, flat at ~100 MB
    after 45 s (bench/results/workers_sustained.md has the longer run)."""
    data_dir = tmp_path / "data"
    process = start_processor(
        data_dir,
        {
            "EVALSTREAM_PROCESSOR__HOT_PATH": "true",
            "EVALSTREAM_PROCESSOR__STATUS_INTERVAL_S": "2",
            WORKERS: "2",
        },
        "--simulate",
        "--apps",
        "50",
        "--rate",
        "3000",
        "--log-level",
        "INFO",  # the status lines
    )
    samples: dict[int, list[int]] = {}
    try:
        pids = two_live_workers(process)
        # They yield the CPU to ingest and the command (embedded.workers_nice, default 5), from
        # when their settings have come over the pipe.
        nice = min(psutil.Process(process.pid).nice() + 5, 19)
        wait_until(
            lambda: [psutil.Process(pid).nice() for pid in pids] == [nice] * 2,
            timeout=30,
            what="workers at a lower priority",
        )
        wait_until(lambda: stored_count(data_dir) >= 20_000, timeout=60, what="warm-up")
        warm = stored_count(data_dir)
        deadline = time.monotonic() + 12
        while time.monotonic() < deadline:
            for pid in pids:
                samples.setdefault(pid, []).append(psutil.Process(pid).memory_info().rss)
            time.sleep(0.5)
        processed = stored_count(data_dir) - warm
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
    assert process.returncode == 0, output.decode()
    # The status line adds the workers up: its final count is the store's.
    text = output.decode()
    assert re.search(r"\| workers 2/2 rss \d+\+\d+ MB", text), text[-2000:]
    final = re.search(r"stopped: .* stored ([\d,]+) \|", text)
    assert final is not None and int(final[1].replace(",", "")) == stored_count(data_dir)
    assert processed >= 25_000, processed  # the load was sustained
    for pid, rss in samples.items():
        growth = max(rss) - rss[0]
        assert growth < 12 * 2**20, (pid, [size // 2**20 for size in rss])
